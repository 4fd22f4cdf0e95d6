"""Bidirectional (unmasked) pre-LN transformer used inside the MaskGIT prior.

Standard form on purpose: softmax over keys and a residual around the MLP. The GIT-STORM
authors' code normalises attention over the query axis and has no MLP residual; we record
that as a deviation rather than reproduce it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"MaskGit EmbeddingDim={dim} is not divisible by NumHeads={num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (N, K, E); every token attends to every token, so no attention mask
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)  # 3 x (N, H, K, E/H)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_dropout(self.proj(y.transpose(1, 2).flatten(2)))  # (N, K, E)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, dropout)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class BidirectionalTransformer(nn.Module):
    """(N, K, E) -> (N, K, E): NumLayers pre-LN blocks and a final LayerNorm."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.ln_final = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)
