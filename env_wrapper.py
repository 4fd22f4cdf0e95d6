"""Atari 100k and DeepMind Control Suite environments behind one interface.

Every environment of the project is built here, by `make_env` (one env) or
`make_vector_env` (N envs stepped together). Both benchmarks look the same to the
agent: observations are uint8 RGB images of shape (image_size, image_size, 3) and
`step` returns the gymnasium 5-tuple (obs, reward, terminated, truncated, info).

Environment names
    "ALE/<Game>-v5"        any game ale_py registers, e.g. "ALE/Boxing-v5",
                           "ALE/MsPacman-v5"; the 26 of Atari 100k: ATARI_100K_GAMES.
    "dmc/<domain>_<task>"  any dm_control suite task but lqr, named with dm_control's
                           own domain and task names joined by "_", e.g.
                           "dmc/cartpole_balance", "dmc/cartpole_balance_sparse",
                           "dmc/ball_in_cup_catch" (the paper's "Cup Catch"); the
                           20 of the paper's Table 6: DMC_TASKS.
    "gym/<module>:<EnvId>" any gymnasium env that importing <module> registers, e.g.
                           "gym/tests.pixel_games:PixelSide-v0" (the tiny pixel game
                           of the learning test); see "Other gymnasium envs" below.

Atari, protocol "storm" (the default; SPEC section 3): ALE v5 with frameskip=1
underneath (sticky actions p=0.25, episodes truncated at 108k frames), then action
repeat 4 with rewards summed (the last step's reward included), the elementwise max
of the last two frames, and a resize of that max to image_size x image_size RGB with
cv2.INTER_AREA. No grayscale, frame stack, reward clipping or noop/fire reset.

Atari, protocol "iris" (REM's and IRIS's, ../shared/REM_SPEC.md section 2): the names
stay "ALE/<Game>-v5", but the ALE env underneath has the settings of
<Game>NoFrameskip-v4 (no sticky actions, minimal action set, frameskip 1), built
from the v5 id because many games have no v4 id. Every raw frame is resized to
image_size RGB with PIL's BILINEAR filter *before* the max of the last two frames
(REM resizes the per-frame env). Episodes are truncated (truncated=True) at 20,000
frames in a training env and 108,000 in an evaluation env, no-op frames included.
Each reset is followed by no-ops (action 0), 1 to 30 drawn uniformly in a training
env and exactly 1 in an evaluation env, from the ALE env's own seeded generator;
their rewards are dropped and the observation after reset is the last no-op's frame.
Action repeat 4, reward sum and life loss as for "storm". REM's EpisodicLifeEnv,
which takes one extra no-op step after a life loss instead of a reset, is not
reproduced (docs/deviations.md).

Both protocols: a training env (training=True) reports a lost life in
info["life_loss"] and carries on: the episode ends only at game over (or the frame
cap), so the training loop uses life_loss | terminated as the world model's
termination target. An evaluation env never reports life loss. The protocol applies
to Atari only: the other families have one protocol, and "iris" raises for them.

DMC: dm_control suite rendered by MuJoCo from camera 0 (quadruped: camera 2),
action repeat 2 with rewards summed, actions in Box(-1, 1) rescaled to the task's
bounds. An episode is 1000 physics control steps = 500 agent steps and ends with
truncated=True (a time limit, not a terminal state). MUJOCO_GL defaults to "egl"
when no display is set, which also works without a GPU.

Other gymnasium envs ("gym/" family, for tests and small experiments): built by
gymnasium.make("<module>:<EnvId>"), which imports <module> so that it registers the env.
Its observation space must already be Box(0, 255, (image_size, image_size, 3), uint8)
(nothing is resized or repeated); info["life_loss"] is always False, and it gets the
same seeding rule and episode statistics as the other families.

Seeding: an env built with seed s uses it at its first reset only, so later
episodes differ from each other while the same seed repeats the same run; env i
of a vector env gets seed + i. A reset(seed=...) given explicitly reseeds.

Saved state: `vector_env_state` captures where a training vector env stands (each game's
own state, its generators, the episode statistics so far) so that a checkpoint resumes the
episodes in progress bit for bit, and `set_vector_env_state` puts it back into envs built
with the same settings and reset once. Atari saves ALE's emulator state with its RNG (the
sticky actions), the action a sticky frame repeats and the no-op generator; DMC, MuJoCo's
integration state, the model arrays the task changed and the task's generator; "gym/" envs,
their attributes where they pickle (else None: the caller falls back to a reseeded reset).

info keys of a single env
    "life_loss"  bool, on every step and reset (always False for DMC and evaluation).
    "episode"    on the step an episode ends only: {"r": return, "l": length in
                 agent steps, "t": seconds}, from gymnasium's RecordEpisodeStatistics.
                 The return is the whole game's (life loss does not end it) and
                 counts the final step's reward.
    Atari also passes on ALE's "lives", "episode_frame_number" and "frame_number".

Vector envs use autoreset_mode=SAME_STEP: on a step where env i finished, obs[i]
is already the first observation of its next episode and
    infos["final_obs"][i]                the last observation of the finished episode
    infos["final_info"]                  that step's info, batched like infos, so
    infos["final_info"]["episode"]["r"][i], ["l"][i]   the finished episode's return
                                         and length, valid where
    infos["final_info"]["_episode"][i]   is True.
    infos["life_loss"]                   bool array of shape (N,); for an env that
                                         just reset it is the reset's False, the
                                         final step's value is in infos["final_info"].
"""

