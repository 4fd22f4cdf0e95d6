"""State mixers g(z_t, a_t) -> e_t: how a latent and an action become one transformer input.

`concat` is STORM's mixer (paper table 11) and the default. The two attention variants
are the paper's appendix E.4.1 ablation ("concatenation followed by attention" and
"cross attention between state and actions"); the paper does not give their layers, so
they are our reading of it: the K latent variables and the action become K+1 tokens of
width D.
"""
import torch
import torch.nn as nn


def mlp_mixer(in_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(),
                         nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim))


class ConcatMixer(nn.Module):
    """concat(z one-hot flattened, action) -> Linear -> LN -> ReLU -> Linear -> LN."""

    def __init__(self, num_variables: int, num_classes: int, action_dim: int, dim: int, num_heads: int):
        super().__init__()
        self.mlp = mlp_mixer(num_variables * num_classes + action_dim, dim)

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # z: (..., K, C) one-hot; action: (..., A) one-hot or continuous vector -> (..., D)
        return self.mlp(torch.cat([z.flatten(-2), action], dim=-1))


class _TokenMixer(nn.Module):
    def __init__(self, num_variables: int, num_classes: int, action_dim: int, dim: int, num_heads: int):
        super().__init__()
        self.latent_tokens = nn.Linear(num_classes, dim, bias=False)
        self.latent_position = nn.Parameter(torch.zeros(num_variables, dim))
        self.action_token = nn.Linear(action_dim, dim, bias=False)
        self.attention = nn.MultiheadAttention(dim, num_heads, bias=False, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def tokens(self, z, action):
        lead = z.shape[:-2]
        latent = (self.latent_tokens(z) + self.latent_position).reshape(-1, z.shape[-2], self.norm.normalized_shape[0])
        act = self.action_token(action).reshape(-1, 1, latent.shape[-1])
        return lead, latent, act


class ConcatAttentionMixer(_TokenMixer):
    """Self-attention over [K latent tokens, action token], mean-pooled, residual, LN."""

    def forward(self, z, action):
        lead, latent, act = self.tokens(z, action)
        tokens = torch.cat([latent, act], dim=1)                 # (N, K+1, D)
        mixed, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.norm((tokens + mixed).mean(1)).reshape(*lead, -1)


class CrossAttentionMixer(_TokenMixer):
    """The action token queries the K latent tokens; residual on the action token, LN."""

    def forward(self, z, action):
        lead, latent, act = self.tokens(z, action)
        mixed, _ = self.attention(act, latent, latent, need_weights=False)   # (N, 1, D)
        return self.norm(act + mixed).reshape(*lead, -1)


MIXERS = {"concat": ConcatMixer, "concat_attn": ConcatAttentionMixer, "cross_attn": CrossAttentionMixer}
