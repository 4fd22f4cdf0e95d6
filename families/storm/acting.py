"""How STORM / GIT-STORM act in a real environment; shared by training and evaluation.

The rule is the authors' (SPEC 5): keep the last `context_length` observations and
actions; the transformer runs over their posterior samples, and the policy acts on
[prior sample of the next latent, h] — the same kind of state it gets in imagination.
The current observation joins the history after acting, so the policy sees the
prior's prediction of it. With an empty history (first step) the action is random.

Each observation is encoded once, when it joins the history, and its posterior sample is
kept: re-encoding the whole history every step would cost `context_length` encoder passes
per env step for the same frames.

Every family's acting rule maps a batch of observations to actions (`act`), is told which
envs' episodes ended after a step (`end_episodes`) and saves its memory (`state_dict`).
"""
from collections import deque

import gymnasium
import numpy as np
import torch

from utils import to_device


class EnvActor:
    def __init__(self, world_model, agent, action_space: gymnasium.Space, num_envs: int, context_length: int):
        self.world_model, self.agent, self.action_space = world_model, agent, action_space
        self.num_envs = num_envs
        self.latent_history: deque[torch.Tensor] = deque(maxlen=context_length)   # each (N, K, C) one-hot
        self.action_history: deque[torch.Tensor] = deque(maxlen=context_length)   # each (N,) or (N, A)

    def reset(self) -> None:
        self.latent_history.clear()
        self.action_history.clear()

    def state_dict(self) -> dict:
        """The history, for a checkpoint that resumes the episodes in progress."""
        return {"latents": list(self.latent_history), "actions": list(self.action_history)}

    def load_state_dict(self, state: dict) -> None:
        device = self.world_model.device
        self.reset()
        self.latent_history.extend(latent.to(device) for latent in state["latents"])
        self.action_history.extend(action.to(device) for action in state["actions"])

    def random_actions(self) -> np.ndarray:
        return np.stack([self.action_space.sample() for _ in range(self.num_envs)])

    @torch.no_grad()
    def act(self, obs: np.ndarray, random: bool = False) -> np.ndarray:
        """obs (N, H, W, 3) uint8 -> actions for the N envs (sampled, not greedy)."""
        device = self.world_model.device
        if random or not self.latent_history:
            action = to_device(self.random_actions(), device)
        else:
            z_next, h = self.world_model.act_state(torch.stack(list(self.latent_history), dim=1),
                                                   torch.stack(list(self.action_history), dim=1))
            action = self.agent.policy(z_next, h)
            if action.is_floating_point():   # continuous: the env executes the Normal draw clipped to [-1, 1]
                action = action.clamp(-1.0, 1.0)
        self.latent_history.append(self.world_model.encode_sample(to_device(obs, device)))
        self.action_history.append(action)
        return action.cpu().numpy()

    def end_episodes(self, ended: np.ndarray) -> None:
        """Nothing to reset: the history runs on across episode boundaries, as in the replayed
        training sequences (evaluation.evaluate_checkpoint explains why)."""


def make_actor(cfg, models: dict, action_space: gymnasium.Space, num_envs: int, evaluation: bool) -> EnvActor:
    """The family's acting rule for `num_envs` envs (ModelFamily.make_actor): the same in training
    and evaluation."""
    return EnvActor(models["world_model"], models["agent"], action_space, num_envs,
                    cfg.JointTrainAgent.RealityContextLength)