import difflib
import functools
import os
import pickle

import ale_py
import cv2
import gymnasium
import numpy as np
from PIL import Image

gymnasium.register_envs(ale_py)

ATARI_100K_GAMES = (
    "Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing",
    "Breakout", "ChopperCommand", "CrazyClimber", "DemonAttack", "Freeway",
    "Frostbite", "Gopher", "Hero", "Jamesbond", "Kangaroo", "Krull", "KungFuMaster",
    "MsPacman", "Pong", "PrivateEye", "Qbert", "RoadRunner", "Seaquest", "UpNDown",
)

DMC_TASKS = (
    "acrobot_swingup", "cartpole_balance", "cartpole_balance_sparse",
    "cartpole_swingup", "cartpole_swingup_sparse", "cheetah_run", "ball_in_cup_catch",
    "finger_spin", "finger_turn_easy", "finger_turn_hard", "hopper_hop", "hopper_stand",
    "pendulum_swingup", "quadruped_run", "quadruped_walk", "reacher_easy",
    "reacher_hard", "walker_run", "walker_stand", "walker_walk",
)

ATARI_ACTION_REPEAT = 4
DMC_ACTION_REPEAT = 2
STICKY_ACTION_PROBABILITY = 0.25  # ALE v5's default (Machado et al., 2018)

ATARI_PROTOCOLS = ("storm", "iris")
ATARI_FRAME_CAP = 108_000         # frames per episode: ALE v5's default and REM's evaluation cap
IRIS_TRAINING_FRAME_CAP = 20_000  # REM's TimeLimit(20000) on the per-frame training env
IRIS_TRAINING_MAX_NOOPS = 30      # REM's noop_max: 1 to 30 no-ops after each training reset
IRIS_EVALUATION_MAX_NOOPS = 1     # REM's test env: integers(1, 2), i.e. exactly 1 no-op
NOOP_ACTION = 0                   # the first action of every minimal action set is NOOP
STICKY_MEMORY_FILL_FRAMES = 25    # 0.25 ** 25 < 1e-15: the chance ALE still holds another action


def is_dmc(env_name: str) -> bool:
    return isinstance(env_name, str) and env_name.startswith("dmc/")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _unknown_name_error(kind, env_name, valid_names):
    close = difflib.get_close_matches(env_name, valid_names, n=5)
    hint = f"closest valid names: {', '.join(close)}" if close else "no close match"
    return ValueError(f"unknown {kind} {env_name!r}; {hint}")


def _resize_cv2_area(frame, image_size):
    return cv2.resize(frame, (image_size, image_size), interpolation=cv2.INTER_AREA)


def _resize_pil_bilinear(frame, image_size):
    return np.asarray(Image.fromarray(frame).resize((image_size, image_size), Image.BILINEAR))


