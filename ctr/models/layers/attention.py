"""Multi-head self-attention over fields, as in AutoInt (Song et al., CIKM 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InteractingLayer(nn.Module):
    """One AutoInt interacting layer (eqs. 5-8 of the paper), (B, F, D) -> (B, F, D).

    Per head h = 1..H, with projections W_Q^h, W_K^h, W_V^h of size D -> d
    (d = attention_dim) applied to every field embedding e_m:

        a^h = softmax(Q^h K^h^T / sqrt(d)),    out^h = a^h V^h          (F, d)
        o   = concat_h(out^h) W_O                                       (F, H * d) -> (F, D)
        y   = LayerNorm(ReLU(o + e))      (ReLU(o) without the residual)

    W_O maps the concatenated heads back to D, as the output projection of a
    standard transformer does, so the residual adds the input itself and
    layers stack at width D. The paper's eq. 8 instead keeps the H * d width and
    projects the residual (W_Res e_m); with W_O no residual projection is needed.
    The 1/sqrt(d) scaling is the standard scaled dot-product; the paper's eq. 5
    uses the plain inner product.

    Shapes:
        (B, F, D) -> (B, F, D)
    """

    def __init__(self, embed_dim: int, num_heads: int, attention_dim: int, use_residual: bool):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dim = attention_dim
        self.output_dim = embed_dim
        self.qkv = nn.Linear(embed_dim, 3 * num_heads * attention_dim, bias=False)  # W_Q, W_K, W_V
        self.out_proj = nn.Linear(num_heads * attention_dim, embed_dim, bias=False)  # W_O
        self.use_residual = use_residual
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, F_, D = x.shape
        H, d = self.num_heads, self.attention_dim
        qkv = self.qkv(x).view(B, F_, 3, H, d).permute(2, 0, 3, 1, 4)  # (3, B, H, F, d)
        q, k, v = qkv.unbind(0)  # (B, H, F, d) each; unbind, not indexing: one backward op
        heads = F.scaled_dot_product_attention(q, k, v)  # (B, H, F, d)
        heads = heads.transpose(1, 2).reshape(B, F_, H * d)  # (B, F, H * d)
        out = self.out_proj(heads)  # (B, F, D)
        if self.use_residual:
            out = out + x
        return self.norm(torch.relu(out))  # (B, F, D)


class MultiHeadSelfAttention(nn.Module):
    """A stack of `num_layers` AutoInt interacting layers over the field embeddings.

    Each layer attends over the F fields with H heads of size d and projects
    the heads back to D (see `InteractingLayer`), so the stack keeps the shape
    of its input.

    Args:
        embed_dim: D of the input field embeddings (and of the output).
        num_heads: H.
        attention_dim: per-head size d of Q, K and V.
        num_layers: number of stacked interacting layers.
        use_residual: add each layer's input to its projected heads.

    Shapes:
        (B, F, D) -> (B, F, D); output_dim = D

    Example:
        MultiHeadSelfAttention(16, 2, 16, 2, True)(torch.randn(32, 7, 16)).shape  # (32, 7, 16)
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        attention_dim: int,
        num_layers: int,
        use_residual: bool = True,
    ) -> None:
        super().__init__()
        if min(embed_dim, num_heads, attention_dim, num_layers) < 1:
            raise ValueError(
                f"expected embed_dim, num_heads, attention_dim, num_layers >= 1, got "
                f"{embed_dim}, {num_heads}, {attention_dim}, {num_layers}"
            )
        self.embed_dim = embed_dim
        self.layers = nn.Sequential(
            *(
                InteractingLayer(embed_dim, num_heads, attention_dim, use_residual)
                for _ in range(num_layers)
            )
        )
        self.output_dim = embed_dim

    def forward(self, field_embeddings: torch.Tensor) -> torch.Tensor:
        if field_embeddings.dim() != 3 or field_embeddings.shape[2] != self.embed_dim:
            raise ValueError(
                f"expected input of shape (B, F, {self.embed_dim}), "
                f"got {tuple(field_embeddings.shape)}"
            )
        return self.layers(field_embeddings)  # (B, F, D)
