"""How a trained model acts in a real environment; shared by training and evaluation.

The rule is the authors' (SPEC 5): keep the last `context_length` observations and
actions; the transformer runs over their posterior samples, and the policy acts on
[prior sample of the next latent, h] — the same kind of state it gets in imagination.
The current observation joins the history after acting, so the policy sees the
prior's prediction of it. With an empty history (first step) the action is random.

Each observation is encoded once, when it joins the history, and its posterior sample is
kept: re-encoding the whole history every step would cost `context_length` encoder passes
per env step for the same frames.
"""
from collections import deque

import gymnasium
import numpy as np
import torch


class EnvActor:
    def __init__(self, world_model, agent, action_space: gymnasium.Space, num_envs: int, context_length: int):
        self.world_model, self.agent, self.action_space = world_model, agent, action_space
        self.num_envs = num_envs
        self.latent_history: deque[torch.Tensor] = deque(maxlen=context_length)   # each (N, K, C) one-hot
        self.action_history: deque[torch.Tensor] = deque(maxlen=context_length)   # each (N,) or (N, A)

    def reset(self) -> None:
        self.latent_history.clear()
        self.action_history.clear()

    def random_actions(self) -> np.ndarray:
        return np.stack([self.action_space.sample() for _ in range(self.num_envs)])

    @torch.no_grad()
    def act(self, obs: np.ndarray, random: bool = False) -> np.ndarray:
        """obs (N, H, W, 3) uint8 -> actions for the N envs (sampled, not greedy)."""
        device = self.world_model.device
        if random or not self.latent_history:
            action = torch.as_tensor(self.random_actions(), device=device)
        else:
            z_next, h = self.world_model.act_state(torch.stack(list(self.latent_history), dim=1),
                                                   torch.stack(list(self.action_history), dim=1))
            action = self.agent.policy(z_next, h)
            if action.is_floating_point():   # continuous: the env executes the Normal draw clipped to [-1, 1]
                action = action.clamp(-1.0, 1.0)
        self.latent_history.append(self.world_model.encode_sample(torch.as_tensor(obs, device=device)))
        self.action_history.append(action)
        return action.cpu().numpy()
