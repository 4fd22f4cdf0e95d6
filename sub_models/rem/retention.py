"""Multi-scale retention (RetNet) as REM uses it, in parallel, recurrent and chunkwise forms.

Written here rather than imported from `yet-another-retnet` (the library REM builds on):
POP needs two operations that library does not offer (per-block states of a chunk, and a
batch of independent chunks each started from its own state), which REM itself adds by
copying the library's internals; the library also runs `git describe` at import and caches
its decay masks with `lru_cache(maxsize=1)`, which thrashes between the shapes POP uses.
The numbers follow REM_SPEC.md section 4.3 (= yet-another-retnet 0.5.1):

* q, k, v = X W + b (biases), split into h heads of d_h = E / h;
* rotary position: the token at absolute index n turns channel pair (2p, 2p+1) of q and k by
  n * theta_p, theta_p = base^(-p / (d_h/2 - 1)); no xPos magnitude decay; then k /= sqrt(d_h);
* head decays gamma_i = 1 - exp(linspace(ln 1/w_min, ln 1/w_max, h)) (windows 32 .. 512 tokens);
* Y = retention(q, k, v), dropout, GroupNorm(h groups, no affine) per token,
  out = W_O(swish(X W_G + b_G) * Y).

Shapes inside: q, k, v (b, h, n, d); a state is (b, h, d, d) per layer (S = sum gamma^. k^T v).
"""
import functools
import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

State = Optional[Tensor]


def decay_gammas(num_heads: int, window_min: float = 32.0, window_max: float = 512.0) -> tuple:
    """gamma_i = 1 - exp(linspace(ln(1/window_min), ln(1/window_max), num_heads)) (computed in float64)."""
    x = torch.linspace(math.log(1.0 / window_min), math.log(1.0 / window_max), num_heads, dtype=torch.float64)
    return tuple((1.0 - x.exp()).tolist())


def position_thetas(head_dim: int, base: float = 10000.0) -> tuple:
    """theta_p = 1 / base^(p / (head_dim/2 - 1)), p = 0 .. head_dim/2 - 1, each repeated for its pair."""
    thetas = 1.0 / base ** torch.linspace(0.0, 1.0, head_dim // 2, dtype=torch.float64)
    return tuple(thetas.repeat_interleave(2).tolist())


@functools.lru_cache(maxsize=512)
def _rotation(start: int, length: int, thetas: tuple, dtype: torch.dtype, device: torch.device):
    angles = torch.arange(start, start + length, dtype=torch.float64)[:, None] * torch.tensor(thetas, dtype=torch.float64)
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def rotate(x: Tensor, start: int, thetas: tuple) -> Tensor:
    """Turn pair (2p, 2p+1) of x (..., n, d) at absolute position start + i by (start + i) * theta_p."""
    cos, sin = _rotation(start, x.shape[-2], thetas, x.dtype, x.device)
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)   # x * i for complex pairs
    return x * cos + turned * sin


