"""Uniform replay buffer of real environment steps for world-model training.

Layout
------
Every vectorised env step appends one transition per env. Env `e` owns its own *track*:
a ring buffer of `track_capacity = capacity // num_envs` slots, preallocated as

    obs          (num_envs, track_capacity, H, W, C)    uint8
    action       (num_envs, track_capacity, *action_shape)  action_dtype
    reward       (num_envs, track_capacity)              float32
    termination  (num_envs, track_capacity)              float32

Slot `t` of a track holds (o_t, a_t, r_t, d_t): the observation the action was taken on,
the action, and the reward / termination that action produced. All tracks advance
together, so they share one *write head* (`num_appended % track_capacity`, the slot the
next step goes to). Once a track has wrapped, the slot at the write head is its oldest
step and the slot just before it its newest; memory never grows past the preallocation.

A sample is `batch_size` sequences of `length` consecutive steps, each from one track.
Starts are drawn uniformly over every (track, start) pair whose sequence lies entirely in
the stored data in chronological order, so a sequence never runs across the write head
(it never joins the newest stored step to the oldest one).
Randomness comes from torch's global CPU generator, so checkpointing torch's RNG state
makes sampling reproducible, whatever device the buffer lives on.

Storage lives in CPU memory (default) or on the training device (`store_on_device=True`,
which makes sampling a pure on-device gather). Whatever crosses from the host to a GPU (the
appended steps, the sampled indices, batches gathered in CPU storage) goes through pinned
memory without blocking (utils.to_device), so neither appending nor sampling waits for the
updates the GPU is still running.

`save(path)` / `load(path)` write and read the filled part of the buffer atomically so a
run can resume without refilling it; `load` is an instance method that fills an already
constructed buffer and checks that its configuration matches the file.
"""
import os

import torch
from torch import Tensor

from utils import atomic_torch_save, to_device


