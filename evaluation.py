"""Episode evaluation: a trained model plays test episodes with its family's acting rule.

eval.py (the command line, over saved checkpoints) and a family's training loop (REM evaluates
during training) both call `evaluate_checkpoint`.
"""
from typing import Callable

import numpy as np
import torch

from env_wrapper import make_vector_env
from utils import seed_everything

# Training seeds env i with Seed + step + i (step <= 500k even on DMC), so evaluation
# seeds start far above that range: evaluation episodes never replay training ones.
EVAL_SEED_OFFSET = 1_000_000



@torch.no_grad()
def evaluate_checkpoint(models: dict, cfg, make_actor: Callable, env_name: str, episodes: int, num_envs: int,
                        seed: int, max_steps: int | None = None,
                        on_episode_end: Callable[[float], None] | None = None) -> np.ndarray:
    """Play `episodes` episodes on `num_envs` parallel evaluation envs with the acting rule of
    the config's model family (`make_actor`, the family's ModelFamily.make_actor; `models` as
    built by its build_models); returns their returns.

    Each env plays a number of episodes fixed in advance (episodes / num_envs, the remainder
    spread over the first envs). Counting "the first `episodes` to finish" instead would
    favour short episodes. An env that has played its share keeps stepping (a vector env
    steps all envs together) but its further episodes are not counted.

    STORM / GIT-STORM's acting history (EnvActor) runs on across an env's episode boundary,
    exactly as in training: the world model was trained on replayed sequences that cross
    boundaries, and a per-env history reset would need a ragged batch. REM's controller starts
    each episode from a zero LSTM state, as REM does. Envs and the torch RNG are seeded with
    `seed`, so every checkpoint meets the same env randomness and a rerun repeats.

    `max_steps` caps an episode's length in agent steps; a capped episode counts with the
    return it had so far and its env starts a new episode.
    """
    if not 1 <= num_envs <= episodes:
        raise ValueError(f"num_envs={num_envs}: expected between 1 and episodes={episodes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps={max_steps}: expected a positive number of agent steps or None")
    seed_everything(seed)
    for module in models.values():
        module.eval()
    envs = make_vector_env(env_name, num_envs, seed, training=False, image_size=cfg.BasicSettings.ImageSize,
                           protocol=cfg.BasicSettings.AtariProtocol)
    try:
        actor = make_actor(cfg, models, envs.single_action_space, num_envs, evaluation=True)
        quota = np.full(num_envs, episodes // num_envs)
        quota[:episodes % num_envs] += 1
        played = np.zeros(num_envs, dtype=np.int64)
        episode_return = np.zeros(num_envs)
        episode_length = np.zeros(num_envs, dtype=np.int64)
        returns = []
        obs, _ = envs.reset()
        while (played < quota).any():
            obs, reward, terminated, truncated, _ = envs.step(actor.act(obs))
            episode_return += reward
            episode_length += 1
            finished = terminated | truncated           # game over, or the env's own time limit
            capped = ~finished & (episode_length >= (max_steps or np.inf))
            ended = finished | capped
            for i in np.flatnonzero(ended & (played < quota)):
                returns.append(episode_return[i])
                played[i] += 1
                if on_episode_end is not None:
                    on_episode_end(float(episode_return[i]))
            episode_return[ended] = 0.0
            episode_length[ended] = 0
            actor.end_episodes(ended)
            # The vector env resets an env by itself only when its episode finishes; an env
            # cut by max_steps that still owes episodes is restarted here.
            restart = capped & (played < quota)
            if restart.any():
                obs, _ = envs.reset(options={"reset_mask": restart})
    finally:
        envs.close()
    return np.asarray(returns, dtype=np.float64)