class AtariPreprocessing(gymnasium.Wrapper):
    """Action repeat, max of the last two frames, resize, no-op starts, life-loss flag, seed once."""

    def __init__(self, env, image_size, training, seed, protocol):
        super().__init__(env)
        self.image_size = image_size
        self.training = training
        self.observation_space = gymnasium.spaces.Box(
            0, 255, (image_size, image_size, 3), np.uint8
        )
        iris = protocol == "iris"
        # REM resizes every raw frame and takes the max of the resized frames; STORM
        # takes the max of the raw frames and resizes that.
        self._resize_before_max = iris
        self._resize = _resize_pil_bilinear if iris else _resize_cv2_area
        # 0: no no-op starts (storm)
        self._max_noops = (IRIS_TRAINING_MAX_NOOPS if training else IRIS_EVALUATION_MAX_NOOPS) if iris else 0
        self._first_reset_seed = seed
        self._lives = 0
        self._previous_frame = None
        self._frame = None
        self._last_action = None

    def _observation(self):
        # The max over two consecutive frames removes the flicker of Atari sprites
        # that are drawn only on every other frame. Under iris only these two frames
        # are resized: the same result as REM's resizing of all four, at half the cost.
        if self._resize_before_max:
            return np.maximum(self._resize(self._previous_frame, self.image_size),
                              self._resize(self._frame, self.image_size))
        return self._resize(np.maximum(self._previous_frame, self._frame), self.image_size)

    def _noop_start(self, frame, info, options):
        """REM's NoopResetEnv: a random number of no-op frames after the reset."""
        # The ALE env's generator was seeded by the first reset, so a seed repeats its
        # no-op counts while later episodes draw new ones.
        num_noops = self.env.unwrapped.np_random.integers(1, self._max_noops + 1)
        for _ in range(num_noops):
            frame, _, terminated, truncated, info = self.env.step(NOOP_ACTION)
            if terminated or truncated:
                frame, info = self.env.reset(options=options)
        return frame, info

    def reset(self, *, seed=None, options=None):
        # Reseeding at every reset would replay the same sticky-action draws (and no-op
        # counts) in every episode (a bug of the authors' wrapper): seed only at the first reset.
        seed = self._first_reset_seed if seed is None else seed
        self._first_reset_seed = None
        frame, info = self.env.reset(seed=seed, options=options)
        if self._max_noops:
            frame, info = self._noop_start(frame, info, options)
        self._previous_frame = self._frame = frame
        self._last_action = NOOP_ACTION   # ALE's reset forgets the last action
        self._lives = info["lives"]
        info["life_loss"] = False
        return self._observation(), info

    def step(self, action):
        self._last_action = action
        total_reward = 0.0
        for _ in range(ATARI_ACTION_REPEAT):
            frame, reward, terminated, truncated, info = self.env.step(action)
            self._previous_frame, self._frame = self._frame, frame
            total_reward += float(reward)
            if terminated or truncated:
                break
        lives = info["lives"]
        info["life_loss"] = bool(self.training and lives < self._lives)
        self._lives = lives
        return self._observation(), total_reward, terminated, truncated, info

    def get_state(self) -> dict:
        """ALE's emulator state with its RNG (sticky actions), the no-op generator, the last
        two frames, the lives, and the last action (see set_state)."""
        frames = tuple(None if frame is None else frame.copy() for frame in (self._previous_frame, self._frame))
        return {"ale": self.env.unwrapped.ale.cloneState(include_rng=True), "last_action": self._last_action,
                "np_random": self.env.unwrapped.np_random.bit_generator.state, "frames": frames, "lives": self._lives}

    def set_state(self, state: dict) -> None:
        ale = self.env.unwrapped.ale
        if state["last_action"] is not None and ale.getFloat("repeat_action_probability") > 0:
            # ALE's state leaves out the action a sticky frame repeats (the last one executed):
            # act the last action given until ALE has surely taken it (each frame takes it with
            # probability 1 - p), then restore the emulator and RNG over those frames. Exact
            # unless all 4 frames of the step before the save repeated an older action (p ** 4).
            for _ in range(STICKY_MEMORY_FILL_FRAMES):
                self.env.unwrapped.step(state["last_action"])
        ale.restoreState(state["ale"])
        self.env.unwrapped.np_random.bit_generator.state = state["np_random"]
        (self._previous_frame, self._frame), self._lives = state["frames"], state["lives"]
        self._last_action = state["last_action"]


