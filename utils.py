"""Helpers shared by train.py, eval.py and the replay buffer: device and precision, seeding
and RNG state, atomic checkpoint files, action-space sizes."""
import os
import random
import tempfile
from pathlib import Path

import gymnasium
import numpy as np
import torch


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"BasicSettings.Device={name!r}, but CUDA is not available on this machine; use auto or cpu")
    return device


def use_bf16(mixed_precision: str, device: torch.device) -> bool:
    if mixed_precision == "fp32":
        return False
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if mixed_precision == "bf16" and not supported:
        raise ValueError(f"BasicSettings.MixedPrecision=bf16 needs a CUDA GPU with bf16 support; device is {device}")
    return supported


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`:
    a process killed at any moment leaves either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)   # make the rename itself durable
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint_file(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise RuntimeError(f"cannot read checkpoint {path}: {error}") from error


def action_spec(space: gymnasium.Space) -> tuple[int, bool]:
    """(action_dim, discrete) of a single env's action space."""
    if isinstance(space, gymnasium.spaces.Discrete):
        return int(space.n), True
    if isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1:
        return int(space.shape[0]), False
    raise ValueError(f"unsupported action space {space}: expected Discrete or a 1-D Box")
