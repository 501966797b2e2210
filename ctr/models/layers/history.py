"""Behaviour-history layers: a user's past items -> one vector per row.

A history is L item embeddings per row, left-padded: the most recent item is
column L - 1, padding (mask False) at the start. Every layer here leaves the
padding out, so a row's output does not depend on how much padding it carries,
and an all-padding row (a user's first interaction) gives finite outputs.

- masked_mean: the mean of the items (zeros for an empty history).
- TargetAttention: DIN's local activation unit (Zhou et al., KDD 2018).
- SelfAttentionEncoder: SASRec's causal self-attention blocks (Kang & McAuley,
  ICDM 2018).
- distinct_rows: the distinct histories of a batch, so that the candidate-free
  work runs once per user rather than once per row (an evaluation batch of
  65,536 rows holds about 66 users).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ctr.models.layers.dnn import Dropout, make_activation


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of x over the positions where mask is True; zeros where none is.

    Args:
        x: (B, L, k) values.
        mask: (B, L) bool, True at real items, False at padding.

    Shapes:
        (B, L, k), (B, L) -> (B, k)

    Example:
        masked_mean(torch.ones(2, 3, 4), torch.tensor([[0, 1, 1], [0, 0, 0]]).bool())
        # [[1, 1, 1, 1], [0, 0, 0, 0]]
    """
    weights = mask.to(x.dtype)  # (B, L)
    total = torch.bmm(weights.unsqueeze(1), x).squeeze(1)  # (B, k)
    return total / weights.sum(1, keepdim=True).clamp_min(1.0)  # (B, k)


@functools.lru_cache(maxsize=16)
def _hash_multipliers(length: int) -> torch.Tensor:
    """(length,) int64 powers of an odd 64-bit constant: a polynomial hash of a row."""
    mod, value, out = 1 << 64, 1, []
    for _ in range(length):
        out.append(value - mod if value >= 1 << 63 else value)  # as a signed int64
        value = value * 0x9E3779B97F4A7C15 % mod
    return torch.tensor(out, dtype=torch.int64)


def distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The distinct rows of x and, for each row, the index of its distinct row.

    Each row is hashed to one int64 (a polynomial in the row's entries, wrapping
    around 2^64), the hashes are made unique, and the result is checked exactly:
    `rows[inverse]` must equal x. A hash collision, however unlikely, therefore
    never merges two histories; it only costs the saving (None is returned).

    Args:
        x: (B, L) int64, e.g. item indices of each row's history.

    Returns:
        (rows (U, L), inverse (B,)) with rows[inverse] == x, or None when every
        row is distinct (nothing to save) or the hashes collided.

    Example:
        x = torch.tensor([[0, 1, 2], [0, 1, 2], [3, 4, 5]])
        rows, inverse = distinct_rows(x)  # rows (2, 3); rows[inverse] == x
    """
    B, L = x.shape
    if B < 2:
        return None
    keys = (x * _hash_multipliers(L).to(x.device)).sum(1)  # (B,) int64 hash per row
    unique_keys, inverse = torch.unique(keys, return_inverse=True)  # (U,), (B,)
    U = unique_keys.numel()
    if U == B:
        return None
    order = torch.arange(B, device=x.device)
    first = torch.empty(U, dtype=torch.int64, device=x.device).scatter_(0, inverse, order)  # (U,)
    rows = x.index_select(0, first)  # (U, L): one row of each hash
    if not torch.equal(rows.index_select(0, inverse), x):
        return None  # two distinct rows share a hash: no dedupe rather than a wrong one
    return rows, inverse


class TargetAttention(nn.Module):
    """DIN's local activation unit: the candidate attends over the history.

    With history items h_j (j = 1..L) and the candidate c, all of size d
    (eq. 3 of Zhou et al., KDD 2018):

        a_j = MLP([h_j, c, h_j - c, h_j * c])      (a scalar, padding: a_j = 0)
        v   = sum_j a_j h_j

    The weights a_j are the scorer's raw outputs, neither softmax-normalised nor
    squashed: the paper drops the softmax so that v keeps the intensity of the
    user's interest (how many past items relate to c). The scorer's hidden layers
    use PReLU, the paper's baseline activation; its Dice adapts to batch
    statistics, which would make a training row's weights depend on its batch.

    The first layer W [h, c, h - c, h * c] + b is computed as
    (W_h + W_d) h + (W_c - W_d) c + W_p (h * c) + b, with W = [W_h, W_c, W_d, W_p]:
    the same parameters and values, without building the (B, L, 4d) concatenation,
    and the c term once per row instead of once per item.

    Args:
        dim: d, the size of the items and the candidate.
        hidden_units: the scorer's hidden layer sizes, e.g. [64, 32].

    Shapes:
        forward(items (B, L, d), mask (B, L) bool, candidate (B, d)) -> (B, d)
        weights(items, mask, candidate) -> (B, L), 0 at padding

    Example:
        att = TargetAttention(16, [64, 32])
        att(torch.randn(8, 50, 16), torch.ones(8, 50, dtype=torch.bool), torch.randn(8, 16))
        # (8, 16)
    """

    def __init__(self, dim: int, hidden_units: list[int]) -> None:
        super().__init__()
        if dim < 1 or not hidden_units or any(u < 1 for u in hidden_units):
            raise ValueError(
                f"expected dim >= 1 and a non-empty list of positive sizes, "
                f"got dim={dim}, hidden_units={hidden_units}"
            )
        self.dim = dim
        self.first = nn.Linear(4 * dim, hidden_units[0])  # over [h, c, h - c, h * c]
        layers: list[nn.Module] = [make_activation("prelu", hidden_units[0])]
        for prev, units in zip(hidden_units, hidden_units[1:], strict=False):
            layers += [nn.Linear(prev, units), make_activation("prelu", units)]
        layers.append(nn.Linear(hidden_units[-1], 1))
        self.scorer = nn.Sequential(*layers)

    def weights(
        self, items: torch.Tensor, mask: torch.Tensor, candidate: torch.Tensor
    ) -> torch.Tensor:
        """The attention weights a_j, (B, L); exactly 0 at padding."""
        w_h, w_c, w_d, w_p = self.first.weight.split(self.dim, dim=1)  # (H1, d) each
        per_row = F.linear(candidate, w_c - w_d, self.first.bias)  # (B, H1)
        hidden = F.linear(items, w_h + w_d)  # (B, L, H1)
        # in place: linear's backward needs its inputs, not its output
        hidden.add_(F.linear(items * candidate.unsqueeze(1), w_p)).add_(per_row.unsqueeze(1))
        B, L, H1 = hidden.shape
        # 2-D for the scorer: PReLU's per-unit slopes apply to dim 1
        scores = self.scorer(hidden.reshape(B * L, H1)).view(B, L)  # (B, L)
        return torch.where(mask, scores, 0.0)  # (B, L)

    def forward(
        self, items: torch.Tensor, mask: torch.Tensor, candidate: torch.Tensor
    ) -> torch.Tensor:
        a = self.weights(items, mask, candidate)  # (B, L)
        return torch.bmm(a.unsqueeze(1), items).squeeze(1)  # (B, d)


class _Block(nn.Module):
    """One SASRec block, (B, L, d) -> (B, L, d), pre-norm residuals (sec. III-C):

    x = x + Dropout(SA(LayerNorm(x))),  x = x + Dropout(FFN(LayerNorm(x)))
    FFN(x) = ReLU(x W1 + b1) W2 + b2
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = dropout
        self.norm_attention = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)  # W_Q, W_K, W_V
        self.out_proj = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), Dropout(dropout), nn.Linear(dim, dim)
        )
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        H = self.num_heads
        qkv = self.qkv(self.norm_attention(x)).view(B, L, 3, H, d // H)  # (B, L, 3, H, d/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, d/H) each
        p = self.attention_dropout if self.training else 0.0
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        heads = heads.transpose(1, 2).reshape(B, L, d)  # (B, L, d)
        x = x + self.dropout(self.out_proj(heads))  # (B, L, d)
        return x + self.dropout(self.ffn(self.norm_ffn(x)))  # (B, L, d)


class SelfAttentionEncoder(nn.Module):
    """SASRec's encoder (Kang & McAuley, ICDM 2018): causal self-attention over a history.

        x_0 = Dropout(sqrt(d) * h + P)                      (sec. III-B)
        x_b = Block(x_{b-1}), b = 1..num_layers             (sec. III-C, see _Block)
        out = LayerNorm(x_B), 0 at padding

    P is a learned positional embedding indexed by recency: the most recent item
    (column L - 1) gets P[0], the one before it P[1], and so on. With left padding
    this is SASRec's absolute position within its fixed-length window, and it
    makes a row's output independent of how much padding precedes it. The items
    are scaled by sqrt(d) as in SASRec's and the Transformer's reference code, so
    that the small initial item embeddings are not drowned by P.

    Position t attends to the real items at positions <= t (causality: an output
    never sees a later item). Every position may also attend to itself, so a
    padding position, whose every earlier key is padding too, is never left with
    nothing to attend to (a softmax over nothing is NaN); padding outputs are set
    to 0 after every block and never reach a real position, because real
    positions do not attend to padding keys.

    Args:
        dim: d, the width of the items and of every block.
        max_length: the longest history (rows of P).
        num_layers: the number of blocks.
        num_heads: H, attention heads per block; must divide d.
        dropout: dropout on the input, the attention weights, and each residual branch.

    Shapes:
        forward(items (B, L, d), mask (B, L) bool) -> (B, L, d), L <= max_length

    Example:
        enc = SelfAttentionEncoder(64, 50, num_layers=2, num_heads=1, dropout=0.2)
        enc(torch.randn(8, 50, 64), torch.ones(8, 50, dtype=torch.bool)).shape  # (8, 50, 64)
    """

    def __init__(
        self, dim: int, max_length: int, num_layers: int, num_heads: int, dropout: float
    ) -> None:
        super().__init__()
        if min(dim, max_length, num_layers, num_heads) < 1 or dim % num_heads:
            raise ValueError(
                f"expected dim, max_length, num_layers, num_heads >= 1 with num_heads "
                f"dividing dim, got dim={dim}, max_length={max_length}, "
                f"num_layers={num_layers}, num_heads={num_heads}"
            )
        self.dim = dim
        self.max_length = max_length
        self.positions = nn.Parameter(torch.empty(max_length, dim))  # row k: k items before
        bound = math.sqrt(6.0 / (max_length + dim))
        nn.init.uniform_(self.positions, -bound, bound)
        self.input_dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, d = items.shape
        if d != self.dim or L > self.max_length or mask.shape != (B, L):
            raise ValueError(
                f"expected items (B, L <= {self.max_length}, {self.dim}) and mask (B, L), "
                f"got {tuple(items.shape)} and {tuple(mask.shape)}"
            )
        keep = mask.unsqueeze(-1).to(items.dtype)  # (B, L, 1)
        x = items * math.sqrt(d) + self.positions[:L].flip(0)  # (B, L, d); column L - 1: P[0]
        x = self.input_dropout(x) * keep  # (B, L, d)
        eye = torch.eye(L, dtype=torch.bool, device=items.device)  # (L, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=items.device).tril()  # key <= query
        allowed = causal & (mask.unsqueeze(1) | eye)  # (B, L, L): real keys, and oneself
        allowed = allowed.unsqueeze(1)  # (B, 1, L, L), broadcast over heads
        for block in self.blocks:
            x = block(x, allowed) * keep  # (B, L, d)
        return self.norm(x) * keep  # (B, L, d)


HISTORY_POOLINGS = ("mean", "din", "self_attention", "last")


class HistoryPooling(nn.Module):
    """A history field's pooling: the distinct histories of a batch -> one vector per row.

    Modes:
        mean:            masked_mean(h)
        din:             TargetAttention(h, c)
        self_attention:  TargetAttention(SelfAttentionEncoder(h), c): the encoder gives
                         each item its context in the sequence, then the candidate
                         weighs the encoded items (as DIN does the raw ones)
        last:            SelfAttentionEncoder(h) at the last position (the most recent
                         item's output; SASRec's user state)

    The candidate-free part (the mean, the encoder) runs once per distinct history;
    `inverse` maps the rows of the batch to them (see distinct_rows). The
    candidate-dependent attention runs once per row.

    Args:
        mode: one of HISTORY_POOLINGS.
        dim: d, the size of the items and the candidate.
        max_length: the longest history (the encoder's positions).
        attention_hidden_units: the DIN scorer's hidden sizes (din, self_attention).
        num_layers, num_heads, dropout: the encoder's (self_attention, last).

    Shapes:
        forward(items (U, L, d), mask (U, L) bool, candidate (B, d), inverse (B,) or None)
        -> (B, d); without `inverse`, U = B and row i is history i.

    Example:
        pool = HistoryPooling("din", 16, 50, attention_hidden_units=[64, 32])
        pool(torch.randn(8, 50, 16), torch.ones(8, 50, dtype=torch.bool), torch.randn(8, 16))
    """

    def __init__(
        self,
        mode: str,
        dim: int,
        max_length: int,
        attention_hidden_units: list[int] | None = None,
        num_layers: int = 2,
        num_heads: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in HISTORY_POOLINGS:
            raise ValueError(f"expected a history pooling in {HISTORY_POOLINGS}, got {mode!r}")
        self.mode = mode
        self.encoder = None
        self.attention = None
        if mode in ("self_attention", "last"):
            self.encoder = SelfAttentionEncoder(dim, max_length, num_layers, num_heads, dropout)
        if mode in ("din", "self_attention"):
            self.attention = TargetAttention(dim, attention_hidden_units or [64, 32])

    def forward(
        self,
        items: torch.Tensor,
        mask: torch.Tensor,
        candidate: torch.Tensor,
        inverse: torch.Tensor | None = None,
    ) -> torch.Tensor:
        def per_row(t: torch.Tensor) -> torch.Tensor:  # (U, ...) -> (B, ...)
            return t if inverse is None else t.index_select(0, inverse)

        if self.mode == "mean":
            return per_row(masked_mean(items, mask))  # (B, d)
        if self.encoder is not None:
            items = self.encoder(items, mask)  # (U, L, d)
        if self.mode == "last":
            return per_row(items[:, -1])  # (B, d)
        return self.attention(per_row(items), per_row(mask), candidate)  # (B, d)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
