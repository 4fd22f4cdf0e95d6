"""Tiny deterministic 64x64 RGB pixel games for the learning test (tests/test_learning.py).

Importing this module registers them with gymnasium, so the project builds them by name:

    make_env("gym/tests.pixel_games:PixelSide-v0", seed, training)

PixelSide-v0
    Every frame shows one red block, on the left or the right half of a black screen.
    Action 0 = "left", 1 = "right". The reward of a step is +1 if the action names the
    side the block is on in the frame it was taken on, else -1. The side alternates every
    step (L, R, L, R, ... or R, L, R, L, ...); the first side of an episode is drawn from
    the env's seeded generator. An episode is 16 steps and ends with truncated=True.

    Random policy: each step is +1 or -1 with probability 1/2, so the expected return is 0
    (standard deviation sqrt(16) = 4 per episode). Best policy: 16. A policy that cannot
    see the first frame of an episode (see below) still gets 15 + E[+-1] = 15 on average.

    Why alternating and not a fresh random side every step: the acting rule of STORM and
    GIT-STORM (SPEC 5, families/storm/acting.py) gives the policy the world model's *prior
    prediction* of the current frame, made from the frames before it; the current frame itself enters the
    history only after the action. A side that is drawn anew every step cannot be predicted
    from the past, so under that rule no agent can beat random on such a game (it is
    registered too, as PixelSideRandom-v0, to check exactly that). Here the side is
    predictable from the previous frame, yet unknown without looking at the pixels:
    every pixel-blind policy scores 0 in expectation, because the starting side is random.

Deterministic given the seed: reset(seed=s) then the same actions give the same frames
and rewards. numpy only.
"""
import gymnasium
import numpy as np

SIZE = 64
EPISODE_LENGTH = 16
BLOCK_COLOUR = (230, 40, 40)


def side_frame(side: int, size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8: black, with a red block filling most of the left (side 0)
    or right (side 1) half."""
    frame = np.zeros((size, size, 3), np.uint8)
    half, margin = size // 2, size // 8
    left = side * half + margin // 2
    frame[margin:size - margin, left:left + half - margin] = BLOCK_COLOUR
    return frame


class PixelSideEnv(gymnasium.Env):
    metadata = {"render_modes": []}

    def __init__(self, pattern: str = "alternate", size: int = SIZE, episode_length: int = EPISODE_LENGTH):
        if pattern not in ("alternate", "random"):
            raise ValueError(f"pattern must be 'alternate' or 'random', got {pattern!r}")
        self.pattern, self.size, self.episode_length = pattern, size, episode_length
        self.observation_space = gymnasium.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(2)
        self._frames = (side_frame(0, size), side_frame(1, size))
        self._side = None
        self._steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._side = int(self.np_random.integers(2))
        self._steps = 0
        return self._frames[self._side].copy(), {}

    def step(self, action):
        if self._side is None:
            raise RuntimeError("PixelSide: call reset() before step()")
        reward = 1.0 if int(action) == self._side else -1.0
        self._steps += 1
        if self.pattern == "alternate":
            self._side = 1 - self._side
        else:
            self._side = int(self.np_random.integers(2))
        truncated = self._steps >= self.episode_length
        return self._frames[self._side].copy(), reward, False, truncated, {}


def _register(env_id: str, **kwargs) -> None:
    if env_id not in gymnasium.registry:
        gymnasium.register(id=env_id, entry_point=PixelSideEnv, kwargs=kwargs)


_register("PixelSide-v0", pattern="alternate")
_register("PixelSideRandom-v0", pattern="random")
