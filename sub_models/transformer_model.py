"""The sequence model f: h_{1:T} = f(g(z_{1:T}, a_{1:T})), a causal transformer (paper 3.1).

`forward` runs a whole sequence causally (world-model training, acting). For imagination,
`start_cache` + `forward(..., cache)` feed the context and then one step at a time, and give
the same h as the full forward because every step attends to the cached keys/values of
all earlier steps.
"""
import torch
import torch.nn as nn

from sub_models.attention_blocks import LayerCache, TransformerBlock
from sub_models.state_mixer import build_mixer


class StochasticTransformer(nn.Module):
    def __init__(self, num_variables: int, num_classes: int, action_dim: int, dim: int, num_layers: int,
                 num_heads: int, feedforward_dim: int, max_length: int, dropout: float, mixer: str = "concat",
                 norm_eps: float = 1e-6):
        super().__init__()
        self.max_length = max_length
        self.mixer = build_mixer(mixer, num_variables, num_classes, action_dim, dim, num_heads)
        # >1 for the unmixed / iVideoGPT inputs (appendix E.4.2): each step is several tokens
        self.tokens_per_step = getattr(self.mixer, "tokens_per_step", 1)
        self.position = nn.Embedding(max_length * self.tokens_per_step, dim)   # learnable w_{1:T} (table 12)
        # eps 1e-6 here and in the blocks' norms, as the authors' (STORM transformer_model.py)
        self.input_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, feedforward_dim, dropout, norm_eps) for _ in range(num_layers))

    def start_cache(self, batch: int, device, dtype=torch.float32) -> list[LayerCache]:
        return [block.attention.empty_cache(batch, self.max_length * self.tokens_per_step, device, dtype)
                for block in self.blocks]

    def forward(self, z: torch.Tensor, action: torch.Tensor, cache: list[LayerCache] | None = None) -> torch.Tensor:
        # z: (B, L, K, C) one-hot latents, action: (B, L, A) -> h: (B, L, D)
        per_step = self.tokens_per_step
        start = cache[0].length // per_step if cache is not None else 0
        length = z.shape[1]
        if start + length > self.max_length:
            raise ValueError(f"sequence of {start + length} steps exceeds TransformerMaxLength={self.max_length}")
        positions = torch.arange(start * per_step, (start + length) * per_step, device=z.device)
        tokens = self.mixer(z, action)
        if per_step > 1:   # (B, L, S, D) -> one causal sequence of L*S tokens
            tokens = tokens.flatten(1, 2)
        x = self.input_norm(tokens + self.position(positions))
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        return x if per_step == 1 else x[:, per_step - 1::per_step]   # h_t: the last token of step t