@functools.lru_cache(maxsize=64)
def _decay_mask(gammas: tuple, length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    idx = torch.arange(length, dtype=torch.float64)
    distance = idx[:, None] - idx[None, :]
    mask = torch.tensor(gammas, dtype=torch.float64)[:, None, None] ** distance.clamp(min=0)
    return mask.masked_fill(distance < 0, 0.0).to(device=device, dtype=dtype)


def decay_mask(gammas: tuple, length: int, dtype: torch.dtype, device) -> Tensor:
    """D (h, n, n): D[i, a, b] = gamma_i^(a - b) for a >= b, else 0."""
    return _decay_mask(tuple(gammas), length, dtype, torch.device(device))


@functools.lru_cache(maxsize=256)
def _powers_cached(gammas: tuple, exponents: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    out = torch.tensor(gammas, dtype=torch.float64)[:, None] ** torch.tensor(exponents, dtype=torch.float64)[None, :]
    return out.to(device=device, dtype=dtype)[None, :, :, None]


def _powers(gammas: tuple, exponents, like: Tensor) -> Tensor:
    """gamma_i^e (1, h, len(e), 1) in like's dtype and device."""
    return _powers_cached(tuple(gammas), tuple(int(e) for e in exponents), like.dtype, like.device)


def retention_parallel(q: Tensor, k: Tensor, v: Tensor, gammas: Tensor) -> Tensor:
    """Y = (Q K^T * D) V over the whole sequence (state 0 before it)."""
    scores = q @ k.transpose(-1, -2) * decay_mask(gammas, q.shape[-2], q.dtype, q.device)
    return scores @ v


def retention_recurrent(q: Tensor, k: Tensor, v: Tensor, gammas: Tensor, state: State) -> tuple[Tensor, Tensor]:
    """One token (b, h, d): S_n = gamma S_{n-1} + k_n^T v_n, y_n = q_n S_n."""
    new_state = k[..., :, None] * v[..., None, :]
    if state is not None:
        new_state = new_state + state * _powers(gammas, (1,), q)
    return (q[..., None, :] @ new_state)[..., 0, :], new_state


def retention_chunk(q: Tensor, k: Tensor, v: Tensor, gammas: Tensor, state: State) -> Tensor:
    """Outputs of one chunk of B tokens started from `state`:
    Y = (Q K^T * D) V + (Q S_prev) * xi, xi_r = gamma^r for local row r = 1..B."""
    y = retention_parallel(q, k, v, gammas)
    if state is not None:
        rows = torch.arange(1, q.shape[-2] + 1)
        y = y + (q @ state) * _powers(gammas, rows, q)
    return y


def chunk_state(k: Tensor, v: Tensor, gammas: Tensor, state: State) -> Tensor:
    """State after a chunk: S = (K * zeta)^T V + gamma^B S_prev, zeta_r = gamma^(B - r)."""
    length = k.shape[-2]
    zeta = _powers(gammas, length - torch.arange(1, length + 1), k)
    new_state = (k * zeta).transpose(-1, -2) @ v
    if state is not None:
        new_state = new_state + state * _powers(gammas, (length,), k)
    return new_state


def per_block_states(k: Tensor, v: Tensor, gammas: Tensor, state: State, block: int) -> Tensor:
    """States after each block of `block` tokens of a chunk (t blocks): (t, b, h, d, d).

    S~_j = sum_r gamma^(block - r) k_{j,r}^T v_{j,r} for all blocks at once, then
    S_j = S~_j + gamma^block S_{j-1} with S_0 = state: the chunkwise state of the prefix
    ending at block j."""
    b, h, n, d = k.shape
    t = n // block
    zeta = _powers(gammas, block - torch.arange(1, block + 1), k)[:, :, None]      # (1, h, 1, block, 1)
    kb, vb = k.reshape(b, h, t, block, d), v.reshape(b, h, t, block, d)
    local = (kb * zeta).transpose(-1, -2) @ vb                                    # (b, h, t, d, d)
    step = _powers(gammas, (block,), k)                             # (1, h, 1, 1)
    states, previous = [], state
    for j in range(t):
        current = local[:, :, j] if previous is None else local[:, :, j] + step * previous
        states.append(current)
        previous = current
    return torch.stack(states)


class MultiScaleRetention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float, window_min: float = 32.0,
                 window_max: float = 512.0, theta_base: float = 10000.0, group_norm_eps: float = 1e-6):
        super().__init__()
        if embed_dim % num_heads or (embed_dim // num_heads) % 2:
            raise ValueError(f"embed_dim {embed_dim} must split into {num_heads} heads of even size")
        self.num_heads, self.head_dim, self.dropout = num_heads, embed_dim // num_heads, dropout
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(embed_dim, embed_dim) for _ in range(3))
        self.g_proj, self.out_proj = nn.Linear(embed_dim, embed_dim), nn.Linear(embed_dim, embed_dim)
        self.group_norm = nn.GroupNorm(num_heads, embed_dim, eps=group_norm_eps, affine=False)
        self.gammas = decay_gammas(num_heads, window_min, window_max)     # plain tuples: constants, not state
        self.thetas = position_thetas(self.head_dim, theta_base)
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.out_proj):   # as yet-another-retnet
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _qkv(self, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        """x (b, n, E) at absolute positions start.. -> rotated q, rotated and scaled k, v (b, h, n, d)."""
        def heads(t):
            return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-2, -3)
        q = rotate(heads(self.q_proj(x)), start, self.thetas)
        k = rotate(heads(self.k_proj(x)), start, self.thetas) / math.sqrt(self.head_dim)
        return q, k, heads(self.v_proj(x))

    def _output(self, x: Tensor, y: Tensor) -> Tensor:
        """y (b, h, n, d) -> dropout -> per-token GroupNorm -> swish gate -> W_O."""
        y = y.transpose(-2, -3).flatten(-2)                                          # (b, n, E)
        y = F.dropout(y, self.dropout, self.training)
        y = self.group_norm(y.reshape(-1, y.shape[-1])).reshape(y.shape)
        return self.out_proj(F.silu(self.g_proj(x)) * y)

    def forward_parallel(self, x: Tensor, start: int = 0) -> Tensor:
        q, k, v = self._qkv(x, start)
        return self._output(x, retention_parallel(q, k, v, self.gammas))

    def forward_recurrent(self, x: Tensor, index: int, state: State) -> tuple[Tensor, Tensor]:
        """One token x (b, E) at absolute position `index`."""
        q, k, v = (t[:, :, 0] for t in self._qkv(x[:, None], index))
        y, state = retention_recurrent(q, k, v, self.gammas, state)
        return self._output(x[:, None], y[:, :, None])[:, 0], state

    def forward_chunkwise(self, x: Tensor, start: int, state: State,
                          update_state: bool = True) -> tuple[Tensor, State]:
        """A chunk x (b, B, E) at positions start..start+B-1 from `state`; returns (y, state after it),
        or the given state unchanged with update_state=False."""
        q, k, v = self._qkv(x, start)
        y = self._output(x, retention_chunk(q, k, v, self.gammas, state))
        return y, (chunk_state(k, v, self.gammas, state) if update_state else state)

    def forward_block_states(self, x: Tensor, start: int, state: State, block: int) -> tuple[Tensor, Tensor]:
        """Chunkwise pass over t whole blocks; returns (y, the state after each block (t, b, h, d, d))."""
        q, k, v = self._qkv(x, start)
        y = self._output(x, retention_chunk(q, k, v, self.gammas, state))
        return y, per_block_states(k, v, self.gammas, state, block)

    def forward_from_block_states(self, x: Tensor, start: int, states: Tensor, block: int) -> Tensor:
        """x (b, t*block, E): t independent chunks of `block` tokens at the global positions
        start.., chunk j started from states[j] (t, b, h, d, d); no state comes out."""
        q, k, v = self._qkv(x, start)
        b, h, n, d = q.shape
        t = n // block

        def per_chunk(z):  # (b, h, t*block, d) -> (t*b, h, block, d)
            return z.reshape(b, h, t, block, d).permute(2, 0, 1, 3, 4).reshape(t * b, h, block, d)
        y = retention_chunk(per_chunk(q), per_chunk(k), per_chunk(v), self.gammas, states.flatten(0, 1))
        y = y.reshape(t, b, h, block, d).permute(1, 2, 0, 3, 4).reshape(b, h, n, d)
        return self._output(x, y)