def _dm_control_suite():
    """dm_control's suite, imported on first use so that Atari runs never load it."""
    # MuJoCo picks its OpenGL backend when dm_control is first imported; EGL renders
    # headless (also on CPU-only machines), while a display allows the default GLFW.
    if "DISPLAY" not in os.environ:
        os.environ.setdefault("MUJOCO_GL", "egl")
    from dm_control import suite

    return suite


class DMCEnv(gymnasium.Env):
    """A dm_control suite task as a gymnasium env with image observations."""

    metadata = {"render_modes": []}

    def __init__(self, domain, task, seed, image_size):
        self.domain, self.task, self.image_size = domain, task, image_size
        self._camera_id = 2 if domain == "quadruped" else 0
        self._env = self._load(seed)
        spec = self._env.action_spec()
        # The agent acts in [-1, 1]; the task's own bounds may differ per dimension.
        self._action_low = np.broadcast_to(spec.minimum, spec.shape).astype(np.float64)
        self._action_high = np.broadcast_to(spec.maximum, spec.shape).astype(np.float64)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        self.observation_space = gymnasium.spaces.Box(
            0, 255, (image_size, image_size, 3), np.uint8
        )
        self._needs_reset = True

    def _load(self, seed):
        # The task draws every episode's initial state from this generator, so
        # seeding it once gives a reproducible run of distinct episodes.
        env = _dm_control_suite().load(self.domain, self.task, task_kwargs={"random": seed})
        self._loaded_model = {name: array.copy() for name, array in _model_arrays(env.physics)}   # for get_state
        return env

    def _render(self):
        return self._env.physics.render(
            height=self.image_size, width=self.image_size, camera_id=self._camera_id
        )

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.close()
            self._env = self._load(seed)
        self._env.reset()
        self._needs_reset = False
        return self._render(), {"life_loss": False}

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError(f"dmc/{self.domain}_{self.task}: call reset() before step() "
                               "and after an episode ends")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, "
                             f"got {action.shape}")
        action = np.clip(action, -1.0, 1.0)
        action = self._action_low + (action + 1.0) * (self._action_high - self._action_low) / 2
        total_reward = 0.0
        for _ in range(DMC_ACTION_REPEAT):
            time_step = self._env.step(action)
            total_reward += time_step.reward
            if time_step.last():
                break
        # dm_env marks a true terminal state with discount 0; the time limit keeps 1.
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = bool(time_step.last() and not terminated)
        self._needs_reset = terminated or truncated
        return self._render(), float(total_reward), terminated, truncated, {"life_loss": False}

    def close(self):
        self._env.close()

    def get_state(self) -> dict:
        """MuJoCo's integration state (time, qpos, qvel, act, warm start, controls, applied
        forces, mocap), the model arrays the task changed since loading (e.g. reacher's target),
        the task's generator and dm_control's step counter."""
        import mujoco

        physics = self._env.physics
        kind = mujoco.mjtState.mjSTATE_INTEGRATION
        integration = np.empty(mujoco.mj_stateSize(physics.model.ptr, kind))
        mujoco.mj_getState(physics.model.ptr, physics.data.ptr, integration, kind)
        changed = {name: array.copy() for name, array in _model_arrays(physics)
                   if not np.array_equal(array, self._loaded_model[name])}
        return {"integration": integration, "model": changed, "random": self._env.task.random.get_state(),
                "steps": (self._env._step_count, self._env._reset_next_step), "needs_reset": self._needs_reset}

    def set_state(self, state: dict) -> None:
        import mujoco

        physics = self._env.physics
        for name, array in state["model"].items():
            getattr(physics.model.ptr, name)[...] = array
        mujoco.mj_setState(physics.model.ptr, physics.data.ptr, state["integration"], mujoco.mjtState.mjSTATE_INTEGRATION)
        physics.forward()   # positions and everything derived from the state, as after a step
        self._env.task.random.set_state(state["random"])
        (self._env._step_count, self._env._reset_next_step), self._needs_reset = state["steps"], state["needs_reset"]


def _model_arrays(physics):
    """(name, array) of every array field of a dm_control physics' MuJoCo model."""
    model = physics.model.ptr
    for name in dir(model):
        if not name.startswith("_"):
            value = getattr(model, name)
            if isinstance(value, np.ndarray):
                yield name, value


