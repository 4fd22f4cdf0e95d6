"""DreamerV3-style actor-critic trained purely in imagination (paper A.2, tables 8 and 14).

The agent sees s_l = [z_l (K*C), h_l (D)]. From an imagined rollout s_0..s_H with rewards
r_l and continuation flags c_l = 1 - termination_l of the transition out of s_l:

  lambda-return (eq. 9):  G_H = V(s_H),  G_l = r_l + gamma c_l [(1 - lambda) V(s_{l+1}) + lambda G_{l+1}]
  critic:   two-hot CE to sg(G_l) + two-hot CE to the slow critic's sg(V_slow(s_l))
  actor:    REINFORCE with advantage (G_l - V(s_l)) / max(1, S) and an entropy bonus, where
            S is an EMA of the 95th - 5th percentile range of G.

`Models.Agent.StormCompat=true` reproduces the authors' code instead: the bootstrap inside
the recursion uses V(s_l) in place of V(s_{l+1}), and the regulariser regresses toward the
slow critic's lambda-return.
"""
import copy
import math

import torch
import torch.nn as nn

from config import plain_section
from sub_models.functions_losses import SymlogTwoHot
from sub_models.optim import guarded_step, make_adam
from sub_models.world_models import Imagination, WorldModel, autocast_for


def mlp(in_dim: int, hidden: int, out_dim: int, num_layers: int) -> nn.Sequential:
    layers, width = [], in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden, bias=False), nn.LayerNorm(hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


def lambda_returns(rewards, continues, values, gamma: float, lam: float, storm_compat: bool = False):
    """rewards, continues (B, H); values (B, H+1) = V(s_0..s_H) -> G (B, H).

    storm_compat bootstraps with V(s_l) instead of V(s_{l+1}) (the authors' indexing).
    """
    horizon = rewards.shape[1]
    bootstrap = values[:, :-1] if storm_compat else values[:, 1:]
    returns = torch.empty_like(rewards)
    next_return = values[:, -1]
    for l in reversed(range(horizon)):
        next_return = rewards[:, l] + gamma * continues[:, l] * ((1 - lam) * bootstrap[:, l] + lam * next_return)
        returns[:, l] = next_return
    return returns


def percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile (0 <= q <= 1) of all entries of x as the authors take it (STORM's
    `percentile`, torch.kthvalue): the k-th smallest value with k = int(q * n), no
    interpolation; k is at least 1 (theirs fails for q * n < 1). n comes from the shape, so
    there is no host sync."""
    values = x.flatten().sort().values
    kth = max(int(q * values.numel()), 1)
    return values[kth - 1]


class ReturnNormalizer(nn.Module):
    """S = EMA of (P_high(G) - P_low(G)); advantages are divided by max(1, S).

    Starts at 0 like the authors' and DreamerV3's, so early small ranges are not blown up.
    `next_scale` computes the S an update uses; `commit` stores it only if the update was
    taken, so a skipped (non-finite) update leaves the running scale where it was.
    """

    def __init__(self, decay: float, low_percentile: float, high_percentile: float):
        super().__init__()
        self.decay, self.low, self.high = decay, low_percentile / 100.0, high_percentile / 100.0
        self.register_buffer("scale", torch.zeros(()))

    def next_scale(self, returns: torch.Tensor) -> torch.Tensor:
        flat = returns.detach().float()
        spread = percentile(flat, self.high) - percentile(flat, self.low)
        return self.scale * self.decay + (1 - self.decay) * spread

    def commit(self, scale: torch.Tensor, step_taken: torch.Tensor) -> None:
        # decided on the device: no host sync
        self.scale.copy_(torch.where(step_taken, scale, self.scale))

    @staticmethod
    def divisor(scale: torch.Tensor) -> torch.Tensor:
        return torch.clamp(scale, min=1.0)


class DiscreteActionDist:
    """Categorical over the actions; sampling by Gumbel-max, which is batched and, unlike
    torch.multinomial, needs no host-side check of its input (no sync, compiles whole)."""

    def __init__(self, raw: torch.Tensor):
        self.log_probs = torch.log_softmax(raw.float(), dim=-1)

    def sample(self) -> torch.Tensor:
        gumbel = -torch.empty_like(self.log_probs).exponential_().log()
        return (self.log_probs + gumbel).argmax(-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return self.log_probs.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.log_probs.exp() * self.log_probs).sum(-1)


class ContinuousActionDist:
    """Normal(tanh(mean), 2 sigmoid(std/2) + 0.1) per dimension; log-prob and entropy summed
    over dimensions.

    `sample` returns the draw x itself, unclipped: REINFORCE needs log N(x) of the sample
    that was drawn. The environment and the world model execute clip(x, -1, 1) (EnvActor and
    WorldModel.action_input clip). Taking log N(clip(x)) instead would score every clipped
    draw at the density of the boundary, which biases the gradient of the mean (about 30%
    too small at the initial std of 1.1, where 36-47% of draws fall outside [-1, 1]).
    """

    def __init__(self, raw: torch.Tensor):
        mean_raw, std_raw = raw.float().chunk(2, dim=-1)
        self.mean = torch.tanh(mean_raw)
        self.std = 2 * torch.sigmoid(std_raw / 2) + 0.1

    def sample(self) -> torch.Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        z = (action - self.mean) / self.std
        return (-0.5 * z.square() - self.std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + 0.5 * math.log(2 * math.pi) + self.std.log()).sum(-1)


class ActorCriticAgent(nn.Module):
    def __init__(self, agent_cfg, state_dim: int, action_dim: int, discrete_actions: bool, use_bf16: bool = False):
        super().__init__()
        self.cfg, self.discrete, self.action_dim = plain_section(agent_cfg), discrete_actions, action_dim
        self.use_bf16 = use_bf16
        self.entropy_coef = agent_cfg.EntropyCoef if discrete_actions else agent_cfg.ContinuousEntropyCoef
        actor_out = action_dim if discrete_actions else 2 * action_dim
        self.actor = mlp(state_dim, agent_cfg.HiddenDim, actor_out, agent_cfg.NumLayers)
        self.critic = mlp(state_dim, agent_cfg.HiddenDim, agent_cfg.CriticBins, agent_cfg.NumLayers)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.value_codec = SymlogTwoHot(agent_cfg.CriticBins, agent_cfg.CriticLow, agent_cfg.CriticHigh)
        self.return_normalizer = ReturnNormalizer(agent_cfg.ReturnNormDecay, agent_cfg.ReturnNormLowPercentile,
                                                  agent_cfg.ReturnNormHighPercentile)
        self.optimizer = make_adam(list(self.actor.parameters()) + list(self.critic.parameters()),
                                   agent_cfg.LearningRate, agent_cfg.AdamEps)

    @property
    def device(self) -> torch.device:
        return self.critic[0].weight.device

    def action_dist(self, states: torch.Tensor):
        raw = self.actor(states)
        return DiscreteActionDist(raw) if self.discrete else ContinuousActionDist(raw)

    @torch.no_grad()
    def policy(self, latent: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Sampled action for s = [z, h]: an index (N,) for discrete, otherwise the Normal draw (N, A),
        unclipped (the env and the world model clip it to [-1, 1])."""
        with autocast_for(self.device, self.use_bf16):
            return self.action_dist(torch.cat([latent, hidden], dim=-1)).sample()

    @torch.no_grad()
    def update_slow_critic(self, step_taken: torch.Tensor | None = None):
        """slow <- slow + (1 - decay) (critic - slow); not at all where step_taken is False."""
        weight = 1.0 - self.cfg.SlowCriticDecay
        if step_taken is not None:
            weight = step_taken.float() * weight
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.lerp_(fast, weight)

    def compile_hot_paths(self, backend: str = "inductor") -> None:
        """torch.compile the agent loss (forward and backward) as one graph (BasicSettings.Compile)."""
        self.loss = torch.compile(self.loss, fullgraph=True, backend=backend)

    def loss(self, rollout: Imagination) -> tuple[torch.Tensor, dict]:
        """(total loss, detached figures). figures["agent/return_scale"] is the running return
        scale this loss normalised with; update() stores it if the step is taken."""
        cfg = self.cfg
        states = torch.cat([rollout.latents, rollout.hiddens], dim=-1)           # (B, H+1, S)
        dist = self.action_dist(states[:, :-1])
        log_prob, entropy = dist.log_prob(rollout.actions), dist.entropy()        # (B, H)
        critic_logits = self.critic(states)                                      # (B, H+1, bins)
        with torch.no_grad():
            values = self.value_codec.decode(critic_logits)
            slow_values = self.value_codec.decode(self.slow_critic(states))
            continues = 1.0 - rollout.terminations
            returns = lambda_returns(rollout.rewards, continues, values, cfg.Gamma, cfg.Lambda, cfg.StormCompat)
            if cfg.StormCompat:
                slow_target = lambda_returns(rollout.rewards, continues, slow_values, cfg.Gamma, cfg.Lambda, True)
            else:
                slow_target = slow_values[:, :-1]
            return_scale = self.return_normalizer.next_scale(returns)
            advantage = (returns - values[:, :-1]) / self.return_normalizer.divisor(return_scale)

        value_loss = self.value_codec.loss(critic_logits[:, :-1], returns).mean()
        slow_regularizer = self.value_codec.loss(critic_logits[:, :-1], slow_target).mean()
        policy_loss = -(log_prob * advantage).mean()
        entropy_mean = entropy.mean()
        total = policy_loss - self.entropy_coef * entropy_mean + value_loss + cfg.SlowCriticRegularizer * slow_regularizer
        metrics = {
            "agent/total_loss": total, "agent/policy_loss": policy_loss, "agent/value_loss": value_loss,
            "agent/slow_critic_loss": slow_regularizer, "agent/entropy": entropy_mean,
            # the running scale this update used; update() stores it if the step is taken
            "agent/return_scale": return_scale, "agent/lambda_return": returns.mean(),
            "agent/value": values.mean(), "agent/imagined_reward": rollout.rewards.mean(),
            "agent/imagined_termination": rollout.terminations.mean(),
        }
        return total, {k: v.detach().clone() for k, v in metrics.items()}

    def update(self, rollout: Imagination) -> tuple[dict, torch.Tensor]:
        """One Adam step on an imagined rollout, then the slow critic and the return scale move.
        A non-finite loss or gradient skips all three; `finite` (a 0-dim bool tensor) says
        whether the step was taken, decided on the device without a host sync."""
        with autocast_for(self.device, self.use_bf16):
            total, metrics = self.loss(rollout)
        grad_norm, finite = guarded_step(self.optimizer, total, self.cfg.MaxGradNorm)
        self.update_slow_critic(finite)
        self.return_normalizer.commit(metrics["agent/return_scale"], finite)
        metrics["agent/grad_norm"] = grad_norm
        return metrics, finite


def build_models(cfg, action_dim: int, discrete: bool, device: torch.device, bf16: bool):
    """The world model and the agent that learns in it, for an action space of `action_dim`."""
    world_model = WorldModel(cfg.Models, action_dim, discrete, bf16).to(device)
    state_dim = world_model.latent_dim + cfg.Models.WorldModel.TransformerHiddenDim
    agent = ActorCriticAgent(cfg.Models.Agent, state_dim, action_dim, discrete, bf16).to(device)
    return world_model, agent
