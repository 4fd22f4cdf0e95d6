"""Helpers shared by train.py, eval.py and the replay buffer: device and precision, host-to-GPU
copies, seeding and RNG state, atomic checkpoint files, action-space sizes."""
import os
import random
import sys
import tempfile
from contextlib import contextmanager
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


def to_device(x, device: torch.device) -> torch.Tensor:
    """A host array or tensor onto `device`. To a GPU it goes through pinned (page-locked) memory
    without blocking the host: a plain copy from pageable memory waits until the GPU has done all
    the work queued before it. `pin_memory` copies x into a block of torch's caching host
    allocator, which keeps the block until the copy is done, so x may be reused at once."""
    x = torch.as_tensor(x)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU of compute capability 8.0 or later
    (Ampere on). Older ones (V100 7.0, T4 7.5) emulate it, slower than fp32; asked of the run's
    own device, not the current one."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def use_bf16(mixed_precision: str, device: torch.device) -> bool:
    """BasicSettings.MixedPrecision: auto means bf16 autocast where the device has native bf16."""
    if mixed_precision == "fp32":
        return False
    supported = native_bf16(device)
    if mixed_precision == "bf16" and not supported:
        raise ValueError(f"BasicSettings.MixedPrecision=bf16 needs a CUDA GPU with native bf16 (compute "
                         f"capability 8.0 or later); device is {describe_device(device)}")
    return supported


def evaluation_bf16(mixed_precision: str, device: torch.device) -> bool:
    """The precision to evaluate a run in: its own where the device has it. A run trained with
    MixedPrecision=bf16 is evaluated in fp32 on a device without native bf16 (its weights are
    fp32 either way: autocast only computes in bf16), and a line on stderr says so."""
    if mixed_precision == "bf16" and not native_bf16(device):
        print(f"note: the run trained with bf16 autocast; {describe_device(device)} has no native bf16, "
              "so it is evaluated in fp32", file=sys.stderr)
        return False
    return use_bf16(mixed_precision, device)


def describe_device(device: torch.device) -> str:
    if device.type != "cuda":
        return str(device)
    major, minor = torch.cuda.get_device_capability(device)
    return f"{device} ({torch.cuda.get_device_name(device)}, compute capability {major}.{minor})"


def describe_precision(mixed_precision: str, device: torch.device, bf16: bool) -> str:
    """The precision a run computes in, for its first line."""
    if bf16:
        return "bf16 autocast"
    if mixed_precision == "auto" and device.type == "cuda":
        return "fp32 (MixedPrecision=auto and this GPU has no native bf16)"
    return "fp32"


@contextmanager
def full_fp32():
    """fp32 matmuls and convolutions computed in full fp32 inside, not in TF32 (which CUDA uses for
    convolutions by default, and for matmuls where set_float32_matmul_precision("high") is set);
    the settings in force before are restored after."""
    matmul, convolution = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = convolution


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
