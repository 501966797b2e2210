"""Multi-head self-attention over fields, as in AutoInt (Song et al., CIKM 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InteractingLayer(nn.Module):
    """One AutoInt interacting layer (eqs. 5-8 of the paper).

    Per head h, with projections W_Q, W_K, W_V of size D -> d (d = attention_dim):

        a^h = softmax(Q K^T / sqrt(d)),  out^h = a^h V
        out = ReLU(concat_h out^h + W_res e)        (W_res: Linear if D != H * d, else e)

    followed by LayerNorm over the H * d outputs. The 1/sqrt(d) scaling is the
    standard scaled dot-product; the paper's eq. 5 uses the plain inner product.

    Shapes:
        (B, F, D) -> (B, F, H * d)
    """

    def __init__(self, embed_dim: int, num_heads: int, attention_dim: int, use_residual: bool):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dim = attention_dim
        self.output_dim = num_heads * attention_dim
        self.qkv = nn.Linear(embed_dim, 3 * self.output_dim, bias=False)
        self.use_residual = use_residual
        self.residual = (
            nn.Linear(embed_dim, self.output_dim, bias=False)
            if use_residual and embed_dim != self.output_dim
            else None
        )
        self.norm = nn.LayerNorm(self.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, F_, _ = x.shape
        H, d = self.num_heads, self.attention_dim
        qkv = self.qkv(x).view(B, F_, 3, H, d).permute(2, 0, 3, 1, 4)  # (3, B, H, F, d)
        q, k, v = qkv.unbind(0)  # (B, H, F, d) each; unbind, not indexing: one backward op
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, F, d)
        out = out.transpose(1, 2).reshape(B, F_, H * d)  # (B, F, H * d)
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return self.norm(torch.relu(out))  # (B, F, H * d)


class MultiHeadSelfAttention(nn.Module):
    """A stack of `num_layers` AutoInt interacting layers over the field embeddings.

    Args:
        embed_dim: D of the input field embeddings.
        num_heads: H.
        attention_dim: per-head size d of Q, K and V.
        num_layers: number of stacked interacting layers.
        use_residual: add the (projected) input to each layer's output.

    Shapes:
        (B, F, D) -> (B, F, output_dim), output_dim = H * d

    Example:
        MultiHeadSelfAttention(16, 2, 16, 2, True)(torch.randn(32, 7, 16)).shape  # (32, 7, 32)
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
        layers = []
        dim = embed_dim
        for _ in range(num_layers):
            layers.append(InteractingLayer(dim, num_heads, attention_dim, use_residual))
            dim = num_heads * attention_dim
        self.layers = nn.Sequential(*layers)
        self.output_dim = dim

    def forward(self, field_embeddings: torch.Tensor) -> torch.Tensor:
        if field_embeddings.dim() != 3 or field_embeddings.shape[2] != self.embed_dim:
            raise ValueError(
                f"expected input of shape (B, F, {self.embed_dim}), "
                f"got {tuple(field_embeddings.shape)}"
            )
        return self.layers(field_embeddings)  # (B, F, output_dim)
