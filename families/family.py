"""What a model family is: the one object the entry points look up from a config.

A family (STORM / GIT-STORM, REM) declares here, in one place, its config schema and size
checks, how it builds its named modules, its acting rule, its training loop and what evaluation
compares with the config a checkpoint was trained with. train.py, eval.py, eval_video.py and the
tools find it with `families.family_of(cfg)` (from `BasicSettings.Family`) and never ask which
family it is.
"""
from dataclasses import dataclass
from typing import Callable

from omegaconf import DictConfig


@dataclass(frozen=True)
class ModelFamily:
    name: str                                   # the value of BasicSettings.Family
    schema: type                                # dataclass of the whole config (config.apply_schema)
    check_config: Callable[[DictConfig], None]  # size checks of a typed config; raises config.ConfigError
    # (cfg, action_dim, discrete, device, bf16) -> {name: module with its .optimizer}; the names
    # are the checkpoint's and weights file's entries
    build_models: Callable[..., dict]
    # (cfg, models, action_space, num_envs, evaluation) -> the acting rule: act(obs) -> actions,
    # end_episodes(ended), state_dict() / load_state_dict() of its memory
    make_actor: Callable[..., object]
    trainer: Callable[[DictConfig], object]     # cfg -> the training loop (a run_trainer.RunTrainer)
    # keys outside Models that shape how a trained model acts: eval.py warns where the given
    # config differs from a checkpoint's stored one in these
    acting_keys: tuple[str, ...]
    # whether eval_video.py's protocol applies: a world model with imagine() and decode() beside
    # an agent, as STORM's
    video_prediction: bool = False