def _make_atari(env_name, seed, training, image_size, repeat_action_probability, protocol):
    valid_names = sorted(
        env_id for env_id in gymnasium.registry
        if env_id.startswith("ALE/") and env_id.endswith("-v5")
    )
    if env_name not in valid_names:
        raise _unknown_name_error("Atari game", env_name, valid_names)
    iris = protocol == "iris"
    if repeat_action_probability is None:
        repeat_action_probability = 0.0 if iris else STICKY_ACTION_PROBABILITY
    env = gymnasium.make(
        env_name,
        frameskip=1,
        full_action_space=False,
        repeat_action_probability=repeat_action_probability,
        max_num_frames_per_episode=IRIS_TRAINING_FRAME_CAP if iris and training else ATARI_FRAME_CAP,
    )
    return AtariPreprocessing(env, image_size, training, seed, protocol)


def _make_dmc(env_name, seed, image_size):
    suite = _dm_control_suite()
    # Domain names contain underscores too ("ball_in_cup"), so match whole names.
    # lqr is left out: its actions are unbounded and its episodes never end.
    tasks = {
        f"dmc/{domain}_{task}": (domain, task)
        for domain, task in suite.ALL_TASKS if domain != "lqr"
    }
    if env_name not in tasks:
        raise _unknown_name_error("DMC task", env_name, sorted(tasks))
    domain, task = tasks[env_name]
    return DMCEnv(domain, task, seed, image_size)


# ---------------------------------------------------------------- "gym/<module>:<EnvId>" family
GYM_PREFIX = "gym/"


def is_gym_module_env(env_name: str) -> bool:
    return isinstance(env_name, str) and env_name.startswith(GYM_PREFIX)


class GymModuleEnv(gymnasium.Wrapper):
    """Seeds at the first reset only and reports info["life_loss"] = False on every step."""

    def __init__(self, env, seed):
        super().__init__(env)
        self._first_reset_seed = seed

    def reset(self, *, seed=None, options=None):
        seed = self._first_reset_seed if seed is None else seed
        self._first_reset_seed = None
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, "life_loss": False}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "life_loss": False}

    def get_state(self) -> bytes | None:
        """The inner env's attributes (its generator included) pickled, spaces left out (their
        generators are saved by env_state, in place); None where they do not pickle."""
        attributes = {key: value for key, value in vars(self.env.unwrapped).items()
                      if not isinstance(value, gymnasium.Space) and key != "spec"}
        try:
            return pickle.dumps(attributes)
        except (pickle.PicklingError, TypeError, AttributeError):
            return None

    def set_state(self, state: bytes) -> None:
        vars(self.env.unwrapped).update(pickle.loads(state))


def _make_gym_module_env(env_name, seed, image_size):
    spec = env_name[len(GYM_PREFIX):]
    module, colon, env_id = spec.partition(":")
    if not colon or not module or not env_id or ":" in env_id:
        raise ValueError(f"environment {env_name!r}: expected 'gym/<module>:<EnvId>', "
                         "e.g. 'gym/tests.pixel_games:PixelSide-v0'")
    try:
        env = gymnasium.make(spec)
    except ModuleNotFoundError as error:
        raise ValueError(f"environment {env_name!r}: cannot import module {module!r} ({error})") from None
    except gymnasium.error.Error as error:
        raise ValueError(f"environment {env_name!r}: module {module!r} registers no env {env_id!r} "
                         f"({error})") from None
    expected = gymnasium.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
    if env.observation_space != expected:
        env.close()
        raise ValueError(f"environment {env_name!r}: observation space {env.observation_space} is not "
                         f"{expected} (uint8 RGB images of BasicSettings.ImageSize={image_size})")
    return GymModuleEnv(env, seed)


def _check_protocol(env_name, protocol):
    if protocol not in ATARI_PROTOCOLS:
        raise ValueError(f"unknown Atari protocol {protocol!r}: expected one of "
                         f"{', '.join(map(repr, ATARI_PROTOCOLS))}")
    if protocol != "storm" and not (isinstance(env_name, str) and env_name.startswith("ALE/")):
        raise ValueError(f"protocol={protocol!r} applies to Atari ('ALE/<Game>-v5') envs only; "
                         f"{env_name!r} has a single protocol, protocol='storm'")


