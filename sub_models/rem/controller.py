"""REM's controller C: an LSTM actor-critic over the tokenizer's code maps, trained only in the
world model's imagination. REM_SPEC.md section 5 (REM's `ActorCriticLS`, `compute_loss`, `imagine`).

    codes (E, g, g) -> [Conv3x3 + SiLU] per ConvChannels -> flatten -> Linear -> HiddenDim + SiLU
                    -> LSTMCell -> actor Linear(HiddenDim, |A|), critic Linear(HiddenDim, 1)
    action a        -> Embedding(|A|, HiddenDim) -> the same LSTMCell, one extra step after each
                       action (IncludeActionInputs); its output is not used

C sees codebook vectors, never decoded pixels: `quantize`'s z_q for real frames, the codes of
sampled tokens for imagined ones (the same thing: codebook rows of the tokens).

With the paper's sizes (E 256, 8x8 grid, channels [128, 64], hidden 512) and |A| = 4:
4,572,357 parameters.

Training (`loss`): burn the LSTM in over the first T-1 frames of a real segment (no gradient),
then roll the policy out in M for ImagineHorizon - ContextLength + 1 steps from the last real
frame, with backpropagation through the LSTM across the steps; lambda-returns of M's sampled
sign rewards and terminations; REINFORCE with the value baseline, an entropy bonus and an MSE
critic.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sub_models.optim import guarded_step
from sub_models.rem.tokenizer import codes_from_tokens
from sub_models.rem.world_model import sample_categorical

State = tuple[Tensor, Tensor]   # LSTMCell (h, c), each (B, HiddenDim)


def lambda_returns(rewards: Tensor, values: Tensor, ends: Tensor, gamma: float, lam: float) -> Tensor:
    """rewards, values, ends (B, H) -> G (B, H): G_{H-1} = V_{H-1};
    G_t = r_t + gamma (1 - d_t) [(1 - lam) V_{t+1} + lam G_{t+1}] (REM/IRIS compute_lambda_returns).
    The last step only bootstraps: its reward and termination are not read."""
    continues = gamma * (1.0 - ends.to(values.dtype))
    ret = values[:, -1]
    returns = [ret]
    for t in range(values.shape[1] - 2, -1, -1):
        ret = rewards[:, t] + continues[:, t] * ((1.0 - lam) * values[:, t + 1] + lam * ret)
        returns.append(ret)
    return torch.stack(returns[::-1], dim=1)


def sample_actions(logits: Tensor, temperature: float, epsilon: float = 0.0) -> Tensor:
    """logits (B, A) -> actions (B,) long: Categorical(logits / temperature); with probability
    epsilon per row the action is replaced by a uniform random one.

    Gumbel-max (argmax of logits / T + Gumbel noise) draws from the softmax without the host
    synchronisation that torch.multinomial's checks cost on a GPU."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be a probability in [0, 1], got {epsilon}")
    gumbel = -torch.empty_like(logits, dtype=torch.float32).exponential_().log()
    actions = (logits.float() / temperature + gumbel).argmax(dim=-1)
    if epsilon > 0.0:
        batch, action_dim = logits.shape
        uniform = torch.randint(0, action_dim, (batch,), device=logits.device)
        actions = torch.where(torch.rand(batch, device=logits.device) < epsilon, uniform, actions)
    return actions