class ReplayBuffer:
    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        action_dtype: torch.dtype,
        num_envs: int,
        capacity: int,
        warmup_steps: int,
        device: str | torch.device = "cpu",
        store_on_device: bool = False,
    ):
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if not isinstance(capacity, int) or capacity < num_envs:
            raise ValueError(
                f"capacity must be an int >= num_envs ({num_envs}) so every env track has at least "
                f"one slot, got {capacity!r}"
            )
        if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < capacity:
            raise ValueError(
                f"warmup_steps must be an int in [0, capacity={capacity}) or the buffer could never "
                f"become ready, got {warmup_steps!r}"
            )
        if not isinstance(action_dtype, torch.dtype):
            raise TypeError(f"action_dtype must be a torch.dtype, got {action_dtype!r}")

        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.action_shape = tuple(int(s) for s in action_shape)
        self.action_dtype = action_dtype
        self.num_envs = num_envs
        self.capacity = capacity
        self.track_capacity = capacity // num_envs
        self.warmup_steps = warmup_steps
        self.device = torch.device(device)
        self.store_on_device = store_on_device
        # Vector steps appended since creation; it alone determines the write head and fill.
        self.num_appended = 0

        storage_device = self.device if store_on_device else torch.device("cpu")
        E, L = num_envs, self.track_capacity
        self.obs = torch.zeros((E, L, *self.obs_shape), dtype=torch.uint8, device=storage_device)
        self.action = torch.zeros((E, L, *self.action_shape), dtype=action_dtype, device=storage_device)
        self.reward = torch.zeros((E, L), dtype=torch.float32, device=storage_device)
        self.termination = torch.zeros((E, L), dtype=torch.float32, device=storage_device)

    # ------------------------------------------------------------------ filling

    @property
    def filled(self) -> int:
        """Steps stored per track."""
        return min(self.num_appended, self.track_capacity)

    @property
    def head(self) -> int:
        """Slot the next step is written to (the oldest step once the tracks have wrapped)."""
        return self.num_appended % self.track_capacity

    def __len__(self) -> int:
        return self.filled * self.num_envs

    def ready(self) -> bool:
        return len(self) > self.warmup_steps

    def append(self, obs, action, reward, termination) -> None:
        """Store one vector step: obs (N, H, W, C) uint8, action (N, *action_shape), reward (N,), termination (N,)."""
        N = self.num_envs
        obs = self._check("obs", obs, (N, *self.obs_shape))
        if obs.dtype != torch.uint8:
            raise TypeError(f"obs must be uint8 pixels, got dtype {obs.dtype}")
        action = self._check("action", action, (N, *self.action_shape))
        if action.is_floating_point() and not self.action_dtype.is_floating_point:
            # Casting would silently truncate; a float here means the caller passed the wrong thing.
            raise TypeError(f"action must be integer indices for action_dtype {self.action_dtype}, got {action.dtype}")
        reward = self._check("reward", reward, (N,))
        termination = self._check("termination", termination, (N,))

        # copy_ casts to the storage dtype (e.g. bool termination -> float32).
        t, storage_device = self.head, self.obs.device
        self.obs[:, t].copy_(to_device(obs, storage_device))
        self.action[:, t].copy_(to_device(action, storage_device))
        self.reward[:, t].copy_(to_device(reward, storage_device))
        self.termination[:, t].copy_(to_device(termination, storage_device))
        self.num_appended += 1

    @staticmethod
    def _check(name: str, value, shape: tuple[int, ...]) -> Tensor:
        tensor = torch.as_tensor(value)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
        return tensor

    # ------------------------------------------------------------------ sampling

    def sample(self, batch_size: int, length: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Uniformly sample `batch_size` sequences of `length` consecutive steps of one env each.

        Returns obs (B, T, H, W, C) uint8, action (B, T, *action_shape), reward (B, T) float32,
        termination (B, T) float32, all on `device`.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        if length > self.track_capacity:
            raise ValueError(
                f"length {length} exceeds the per-env track capacity {self.track_capacity} "
                f"(capacity {self.capacity} // num_envs {self.num_envs}); such a sequence can never be sampled"
            )
        if self.filled < length:
            raise ValueError(
                f"cannot sample sequences of length {length}: each env track holds only {self.filled} steps so far"
            )

        # Every track holds the same number of steps, so drawing a flat index over all
        # (track, start) pairs is uniform over valid starts and weights tracks equally.
        starts_per_track = self.filled - length + 1
        flat = torch.randint(0, self.num_envs * starts_per_track, (batch_size,))
        env = flat // starts_per_track                                          # (B,)
        offset = flat % starts_per_track                                        # (B,) steps after the oldest
        oldest = self.head if self.num_appended > self.track_capacity else 0
        # Walking forward from the oldest step in time order can never pass the write head.
        slot = (oldest + offset[:, None] + torch.arange(length)) % self.track_capacity  # (B, T)

        storage_device = self.obs.device
        env = to_device(env[:, None], storage_device)                           # (B, 1), broadcasts over T
        slot = to_device(slot, storage_device)
        batch = (self.obs[env, slot], self.action[env, slot], self.reward[env, slot], self.termination[env, slot])
        return tuple(self.to_device(x) for x in batch)

    def to_device(self, x: Tensor) -> Tensor:
        """A tensor gathered from the storage onto the training device."""
        return to_device(x, self.device)

    # ------------------------------------------------------------------ persistence

    def _config(self) -> dict:
        return {
            "obs_shape": self.obs_shape,
            "action_shape": self.action_shape,
            "action_dtype": str(self.action_dtype),
            "num_envs": self.num_envs,
            "capacity": self.capacity,
        }

    def state_dict(self) -> dict:
        """Configuration, fill counter and the filled slots only (CPU tensors, physical slot order)."""
        n = self.filled
        return {
            **self._config(),
            "num_appended": self.num_appended,
            "obs": self.obs[:, :n].cpu().clone(),
            "action": self.action[:, :n].cpu().clone(),
            "reward": self.reward[:, :n].cpu().clone(),
            "termination": self.termination[:, :n].cpu().clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        for field, expected in self._config().items():
            if field not in state:
                raise ValueError(f"replay buffer state is missing field {field!r}")
            found = state[field]
            if isinstance(found, list):
                found = tuple(found)
            if found != expected:
                raise ValueError(f"replay buffer state mismatch in {field}: buffer has {expected!r}, state has {found!r}")
        if "num_appended" not in state:
            raise ValueError("replay buffer state is missing field 'num_appended'")
        num_appended = int(state["num_appended"])
        n = min(num_appended, self.track_capacity)
        for field in ("obs", "action", "reward", "termination"):
            if field not in state:
                raise ValueError(f"replay buffer state is missing field {field!r}")
            storage, found = getattr(self, field), state[field]
            expected_shape = (self.num_envs, n, *storage.shape[2:])
            if tuple(found.shape) != expected_shape or found.dtype != storage.dtype:
                raise ValueError(
                    f"replay buffer state mismatch in {field}: expected shape {expected_shape} dtype {storage.dtype}, "
                    f"found shape {tuple(found.shape)} dtype {found.dtype}"
                )
        for field in ("obs", "action", "reward", "termination"):
            getattr(self, field)[:, :n].copy_(state[field])
        self.num_appended = num_appended

    def file_bytes(self, full: bool = False) -> int:
        """About the size of the file `save` writes: now, or once every slot is filled."""
        steps = self.track_capacity if full else self.filled
        per_step = sum(x[0, 0].numel() * x.element_size() for x in (self.obs, self.action, self.reward, self.termination))
        return self.num_envs * steps * per_step

    def save(self, path) -> None:
        """Write the buffer to `path` atomically: a killed process leaves the old file or the new one, never half of one."""
        atomic_torch_save(self.state_dict(), path)

    def load(self, path) -> None:
        """Fill this buffer from a file written by `save`; its configuration must match this buffer's."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"replay buffer file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RuntimeError(f"could not read replay buffer file {path} (corrupt or not a replay buffer): {e}") from e
        if not isinstance(state, dict):
            raise RuntimeError(f"replay buffer file {path} holds a {type(state).__name__}, expected a dict")
        try:
            self.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
