"""Bidirectional (unmasked) pre-LN transformer used inside the MaskGIT prior, in two forms
(`Models.MaskGit.Architecture`):

  * `standard`: softmax over the keys, a residual around the E -> FeedForwardDim -> E MLP and
    a final LayerNorm.
  * `authors`: the GIT-STORM authors' module (sub_models/torch_maskgit/maskgit_transformer.py):
    the attention softmax runs over the *query* axis (every key's weights over the queries sum
    to one, not every query's over the keys), a layer returns mlp(ln2(x)) with no residual
    around its MLP, the MLP is E -> E -> E whatever FeedForwardDim says (their MlpDim is
    unused) and there is no final LayerNorm (the prior adds their extra head instead, prior.py).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHITECTURES = ("standard", "authors")


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float, softmax_over_queries: bool = False):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"MaskGit EmbeddingDim={dim} is not divisible by NumHeads={num_heads}")
        self.num_heads, self.dropout, self.softmax_over_queries = num_heads, dropout, softmax_over_queries
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(dropout)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, K, E) -> q, k, v, each (N, H, K, E/H)."""
        return self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(N, H, K_query, K_key) weights; normalised over the keys (last axis) or, in the
        authors' form, over the queries (axis -2)."""
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        return torch.softmax(scores, dim=-2 if self.softmax_over_queries else -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (N, K, E); every token attends to every token, so no attention mask
        q, k, v = self.heads(x)
        if self.softmax_over_queries:
            weights = F.dropout(self.attention_weights(q, k), self.dropout, self.training)
            y = weights @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_dropout(self.proj(y.transpose(1, 2).flatten(2)))  # (N, K, E)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, architecture: str = "standard"):
        super().__init__()
        authors = architecture == "authors"
        self.mlp_residual = not authors
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, dropout, softmax_over_queries=authors)
        self.ln_mlp = nn.LayerNorm(dim)
        hidden = dim if authors else ffn_dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        y = self.mlp(self.ln_mlp(x))
        return x + y if self.mlp_residual else y


class BidirectionalTransformer(nn.Module):
    """(N, K, E) -> (N, K, E): NumLayers pre-LN blocks, then a final LayerNorm (`standard` only)."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float,
                 architecture: str = "standard"):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"Models.MaskGit.Architecture={architecture!r}: expected one of {ARCHITECTURES}")
        self.blocks = nn.ModuleList(Block(dim, num_heads, ffn_dim, dropout, architecture) for _ in range(num_layers))
        self.ln_final = nn.LayerNorm(dim) if architecture == "standard" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)
