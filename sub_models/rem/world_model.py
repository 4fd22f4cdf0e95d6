"""REM's world model M: a RetNet over [64 observation tokens, 1 action token] blocks with
parallel observation prediction (POP). REM_SPEC.md section 4.

Token layout: block t = [z_t^1 .. z_t^K, a_t] (K = TokensPerBlock - 1 = 64). Observation
tokens are embedded by the tokenizer's codebook, read detached (M never trains it) when
SharedEmbeddings; the action token by rows VocabSize + a of M's own table of
VocabSize + |A| + 1 rows (the last a never-used pad row, as in REM). Positions enter only
through the retention rotation.

POP: learned prediction tokens u_1..u_{K+1} stand in for the next frame. The output of u_k
run from the state after block t-1 (at block t's positions) predicts z_t^k; the real action
token's output of block t predicts the sign of r_t (3 classes) and the termination d_t.

* training (`forward_train`): per chunk of BlocksPerChunk blocks, stream A runs the real
  tokens chunkwise and returns the state after every block; stream B runs a copy of the
  prediction tokens for every block of the chunk as independent chunks in one batch, block
  t's copy started from the state after block t-1 (zero for the first block), layer by
  layer with stream A's states of that layer. B never enters a state.
* `forward_train_sequential` is the reference: per block, prediction tokens from the
  current state, then the real block.
* imagination (`Imagination`, `imagine`): two calls per step. Call 1 feeds the pending
  observation tokens and the action (state updated; reward and termination from the
  action token). Call 2 runs u_1..u_K from the state without updating it and samples the
  K next tokens independently.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sub_models.optim import guarded_step
from sub_models.rem.retention import RetNet

IGNORE = -100


def mlp_head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out_dim))


class POPWorldModel(nn.Module):
    """`cfg` is `Models.RetNetWorldModel`; `vocab_size` the tokenizer's codebook size."""

    def __init__(self, cfg, vocab_size: int, action_dim: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.action_dim = vocab_size, action_dim
        self.tokens_per_block = cfg.TokensPerBlock
        self.num_obs_tokens = cfg.TokensPerBlock - 1
        self.embed_dim = cfg.EmbedDim
        self.token_embedding = nn.Embedding(vocab_size + action_dim + 1, cfg.EmbedDim)
        self.prediction_tokens = nn.Embedding(cfg.TokensPerBlock, cfg.EmbedDim)
        self.retnet = RetNet(cfg.NumLayers, cfg.EmbedDim, cfg.NumHeads, cfg.FeedForwardDim, cfg.Dropout,
                             layer_norm_eps=cfg.LayerNormEps, window_min=cfg.DecayWindowMin,
                             window_max=cfg.DecayWindowMax, theta_base=cfg.ThetaBase,
                             group_norm_eps=cfg.GroupNormEps)
        self.head_observations = mlp_head(cfg.EmbedDim, vocab_size)
        self.head_rewards = mlp_head(cfg.EmbedDim, 3)
        self.head_ends = mlp_head(cfg.EmbedDim, 2)
        self.optimizer = self.configure_optimizer(cfg.LearningRate, cfg.WeightDecay)

    def configure_optimizer(self, lr: float, weight_decay: float) -> torch.optim.AdamW:
        """AdamW with weight decay on Linear weights only (none on biases, norms, embeddings), as REM."""
        decay = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        params = list(self.parameters())
        groups = [{"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
                  {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, fused=True)   # fused: guarded_step skips on the device

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    # ------------------------------------------------------------------ embeddings

    def embed_observations(self, tokens: Tensor, codebook: Optional[Tensor]) -> Tensor:
        """tokens (..., K) -> (..., K, E): codebook rows (detached) or M's own rows."""
        if self.cfg.SharedEmbeddings:
            return F.embedding(tokens, codebook.detach())
        return self.token_embedding(tokens)

    def embed_actions(self, actions: Tensor) -> Tensor:
        """actions (...) -> (..., E) from rows VocabSize + a."""
        return self.token_embedding(actions.long() + self.vocab_size)

    def embed_blocks(self, tokens: Tensor, actions: Tensor, codebook: Optional[Tensor]) -> Tensor:
        """tokens (B, T, K), actions (B, T) -> (B, T, K+1, E)."""
        return torch.cat([self.embed_observations(tokens, codebook), self.embed_actions(actions)[:, :, None]], 2)

    def prediction_embeddings(self, batch: int, blocks: int, slots: Optional[int] = None) -> Tensor:
        """(batch, blocks * slots, E): u_1..u_slots per block (row k for slot k, or row 0 everywhere
        with SharedPredictionToken)."""
        slots = self.tokens_per_block if slots is None else slots
        rows = torch.arange(slots, device=self.device)
        if self.cfg.SharedPredictionToken:
            rows = torch.zeros_like(rows)
        return self.prediction_tokens(rows).repeat(blocks, 1).expand(batch, -1, -1)

    # ------------------------------------------------------------------ training forward

    def forward_train(self, blocks: Tensor) -> Tensor:
        """POP training forward. blocks (B, T, K+1, E) -> outputs (B, T, K+1, E): slot k < K holds
        the prediction output for z_t^{k+1}; slot K the real action token's output."""
        b, t_total, k1, e = blocks.shape
        k = self.num_obs_tokens
        chunk = self.cfg.BlocksPerChunk
        states, n, outputs = self.retnet.empty_states(), 0, []
        for first in range(0, t_total, chunk):
            count = min(chunk, t_total - first)
            real, block_states = self.retnet.forward_block_states(blocks[:, first:first + count].flatten(1, 2), n,
                                                                  states, k1)
            shifted = [torch.cat([torch.zeros_like(bs[:1]) if prev is None else prev[None], bs[:-1]])
                       for prev, bs in zip(states, block_states)]
            predicted = self.retnet.forward_from_block_states(self.prediction_embeddings(b, count), n, shifted, k1)
            real, predicted = real.unflatten(1, (count, k1)), predicted.unflatten(1, (count, k1))
            outputs.append(torch.cat([predicted[:, :, :k], real[:, :, k:]], dim=2))
            states = [bs[-1] for bs in block_states]
            n += count * k1
        return torch.cat(outputs, dim=1)

    def forward_train_sequential(self, blocks: Tensor) -> Tensor:
        """Reference for `forward_train` (REM's `_compute_train_forward_sequential`): per block,
        the K prediction tokens from the current state (not kept), then the real block."""
        b, t_total, k1, e = blocks.shape
        k = self.num_obs_tokens
        states, n, outputs = self.retnet.empty_states(), 0, []
        u = self.prediction_embeddings(b, 1, k)
        for t in range(t_total):
            predicted, _ = self.retnet.forward_chunkwise(u, n, states, update_state=False)
            real, states = self.retnet.forward_chunkwise(blocks[:, t], n, states)
            outputs.append(torch.cat([predicted, real[:, k:]], dim=1))
            n += k1
        return torch.stack(outputs, dim=1)

    # ------------------------------------------------------------------ loss and update

    def loss(self, tokens: Tensor, actions: Tensor, rewards: Tensor, terminations: Tensor,
             codebook: Optional[Tensor], mask: Optional[Tensor] = None,
             sequential: bool = False) -> tuple[Tensor, dict]:
        """tokens (B, T, K) from the current tokenizer, actions (B, T), rewards (B, T) raw,
        terminations (B, T) in {0, 1}, mask (B, T) 1 = real step (None = all real).

        L_M = CE(next tokens) + CE(sign(r) + 1, 3 classes) + CE(termination, 2 classes), each a mean
        over its valid targets; blocks t < ContextLength and masked steps give no target."""
        k = self.num_obs_tokens
        outputs = (self.forward_train_sequential if sequential else self.forward_train)(
            self.embed_blocks(tokens, actions, codebook))
        valid = torch.ones_like(actions, dtype=torch.bool) if mask is None else mask.bool()
        valid = valid.clone()
        valid[:, :self.cfg.ContextLength] = False
        obs_labels = tokens.long().masked_fill(~valid[:, :, None], IGNORE)
        obs_logits = self.head_observations(outputs[:, :, :k])
        action_out = outputs[:, :, k]
        reward_labels = (torch.sign(rewards) + 1).long().masked_fill(~valid, IGNORE)
        end_labels = terminations.long().masked_fill(~valid, IGNORE)
        obs_loss = F.cross_entropy(obs_logits.flatten(0, 2), obs_labels.flatten(), ignore_index=IGNORE)
        reward_loss = F.cross_entropy(self.head_rewards(action_out).flatten(0, 1), reward_labels.flatten(),
                                      ignore_index=IGNORE)
        end_loss = F.cross_entropy(self.head_ends(action_out).flatten(0, 1), end_labels.flatten(),
                                   ignore_index=IGNORE)
        total = obs_loss + reward_loss + end_loss
        metrics = {"world_model/total_loss": total.detach(), "world_model/observation_loss": obs_loss.detach(),
                   "world_model/reward_loss": reward_loss.detach(), "world_model/termination_loss": end_loss.detach()}
        return total, metrics

    def update(self, tokens, actions, rewards, terminations, codebook, mask=None) -> tuple[dict, Tensor]:
        """One AdamW step; a non-finite loss or gradient skips the step (decided on the device:
        `finite` is a 0-dim bool tensor, sub_models/optim.py)."""
        self.train()
        total, metrics = self.loss(tokens, actions, rewards, terminations, codebook, mask)
        metrics["world_model/grad_norm"], finite = guarded_step(self.optimizer, total, self.cfg.MaxGradNorm)
        return metrics, finite

    # ------------------------------------------------------------------ imagination

    def start_imagination(self, context_tokens: Tensor, context_actions: Tensor,
                          codebook: Optional[Tensor]) -> "Imagination":
        return Imagination(self, context_tokens, context_actions, codebook)

    @torch.no_grad()
    def imagine(self, context_tokens: Tensor, context_actions: Tensor, policy: Callable[[Tensor], Tensor],
                horizon: int, codebook: Optional[Tensor], temperature: float = 1.0) -> "ImaginedRollout":
        """Roll `policy` out for `horizon` steps from real context frames.

        context_tokens (B, C, K) are the last C real frames' tokens, context_actions (B, C-1) the
        actions between them. At step t the policy gets the tokens of the current frame (the last
        real frame at t = 0) and returns actions (B,); M then gives r_t, d_t (call 1) and, except
        after the last step, samples the next frame's tokens (call 2). The policy may keep its own
        recurrent state across calls (REM's LSTM controller)."""
        self.eval()
        run = self.start_imagination(context_tokens, context_actions, codebook)
        frames, actions, rewards, ends = [], [], [], []
        current = context_tokens[:, -1]
        for step in range(horizon):
            frames.append(current)
            action = policy(current)
            reward_logits, end_logits = run.step(action)
            actions.append(action)
            rewards.append(sample_categorical(reward_logits, temperature).float() - 1.0)
            ends.append(sample_categorical(end_logits, temperature).float())
            if step < horizon - 1:
                current = sample_categorical(run.next_observation_logits(), temperature)
                run.observe(current)
        return ImaginedRollout(torch.stack(frames, 1), torch.stack(actions, 1), torch.stack(rewards, 1),
                               torch.stack(ends, 1))


def sample_categorical(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """One sample per row of logits (..., N) at the given temperature: argmax of p / q with
    q ~ Exp(1), torch.multinomial's own draw for one sample (the same samples from the same RNG
    state) without its input checks, which wait for the GPU (two syncs per call)."""
    probs = F.softmax(logits.float() / temperature, dim=-1)
    return (probs / torch.empty_like(probs).exponential_()).argmax(-1)


@dataclass
class ImaginedRollout:
    tokens: Tensor        # (B, H, K) the frame the policy acted on at each step
    actions: Tensor       # (B, H)
    rewards: Tensor       # (B, H) in {-1, 0, 1}
    terminations: Tensor  # (B, H) in {0, 1}


class Imagination:
    """POP inference state: the per-layer retention states, the next absolute position n, and
    the embeddings of observation tokens not yet fed (the context, then each sampled frame)."""

    def __init__(self, model: POPWorldModel, context_tokens: Tensor, context_actions: Tensor,
                 codebook: Optional[Tensor]):
        b, c, k = context_tokens.shape
        if context_actions.shape != (b, c - 1):
            raise ValueError(f"context_actions must be (B, C-1) = {(b, c - 1)}, got {tuple(context_actions.shape)}")
        self.model, self.codebook = model, codebook
        self.states, self.n = model.retnet.empty_states(), 0
        pieces = []
        for t in range(c):
            pieces.append(model.embed_observations(context_tokens[:, t], codebook))
            if t < c - 1:
                pieces.append(model.embed_actions(context_actions[:, t])[:, None])
        self.pending = torch.cat(pieces, dim=1)
        self.max_tokens = model.cfg.MaxBlocks * model.tokens_per_block

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Call 1: feed the pending observation tokens and a_t, advance the state.
        Returns (reward logits (B, 3), termination logits (B, 2)) of the action token."""
        if self.pending is None:
            raise RuntimeError("observe() the next frame's tokens before the next step()")
        x = torch.cat([self.pending, self.model.embed_actions(actions)[:, None]], dim=1)
        if self.n + x.shape[1] > self.max_tokens:
            raise ValueError(f"imagination would pass {self.max_tokens} tokens (MaxBlocks blocks), "
                             "the training segment length")
        out, self.states = self.model.retnet.forward_chunkwise(x, self.n, self.states)
        self.n += x.shape[1]
        self.pending = None
        last = out[:, -1]
        return self.model.head_rewards(last), self.model.head_ends(last)

    def next_observation_logits(self) -> Tensor:
        """Call 2: u_1..u_K at positions n..n+K-1 from the current state, which is left unchanged.
        Returns logits (B, K, VocabSize) of the next frame's tokens."""
        b = self.states[0].shape[0]
        u = self.model.prediction_embeddings(b, 1, self.model.num_obs_tokens)
        out, _ = self.model.retnet.forward_chunkwise(u, self.n, self.states, update_state=False)
        return self.model.head_observations(out)

    def observe(self, tokens: Tensor) -> None:
        """Set the next frame's tokens (B, K), fed with the next action."""
        self.pending = self.model.embed_observations(tokens, self.codebook)
