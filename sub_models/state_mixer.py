"""State mixers g(z_t, a_t) -> e_t: how a latent and an action become one transformer input.

`concat` is STORM's mixer (paper table 11) and the default. The two attention variants
are the paper's appendix E.4.1 ablation ("concatenation followed by attention" and
"cross attention between state and actions"); the paper does not give their layers, so
they are our reading of it: the K latent variables and the action become K+1 tokens of
width D.

Appendix E.4.2 compares the mixer with two inputs that are not mixed into one vector
(figure 14). They give the transformer several tokens per environment step
(`tokens_per_step`); the sequence model flattens them into one causal sequence and reads
h_t at the last token of step t (sub_models/transformer_model.py):
  * `unmixed`: "directly concatenating and feeding state and action embeddings into the
    transformer": per step a state token Linear(z_t flattened) and an action token
    Linear(a_t), in this order (2 tokens per step).
  * `ivideogpt`: the action conditioning of iVideoGPT (Wu et al., NeurIPS 2024): every
    latent variable is its own token, followed by a slot token to which a zero-initialised
    linear projection of the action is added (K + 1 tokens per step).
Both are our reading (the paper gives no layer detail). In a KV-cached rollout one step
feeds `tokens_per_step` new tokens.
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


class UnmixedStates(nn.Module):
    """No mixer (appendix E.4.2, "Unmixed States"): per step the tokens [E_z z_t, E_a a_t].

    The state embedding is one linear map of the flattened one-hot latent (K*C -> D) and the
    action embedding one linear map of the action (A -> D), both without bias like the
    mixer's first layer; nothing combines them before the transformer, whose attention is
    left to relate a step's action token to its state token. h_t is read at the action
    token, so it has seen z_t and a_t, as with the mixer.
    """
    tokens_per_step = 2

    def __init__(self, num_variables: int, num_classes: int, action_dim: int, dim: int, num_heads: int):
        super().__init__()
        self.state_embedding = nn.Linear(num_variables * num_classes, dim, bias=False)
        self.action_embedding = nn.Linear(action_dim, dim, bias=False)

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # z (..., K, C), action (..., A) -> tokens (..., 2, D): [state, action]
        return torch.stack([self.state_embedding(z.flatten(-2)), self.action_embedding(action)], dim=-2)


class IVideoGPTActions(nn.Module):
    """iVideoGPT's action conditioning (Wu et al., "iVideoGPT: Interactive VideoGPTs are
    Scalable World Models", NeurIPS 2024): a frame is a sequence of discrete tokens followed by
    a slot token, and the action enters only as a linear projection added to that slot token's
    embedding (paper: arXiv 2405.15223, section 3 and figure 3b, where visual tokens,
    actions and rewards form one token sequence; code: github.com/thuml/iVideoGPT,
    ivideogpt/transformer/action_model.py, `HeadModelWithAction`: `self.action_linear =
    nn.Linear(action_dim, embed_dim)` with weight and bias initialised to zero, and
    `inputs_embeds[:, slot positions] += action_linear(action)`; the slot token that follows
    frame t carries a_t and the next frame's tokens are predicted from there).

    Here: per step the K latent variables of z_t become K tokens (a C -> D embedding of each
    one-hot, the same lookup as iVideoGPT's token embedding but differentiable for the
    straight-through sample), then one slot token = a learned slot embedding + the
    zero-initialised Linear(a_t). h_t is read at the slot token, from which the prior predicts
    z_{t+1} (iVideoGPT predicts the next frame's tokens autoregressively from there; the prior
    head stays this model's). Positions are per token (the transformer's learned table has
    TransformerMaxLength * (K + 1) rows), where iVideoGPT's LLaMA uses rotary positions.
    """

    def __init__(self, num_variables: int, num_classes: int, action_dim: int, dim: int, num_heads: int):
        super().__init__()
        self.tokens_per_step = num_variables + 1
        self.token_embedding = nn.Linear(num_classes, dim, bias=False)
        self.slot_embedding = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.slot_embedding, std=0.02)
        self.action_linear = nn.Linear(action_dim, dim)
        nn.init.zeros_(self.action_linear.weight)   # as iVideoGPT: the action starts with no effect
        nn.init.zeros_(self.action_linear.bias)

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # z (..., K, C), action (..., A) -> tokens (..., K+1, D): K latent tokens, then slot + action
        slot = (self.slot_embedding + self.action_linear(action)).unsqueeze(-2)
        return torch.cat([self.token_embedding(z), slot], dim=-2)


# Inputs with several tokens per step (appendix E.4.2); MIXERS keeps the one-vector mixers.
MULTI_TOKEN_MIXERS = {"unmixed": UnmixedStates, "ivideogpt": IVideoGPTActions}
ALL_MIXERS = {**MIXERS, **MULTI_TOKEN_MIXERS}


def build_mixer(name: str, num_variables: int, num_classes: int, action_dim: int, dim: int,
                num_heads: int) -> nn.Module:
    """The module selected by Models.WorldModel.StateMixer; `tokens_per_step` (default 1) says
    how many transformer tokens it makes per step ((..., D) for 1, (..., S, D) otherwise)."""
    if name not in ALL_MIXERS:
        raise ValueError(f"Models.WorldModel.StateMixer={name!r}: expected one of {', '.join(ALL_MIXERS)}")
    return ALL_MIXERS[name](num_variables, num_classes, action_dim, dim, num_heads)