class RetNetLayer(nn.Module):
    """Pre-LN decoder layer: X += Drop(MSR(LN1 X)); X += Drop(W2 Drop(swish(W1 LN2 X)))."""

    def __init__(self, embed_dim: int, num_heads: int, feedforward_dim: int, dropout: float,
                 layer_norm_eps: float = 1e-6, **retention_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.retention = MultiScaleRetention(embed_dim, num_heads, dropout, **retention_kwargs)
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.linear1, self.linear2 = nn.Linear(embed_dim, feedforward_dim), nn.Linear(feedforward_dim, embed_dim)
        self.drop = nn.Dropout(dropout)
        for layer in (self.linear1, self.linear2):    # as yet-another-retnet
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _finish(self, x: Tensor, retained: Tensor) -> Tensor:
        x = x + self.drop(retained)
        return x + self.drop(self.linear2(self.drop(F.silu(self.linear1(self.norm2(x))))))

    def forward_parallel(self, x, start=0):
        return self._finish(x, self.retention.forward_parallel(self.norm1(x), start))

    def forward_recurrent(self, x, index, state):
        y, state = self.retention.forward_recurrent(self.norm1(x), index, state)
        return self._finish(x, y), state

    def forward_chunkwise(self, x, start, state, update_state=True):
        y, state = self.retention.forward_chunkwise(self.norm1(x), start, state, update_state)
        return self._finish(x, y), state

    def forward_block_states(self, x, start, state, block):
        y, states = self.retention.forward_block_states(self.norm1(x), start, state, block)
        return self._finish(x, y), states

    def forward_from_block_states(self, x, start, states, block):
        return self._finish(x, self.retention.forward_from_block_states(self.norm1(x), start, states, block))


class RetNet(nn.Module):
    """A stack of RetNetLayers without a final norm. `states` is a list with one entry per
    layer (None = empty) in every form."""

    def __init__(self, num_layers: int, embed_dim: int, num_heads: int, feedforward_dim: int, dropout: float,
                 **kwargs):
        super().__init__()
        self.layers = nn.ModuleList(RetNetLayer(embed_dim, num_heads, feedforward_dim, dropout, **kwargs)
                                    for _ in range(num_layers))

    def empty_states(self) -> list:
        return [None] * len(self.layers)

    def forward_parallel(self, x: Tensor, start: int = 0) -> Tensor:
        for layer in self.layers:
            x = layer.forward_parallel(x, start)
        return x

    def forward_recurrent(self, x: Tensor, index: int, states: Sequence[State]) -> tuple[Tensor, list]:
        new = []
        for layer, state in zip(self.layers, states, strict=True):
            x, state = layer.forward_recurrent(x, index, state)
            new.append(state)
        return x, new

    def forward_chunkwise(self, x: Tensor, start: int, states: Sequence[State],
                          update_state: bool = True) -> tuple[Tensor, list]:
        new = []
        for layer, state in zip(self.layers, states, strict=True):
            x, state = layer.forward_chunkwise(x, start, state, update_state)
            new.append(state)
        return x, new

    def forward_chunked(self, x: Tensor, start: int, states: Sequence[State], chunk: int) -> tuple[Tensor, list]:
        """A long sequence as consecutive chunkwise calls of at most `chunk` tokens."""
        outputs = []
        for offset in range(0, x.shape[1], chunk):
            out, states = self.forward_chunkwise(x[:, offset:offset + chunk], start + offset, states)
            outputs.append(out)
        return torch.cat(outputs, dim=1), list(states)

    def forward_block_states(self, x: Tensor, start: int, states: Sequence[State],
                             block: int) -> tuple[Tensor, list]:
        per_layer = []
        for layer, state in zip(self.layers, states, strict=True):
            x, block_states = layer.forward_block_states(x, start, state, block)
            per_layer.append(block_states)
        return x, per_layer

    def forward_from_block_states(self, x: Tensor, start: int, per_layer_states: Sequence[Tensor],
                                  block: int) -> Tensor:
        for layer, states in zip(self.layers, per_layer_states, strict=True):
            x = layer.forward_from_block_states(x, start, states, block)
        return x