def make_env(
    env_name: str,
    seed: int,
    training: bool,
    image_size: int = 64,
    *,
    repeat_action_probability: float | None = None,
    protocol: str = "storm",
) -> gymnasium.Env:
    """One training (training=True) or evaluation env; see the module docstring.

    env_name picks the family: "ALE/<Game>-v5", "dmc/<domain>_<task>", or
    "gym/<module>:<EnvId>" (a gymnasium env registered by importing <module>, whose
    observations must already be (image_size, image_size, 3) uint8; life_loss always False).
    protocol picks the Atari preprocessing: "storm" (this project's) or "iris" (REM's
    and IRIS's); other families accept only "storm".
    repeat_action_probability applies to Atari only; None means the protocol's
    (storm 0.25, iris 0; tests turn sticky actions off under storm).
    """
    _check_int("seed", seed, 0)
    _check_int("image_size", image_size, 1)
    _check_protocol(env_name, protocol)
    if isinstance(env_name, str) and env_name.startswith("ALE/"):
        env = _make_atari(env_name, seed, training, image_size, repeat_action_probability, protocol)
    elif is_dmc(env_name):
        env = _make_dmc(env_name, seed, image_size)
    elif is_gym_module_env(env_name):
        env = _make_gym_module_env(env_name, seed, image_size)
    else:
        raise ValueError(
            f"unknown environment {env_name!r}: expected 'ALE/<Game>-v5' (Atari, e.g. "
            "'ALE/Boxing-v5'), 'dmc/<domain>_<task>' (DeepMind Control, e.g. "
            "'dmc/cartpole_balance') or 'gym/<module>:<EnvId>' (any gymnasium env its "
            "module registers, e.g. 'gym/tests.pixel_games:PixelSide-v0')"
        )
    env.action_space.seed(int(seed))
    # Applied on top of the action repeat so the statistics count agent steps and
    # include the final step's reward.
    return gymnasium.wrappers.RecordEpisodeStatistics(env)


def env_state(env: gymnasium.Env) -> dict | None:
    """Where an env built by make_env stands (see "Saved state" above), or None where its family cannot be saved."""
    game = getattr(env.env, "get_state", lambda: None)()
    if game is None:
        return None
    return {"game": game, "episode": (env.episode_returns, env.episode_lengths, env.episode_count),
            "action_space": env.action_space.np_random.bit_generator.state}


def set_env_state(env: gymnasium.Env, state: dict) -> None:
    """Put back what env_state saved, into an env built with the same settings and reset once."""
    env.env.set_state(state["game"])
    env.episode_returns, env.episode_lengths, env.episode_count = state["episode"]
    env.action_space.np_random.bit_generator.state = state["action_space"]


def vector_env_state(envs: gymnasium.vector.VectorEnv) -> list[dict] | None:
    """env_state of every env of a make_vector_env env (synchronous only), or None if any cannot be saved."""
    if not hasattr(envs, "envs"):   # asynchronous: the envs live in other processes
        return None
    states = [env_state(env) for env in envs.envs]
    return None if any(state is None for state in states) else states


def set_vector_env_state(envs: gymnasium.vector.VectorEnv, states: list[dict]) -> None:
    for env, state in zip(envs.envs, states, strict=True):
        set_env_state(env, state)


def make_vector_env(
    env_name: str,
    num_envs: int,
    seed: int,
    training: bool,
    image_size: int = 64,
    asynchronous: bool = False,
    *,
    protocol: str = "storm",
) -> gymnasium.vector.VectorEnv:
    """num_envs envs of make_env (protocol passed on), env i seeded with seed + i,
    reset in the step that ends them."""
    _check_int("num_envs", num_envs, 1)
    _check_int("seed", seed, 0)
    # Checked here too: an async vector env would report it from a worker process.
    _check_protocol(env_name, protocol)
    env_fns = [
        functools.partial(make_env, env_name, seed + i, training, image_size, protocol=protocol)
        for i in range(num_envs)
    ]
    vector_env_class = (
        gymnasium.vector.AsyncVectorEnv if asynchronous else gymnasium.vector.SyncVectorEnv
    )
    return vector_env_class(env_fns, autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP)
