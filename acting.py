"""How a trained model acts in a real environment; shared by training and evaluation.

`make_actor` picks the config's rule: EnvActor (STORM / GIT-STORM) or ControllerActor (REM).
Both map a batch of observations to actions (`act`) and are told which envs' episodes
ended after a step (`end_episodes`).

STORM / GIT-STORM: the rule is the authors' (SPEC 5): keep the last `context_length` observations and
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

from sub_models.rem.controller import sample_actions
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
        training sequences (eval.evaluate_checkpoint explains why)."""


class ControllerActor:
    """REM's acting rule (REM_SPEC.md section 5, "Acting"): the tokenizer's code map of the frame
    goes to the LSTM controller, whose action logits are sampled at `temperature`; with
    probability `epsilon` a uniform random action replaces the sample; the action is then fed to
    the LSTM. An env's LSTM state starts from zeros at the start of its episode, or from a
    burn-in over the episode's stored steps (REM's collector does this at every epoch)."""

    def __init__(self, tokenizer, controller, num_envs: int, temperature: float, epsilon: float):
        self.tokenizer, self.controller = tokenizer, controller
        self.temperature, self.epsilon = temperature, epsilon
        self.state = controller.initial_state(num_envs)

    def state_dict(self) -> dict:
        """The LSTM state, for a checkpoint that resumes the episodes in progress."""
        return {"lstm": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.state = tuple(part.to(self.tokenizer.device) for part in state["lstm"])

    @torch.no_grad()
    def burn_in(self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> None:
        """obs (N, T, H, W, 3) uint8, actions (N, T), mask (N, T): each env's latest stored steps."""
        codes = self.tokenizer.to_codes(self.tokenizer.tokenize(obs))
        self.state = self.controller.burn_in(codes, actions, mask)

    @torch.no_grad()
    def act(self, obs: np.ndarray, random: bool = False) -> np.ndarray:
        """obs (N, H, W, 3) uint8 -> actions (N,)."""
        frames = to_device(obs, self.tokenizer.device)
        codes = self.tokenizer.to_codes(self.tokenizer.tokenize(frames))
        logits, _, self.state = self.controller.observe(codes, self.state)
        action = sample_actions(logits, self.temperature, 1.0 if random else self.epsilon)
        self.state = self.controller.feed_action(action, self.state)
        return action.cpu().numpy()

    def end_episodes(self, ended: np.ndarray) -> None:
        """The envs in `ended` (N,) bool start new episodes: their LSTM state goes back to zeros."""
        if ended.any():
            keep = to_device(~ended, self.state[0].device)[:, None].to(self.state[0].dtype)
            self.state = tuple(part * keep for part in self.state)


def make_actor(cfg, models: dict, action_space: gymnasium.Space, num_envs: int, evaluation: bool):
    """The acting rule of the config's model family for `num_envs` envs; `models` as built by
    agents.build_run_models. REM samples at REMTrain.EvalTemperature without epsilon when
    evaluating, at CollectTemperature with CollectEpsilon when collecting."""
    if cfg.BasicSettings.model == "REM":
        train = cfg.REMTrain
        temperature, epsilon = ((train.EvalTemperature, 0.0) if evaluation
                                else (train.CollectTemperature, train.CollectEpsilon))
        return ControllerActor(models["tokenizer"], models["controller"], num_envs, temperature, epsilon)
    return EnvActor(models["world_model"], models["agent"], action_space, num_envs,
                    cfg.JointTrainAgent.RealityContextLength)