class Controller(nn.Module):
    """`cfg` is `Models.Controller`; `embed_dim` the tokenizer's code width, `grid` its tokens per
    side, `action_dim` = |A|."""

    def __init__(self, cfg, embed_dim: int, grid: int, action_dim: int):
        super().__init__()
        self.cfg = cfg
        self.action_dim, self.hidden_dim = action_dim, cfg.HiddenDim
        widths = [embed_dim, *cfg.ConvChannels]
        # padding 1 keeps the g x g grid, so the flattened map is C_last * g * g
        self.convs = nn.Sequential(*(layer for c_in, c_out in zip(widths, widths[1:])
                                     for layer in (nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU())))
        self.dense = nn.Sequential(nn.Linear(widths[-1] * grid * grid, cfg.HiddenDim), nn.SiLU())
        self.lstm = nn.LSTMCell(cfg.HiddenDim, cfg.HiddenDim)
        self.actor = nn.Linear(cfg.HiddenDim, action_dim)
        self.critic = nn.Linear(cfg.HiddenDim, 1)
        # REM builds the action table even when it does not feed actions; here it exists only when
        # used, so the no-action-input ablation has no parameters without gradients (2,048 fewer)
        self.action_embedding = nn.Embedding(action_dim, cfg.HiddenDim) if cfg.IncludeActionInputs else None
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.LearningRate, weight_decay=cfg.WeightDecay,
                                           fused=True)   # fused: guarded_step skips on the device

    @property
    def device(self) -> torch.device:
        return self.actor.weight.device

    def initial_state(self, batch: int) -> State:
        zeros = torch.zeros(batch, self.hidden_dim, device=self.device, dtype=self.actor.weight.dtype)
        return zeros, zeros.clone()

    def encode(self, codes: Tensor) -> Tensor:
        """codes (..., E, g, g) -> LSTM inputs (..., HiddenDim); frames are independent, so burn-in
        encodes all of them in one pass."""
        lead = codes.shape[:-3]
        x = self.convs(codes.reshape(-1, *codes.shape[-3:]))
        return self.dense(x.flatten(1)).reshape(*lead, self.hidden_dim)

    def advance(self, x: Tensor, state: State, valid: Optional[Tensor] = None) -> State:
        """One LSTMCell step on inputs x (B, HiddenDim). Rows where `valid` (B,) is False keep
        their state, as REM's masked `hx[mask], cx[mask] = lstm(...)` (padding)."""
        h, c = self.lstm(x, state)
        if valid is None:
            return h, c
        keep = valid[:, None]
        return torch.where(keep, h, state[0]), torch.where(keep, c, state[1])

    def observe(self, codes: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """codes (B, E, g, g) -> (action logits (B, A), value (B,), new state)."""
        h, c = self.advance(self.encode(codes), state)
        return self.actor(h), self.critic(h).squeeze(-1), (h, c)

    def feed_action(self, actions: Tensor, state: State) -> State:
        """actions (B,) -> the state after the action step (its output is unused); the state
        unchanged without IncludeActionInputs."""
        if self.action_embedding is None:
            return state
        return self.advance(self.action_embedding(actions), state)

    @torch.no_grad()
    def burn_in(self, codes: Tensor, actions: Tensor, mask: Tensor) -> State:
        """codes (B, T, E, g, g), actions (B, T), mask (B, T) bool -> the state after T steps from
        zeros. Rows where mask[:, t] is False keep their state at step t (left padding: REM's
        `reset(burnin_observations, mask_padding)`). Action a_t is fed after frame t only with
        BurnInFeedsActions: REM's `reset` gates it on (t + 1) % 64 == 0, which a 20-frame
        burn-in never reaches (REM_SPEC.md section 7, issue a)."""
        if codes.shape[:2] != actions.shape or actions.shape != mask.shape:
            raise ValueError(f"codes (B, T, ...), actions and mask must share (B, T), got "
                             f"{tuple(codes.shape[:2])}, {tuple(actions.shape)}, {tuple(mask.shape)}")
        features = self.encode(codes)                                               # (B, T, HiddenDim)
        feed = self.cfg.BurnInFeedsActions and self.action_embedding is not None
        valid = mask.bool()
        state = self.initial_state(codes.shape[0])
        for t in range(codes.shape[1]):
            state = self.advance(features[:, t], state, valid[:, t])
            if feed:
                state = self.advance(self.action_embedding(actions[:, t]), state, valid[:, t])
        return state

    def loss(self, tokens: Tensor, actions: Tensor, mask: Tensor, world_model, codebook: Tensor,
             horizon: int, context_length: int) -> tuple[Tensor, dict]:
        """tokens (B, T, K) of a real segment (current tokenizer), actions (B, T), mask (B, T)
        (left padding; the last context_length + 1 steps must be real) -> (loss, metrics).

        Burn-in over frames 0..T-2; M's context = the last `context_length` frames and the actions
        between them; a rollout of horizon - context_length + 1 steps (REM's effective horizon),
        step 0 acting on the last real frame. M runs in eval mode (REM trains C with M in eval
        mode, dropout off) and under no_grad; the codes are read detached, so only C trains."""
        b, t_total, k = tokens.shape
        steps = horizon - context_length + 1
        if not 1 <= context_length < t_total or steps < 2:
            raise ValueError(f"need 1 <= context_length < T = {t_total} and horizon - context_length + 1 >= 2 "
                             f"(a step with a loss and a bootstrap step), got context_length={context_length}, "
                             f"horizon={horizon}")
        codes = codes_from_tokens(tokens, codebook)                                 # (B, T, E, g, g)
        state = self.burn_in(codes[:, :-1], actions[:, :-1], mask[:, :-1])
        world_model.eval()
        with torch.no_grad():
            run = world_model.start_imagination(tokens[:, -context_length:], actions[:, -context_length:-1],
                                                codebook)
        current = codes[:, -1]
        all_logits, all_values, all_actions, all_rewards, all_ends = [], [], [], [], []
        for step in range(steps):
            logits, value, state = self.observe(current, state)
            action = sample_actions(logits.detach(), self.cfg.TrainTemperature)
            state = self.feed_action(action, state)     # with gradient: the next steps' inputs depend on it
            with torch.no_grad():
                reward_logits, end_logits = run.step(action)
                all_rewards.append(sample_categorical(reward_logits).to(value.dtype) - 1.0)   # sign class - 1
                all_ends.append(sample_categorical(end_logits).to(value.dtype))
                if step < steps - 1:
                    next_tokens = sample_categorical(run.next_observation_logits())
                    run.observe(next_tokens)
                    current = codes_from_tokens(next_tokens, codebook)
            all_logits.append(logits)
            all_values.append(value)
            all_actions.append(action)
        logits, values = torch.stack(all_logits, 1), torch.stack(all_values, 1)    # (B, H, A), (B, H)
        rewards, ends = torch.stack(all_rewards, 1), torch.stack(all_ends, 1)      # (B, H)
        returns = lambda_returns(rewards, values.detach(), ends, self.cfg.Gamma, self.cfg.Lambda)

        # t = 0..H-2: the last step only bootstraps. Steps after a predicted termination keep their
        # loss (REM masks nothing; only the (1 - d) factor of the returns applies).
        # log pi and the entropy are of the distribution the action was drawn from, softmax(logits / T):
        # REM draws with Categorical(logits) and scores the same Categorical(logits) (T = 1 there).
        log_probs = F.log_softmax(logits[:, :-1] / self.cfg.TrainTemperature, dim=-1)   # (B, H-1, A)
        taken = torch.stack(all_actions[:-1], 1)[..., None]                             # (B, H-1, 1)
        advantages = returns[:, :-1] - values[:, :-1].detach()
        policy_loss = -(log_probs.gather(-1, taken).squeeze(-1) * advantages).mean()
        entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        entropy_loss = -self.cfg.EntropyWeight * entropy
        value_loss = F.mse_loss(values[:, :-1], returns[:, :-1])
        total = policy_loss + entropy_loss + value_loss
        metrics = {"controller/total_loss": total.detach(), "controller/policy_loss": policy_loss.detach(),
                   "controller/entropy_loss": entropy_loss.detach(), "controller/entropy": entropy.detach(),
                   "controller/value_loss": value_loss.detach(),
                   "controller/imagined_return": returns[:, 0].mean(),                  # mean G_0
                   "controller/imagined_reward": rewards.mean(),                        # per imagined step
                   "controller/imagined_termination": ends.mean()}                      # fraction of steps
        return total, metrics

    def update(self, tokens: Tensor, actions: Tensor, mask: Tensor, world_model, codebook: Tensor,
               horizon: int, context_length: int) -> tuple[dict, Tensor]:
        """One AdamW step; a non-finite loss or gradient skips the step (decided on the device:
        `finite` is a 0-dim bool tensor, sub_models/optim.py)."""
        self.train()
        total, metrics = self.loss(tokens, actions, mask, world_model, codebook, horizon, context_length)
        metrics["controller/grad_norm"], finite = guarded_step(self.optimizer, total, self.cfg.MaxGradNorm)
        return metrics, finite
