"""Attention building blocks of the sequence model f (paper tables 12-13).

A post-LN transformer block as in STORM: x = LN(x + Drop(MHSA(x))); x = LN(x + Drop(FFN(x))).
Self-attention goes through `scaled_dot_product_attention` and supports a key/value
cache, so imagination feeds one step at a time and projects only the new step.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class LayerCache:
    """Keys and values of one attention layer for the steps seen so far.

    Preallocated to the maximum length so a step writes in place instead of
    concatenating (no reallocation, no re-projection of the history).
    """
    keys: torch.Tensor    # (B, heads, max_len, head_dim)
    values: torch.Tensor  # (B, heads, max_len, head_dim)
    length: int = 0       # steps filled; a Python int, so no device sync to read it


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def empty_cache(self, batch: int, max_len: int, device, dtype) -> LayerCache:
        shape = (batch, self.num_heads, max_len, self.head_dim)
        return LayerCache(torch.zeros(shape, device=device, dtype=dtype),
                          torch.zeros(shape, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        # x: (B, L, D) new steps; with a cache they follow the cache.length steps already seen.
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        past = 0
        if cache is not None:
            past = cache.length
            if past + L > cache.keys.shape[2]:
                raise ValueError(f"KV cache holds {cache.keys.shape[2]} steps; cannot add {L} to {past}")
            cache.keys[:, :, past:past + L] = k.to(cache.keys.dtype)
            cache.values[:, :, past:past + L] = v.to(cache.values.dtype)
            cache.length = past + L
            k, v = cache.keys[:, :, :past + L].to(q.dtype), cache.values[:, :, :past + L].to(q.dtype)
        dropout = self.dropout if self.training else 0.0
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif L == 1:  # one new query sees every cached step: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:  # query i is step past+i and may see keys 0..past+i
            allowed = torch.ones(L, past + L, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class TransformerBlock(nn.Module):
    """Post-LN block (table 13): MHSA + residual + LN, then FFN (ReLU) + residual + LN."""

    def __init__(self, dim: int, num_heads: int, feedforward_dim: int, dropout: float, norm_eps: float = 1e-6):
        super().__init__()
        self.attention = CausalSelfAttention(dim, num_heads, dropout)
        self.attention_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feedforward = nn.Sequential(nn.Linear(dim, feedforward_dim), nn.ReLU(),
                                         nn.Linear(feedforward_dim, dim))
        self.feedforward_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, cache)))
        return self.feedforward_norm(x + self.dropout(self.feedforward(x)))
