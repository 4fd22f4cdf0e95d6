"""How REM acts in a real environment (REM_SPEC.md section 5, "Acting"); shared by collection
and evaluation."""
import numpy as np
import torch

from sub_models.rem.controller import sample_actions
from utils import to_device


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


def make_actor(cfg, models: dict, action_space, num_envs: int, evaluation: bool) -> ControllerActor:
    """The family's acting rule for `num_envs` envs (ModelFamily.make_actor): REM samples at
    REMTrain.EvalTemperature without epsilon when evaluating, at CollectTemperature with
    CollectEpsilon when collecting."""
    train = cfg.REMTrain
    temperature, epsilon = ((train.EvalTemperature, 0.0) if evaluation
                            else (train.CollectTemperature, train.CollectEpsilon))
    return ControllerActor(models["tokenizer"], models["controller"], num_envs, temperature, epsilon)
