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


def use_compile(setting: bool | None, device: torch.device) -> bool:
    """BasicSettings.Compile: None means on for CUDA (where launch overhead dominates), off for CPU."""
    return device.type == "cuda" if setting is None else bool(setting)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """The generators a run draws from: Python's, numpy's, torch's CPU one and, on a CUDA
    device, that device's only (a run saved with 8 GPUs visible resumes with 1)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):
        # written before the fix: one state per GPU then visible; the run drew from its own
        # device's (the first, unless the run named another), which a requeue may have fewer of
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else cuda[0]
    torch.cuda.set_rng_state(cuda, device)


def use_deterministic(deterministic: bool, device: torch.device) -> None:
    """BasicSettings.Deterministic: torch's deterministic kernels, and on CUDA the cuBLAS
    workspace setting they need (it must be in the environment before cuBLAS starts)."""
    if not deterministic:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)   # an op without a deterministic kernel warns, naming itself
    torch.backends.cudnn.benchmark = False


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`:
    a process killed at any moment leaves either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())   # mkstemp's 0600 would hide the run from a shared project folder
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


def new_file_mode() -> int:
    """The permissions open() gives a new file under this process' umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
