"""REM's view of the replay buffer: episodes, and padded segments of them (REM_SPEC.md section 1,
"Replay and sampling").

REM stores each episode apart and samples a *start index* uniformly over every valid step of
every episode (so an episode weighs as much as it is long). Here the steps live in the
project's ReplayBuffer (one track per env, in time order); an episode ends at a stored
termination (life loss, game over or time limit: the REM loop stores all three) and also
where a resumed run restarted its envs (`mark_new_episode`), and the oldest stored step of a
track begins one. The episode still being played counts as ending at its newest stored step.

Three samplers, one per component:

    frames(B)                 V: B single frames, uniform over every stored step
    forward_segments(B, T)    M: start p with at least `min_real` real steps from p on in its
                              episode; steps p .. p+T-1, right padded past the episode's end
    backward_segments(B, T)   C: last step p with at least `min_real` real steps up to p in its
                              episode; steps p-T+1 .. p, left padded before its start

A segment comes with mask (B, T), True on real steps; padded steps hold zeros (REM pads
with zeros too). Randomness is torch's global CPU generator, as in ReplayBuffer, so a
checkpointed RNG state repeats the samples.
"""
import torch
from torch import Tensor

from replay_buffer import ReplayBuffer
from utils import to_device


class EpisodeSegments:
    def __init__(self, buffer: ReplayBuffer):
        self.buffer = buffer
        # Append counts at which every env began a new episode without a stored end (a resumed
        # run resets its envs); saved with the checkpoint.
        self.cuts: list[int] = []
        self._cache_key = None
        self._candidates: dict[tuple[str, int], Tensor] = {}

    def mark_new_episode(self) -> None:
        """The envs were reset without a stored end: the next appended step begins new episodes."""
        self.cuts.append(self.buffer.num_appended)

    # ------------------------------------------------------------------ episode index

    def _index(self) -> tuple[Tensor, Tensor, Tensor]:
        """(slots (n,), episode_start (E, n), episode_stop (E, n)) over the n stored positions of
        each track in time order: position p lives in slot slots[p]; its episode holds positions
        episode_start[e, p] .. episode_stop[e, p] - 1. Rebuilt only when the buffer has changed."""
        key = (self.buffer.num_appended, len(self.cuts))
        if key != self._cache_key:
            self._cached = self._build_index()
            self._cache_key = key
            self._candidates = {}
        return self._cached

    def _build_index(self):
        buf = self.buffer
        n, device = buf.filled, buf.termination.device
        if n == 0:
            raise ValueError("the replay buffer is empty: collect steps before sampling segments")
        oldest = buf.head if buf.num_appended > buf.track_capacity else 0
        positions = torch.arange(n, device=device)
        slots = (oldest + positions) % buf.track_capacity
        ends = buf.termination[:, slots] > 0                                    # (E, n)
        starts = torch.zeros_like(ends)
        starts[:, 0] = True
        starts[:, 1:] = ends[:, :-1]
        first_count = buf.num_appended - n                                      # append count of position 0
        for cut in self.cuts:
            if 0 <= cut - first_count < n:
                starts[:, cut - first_count] = True
        lasts = ends.clone()                                                    # last step of its episode
        lasts[:, :-1] |= starts[:, 1:]
        lasts[:, -1] = True
        zero = torch.zeros_like(positions)
        episode_start = torch.where(starts, positions, zero).cummax(dim=1).values
        stop_if_last = torch.where(lasts, positions + 1, torch.full_like(positions, n))
        episode_stop = stop_if_last.flip(1).cummin(dim=1).values.flip(1)
        return slots, episode_start, episode_stop

    # ------------------------------------------------------------------ samplers

    def frames(self, batch_size: int) -> Tensor:
        """batch_size frames (B, H, W, 3) uint8, uniform over every stored step of every env."""
        slots, episode_start, _ = self._index()
        envs, n = episode_start.shape
        flat = to_device(torch.randint(0, envs * n, (batch_size,)), slots.device)
        return self.buffer.to_device(self.buffer.obs[flat // n, slots[flat % n]])

    def forward_segments(self, batch_size: int, length: int, min_real: int):
        """World-model segments: (obs, action, reward, termination, mask), each (B, T, ...)."""
        slots, episode_start, episode_stop = self._index()
        env, first = self._draw("forward", min_real, batch_size)
        steps = first[:, None] + torch.arange(length, device=slots.device)       # (B, T)
        mask = steps < episode_stop[env, first][:, None]
        return self._gather(slots, env, steps, mask)

    def backward_segments(self, batch_size: int, length: int, min_real: int):
        """Controller segments ending at a sampled step: (obs, action, reward, termination, mask)."""
        slots, episode_start, _ = self._index()
        env, last = self._draw("backward", min_real, batch_size)
        steps = last[:, None] - length + 1 + torch.arange(length, device=slots.device)
        mask = steps >= episode_start[env, last][:, None]
        return self._gather(slots, env, steps, mask)

    def current_episodes(self, length: int):
        """The last `length` stored steps of each env's ongoing episode, left padded: what REM's
        collector burns the controller's LSTM in on. Rows whose newest stored step ended its
        episode (or that hold nothing yet) are all padding. (obs, action, reward, termination, mask)."""
        buf = self.buffer
        device = buf.termination.device
        env = torch.arange(buf.num_envs, device=device)
        if buf.filled == 0:      # nothing stored yet: every row is padding (read from slot 0)
            slots = torch.zeros(1, dtype=torch.long, device=device)
            mask = torch.zeros(buf.num_envs, length, dtype=torch.bool, device=device)
            return self._gather(slots, env, torch.zeros_like(mask, dtype=torch.long), mask)
        slots, episode_start, _ = self._index()
        steps = slots.shape[0] - length + torch.arange(length, device=device).expand(buf.num_envs, -1)
        ongoing = (buf.termination[:, slots[-1]] == 0) & (buf.num_appended not in self.cuts)
        mask = (steps >= episode_start[:, -1:]) & ongoing[:, None]
        return self._gather(slots, env, steps, mask)

    # ------------------------------------------------------------------ helpers

    def _candidates_for(self, direction: str, min_real: int) -> Tensor:
        """Flat indices env * n + position (count,) of the valid first steps ("forward": at least
        min_real real steps from there on in the episode) or last steps ("backward": at least
        min_real up to there). `nonzero` has a data-dependent size, so on a GPU it waits for the
        device: it runs once per buffer change, and the updates of an epoch reuse its result."""
        key = (direction, min_real)
        if key not in self._candidates:
            slots, episode_start, episode_stop = self._index()
            positions = torch.arange(slots.shape[0], device=slots.device)
            valid = (episode_stop - positions >= min_real if direction == "forward"
                     else positions - episode_start + 1 >= min_real)                  # (E, n)
            self._candidates[key] = valid.flatten().nonzero().squeeze(1)
        return self._candidates[key]

    def _draw(self, direction: str, min_real: int, batch_size: int) -> tuple[Tensor, Tensor]:
        """batch_size (env, position) pairs uniform over the valid steps of `_candidates_for`."""
        candidates = self._candidates_for(direction, min_real)
        if candidates.numel() == 0:
            requirement = "from its start" if direction == "forward" else "up to its end"
            raise ValueError(f"no stored episode has {min_real} steps {requirement} yet: collect more steps first")
        pick = candidates[to_device(torch.randint(0, candidates.numel(), (batch_size,)), candidates.device)]
        n = self.buffer.filled
        return pick // n, pick % n

    def _gather(self, slots: Tensor, env: Tensor, steps: Tensor, mask: Tensor):
        """Rows of env (B,) at positions steps (B, T); masked-out steps read as zeros."""
        buf = self.buffer
        safe = slots[steps.clamp(0, slots.shape[0] - 1)]                        # (B, T) slots
        rows = env[:, None]
        keep = mask.to(buf.obs.device)
        out = []
        for storage in (buf.obs, buf.action, buf.reward, buf.termination):
            values = storage[rows, safe]
            shape = keep.shape + (1,) * (values.dim() - 2)
            out.append(buf.to_device(values * keep.reshape(shape).to(values.dtype)))
        return (*out, to_device(mask, buf.device))
