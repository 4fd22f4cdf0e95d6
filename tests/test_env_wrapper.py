"""Atari side of env_wrapper, checked against the raw ALE env stepped by hand."""

import pickle

import ale_py
import cv2
import gymnasium
import numpy as np
import pytest
from PIL import Image

import env_wrapper
from env_wrapper import ATARI_100K_GAMES, make_env, make_vector_env, set_vector_env_state, vector_env_state

gymnasium.register_envs(ale_py)


def random_actions(num_actions, length, seed=0):
    return np.random.default_rng(seed).integers(num_actions, size=length)


def rollout(env, actions):
    """Observations and infos of env along the given actions (reset not included)."""
    observations, infos = [], []
    for action in actions:
        obs, _, terminated, truncated, info = env.step(action)
        observations.append(obs)
        infos.append(info)
        if terminated or truncated:
            break
    return np.stack(observations), infos


def test_constants():
    registered = {env_id for env_id in gymnasium.registry if env_id.startswith("ALE/")}
    assert len(ATARI_100K_GAMES) == len(set(ATARI_100K_GAMES)) == 26
    assert all(f"ALE/{game}-v5" in registered for game in ATARI_100K_GAMES)
    assert env_wrapper.is_dmc("dmc/cartpole_balance")
    assert not env_wrapper.is_dmc("ALE/Boxing-v5")


def test_single_env_shapes_and_types():
    env = make_env("ALE/Boxing-v5", seed=0, training=True)
    assert env.observation_space == gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    obs, info = env.reset()
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert info["life_loss"] is False
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert type(reward) is float
    assert type(info["life_loss"]) is bool
    assert terminated is False and truncated is False
    env.close()


def test_image_size_and_other_valid_games():
    # Any ALE game is accepted, not only the 26 of Atari 100k.
    env = make_env("ALE/SpaceInvaders-v5", seed=0, training=False, image_size=32)
    obs, _ = env.reset()
    assert obs.shape == (32, 32, 3)
    env.close()


def test_frameskip_max_pool_and_reward_sum_match_raw_ale():
    raw = gymnasium.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0,
                         full_action_space=False)
    env = make_env("ALE/Breakout-v5", seed=3, training=True, repeat_action_probability=0.0)
    raw_frame, _ = raw.reset(seed=3)
    obs, _ = env.reset()
    assert np.array_equal(obs, cv2.resize(raw_frame, (64, 64), interpolation=cv2.INTER_AREA))

    def expected(previous, last):
        # the max removes sprite flicker; it matters only where the two frames differ
        pooled = np.maximum(previous, last)
        return cv2.resize(pooled, (64, 64), interpolation=cv2.INTER_AREA), not np.array_equal(pooled, last)

    total_reward, pooling_mattered = step_beside_raw_ale(env, raw, raw_frame, random_actions(4, 300, seed=1),
                                                         expected)
    # Otherwise the test would not tell a dropped reward or a missing max apart.
    assert total_reward > 0 and pooling_mattered
    raw.close()
    env.close()


def step_beside_raw_ale(env, raw, raw_frame, actions, expected):
    """Step `env` and the raw per-frame ALE env `raw` (last frame `raw_frame`) with the same
    actions, 4 raw frames per agent step. Each observation of `env` must equal
    expected(previous raw frame, last raw frame)[0] and each reward the sum of the raw
    frames' rewards. Returns (total reward, whether expected(...)[1] held at any step)."""
    total_reward, mattered = 0.0, False
    for action in actions:
        # An episode may end after fewer than 4 frames; the frame before them then
        # is the last one of the previous step.
        frames, raw_reward = [raw_frame], 0.0
        for _ in range(4):
            raw_frame, reward, raw_terminated, _, _ = raw.step(action)
            frames.append(raw_frame)
            raw_reward += reward
            if raw_terminated:
                break
        observation, differs = expected(frames[-2], frames[-1])
        mattered |= differs
        obs, reward, terminated, _, _ = env.step(action)
        assert np.array_equal(obs, observation)
        assert reward == raw_reward
        total_reward += reward
        if raw_terminated or terminated:
            assert raw_terminated and terminated
            break
    return total_reward, mattered


def test_life_loss_in_training_env_continues_the_episode():
    env = make_env("ALE/Breakout-v5", seed=0, training=True)
    _, info = env.reset()
    lives, losses = info["lives"], 0
    for action in random_actions(4, 2000):
        _, _, terminated, truncated, info = env.step(action)
        assert info["life_loss"] == (info["lives"] < lives)
        losses += info["life_loss"]
        lives = info["lives"]
        if losses == 2:
            break
        assert not (terminated or truncated)
    # Two lives lost with the episode still running: life loss does not end it.
    assert losses == 2 and not (terminated or truncated) and lives == 3
    env.close()


def test_evaluation_env_runs_to_game_over_without_life_loss():
    env = make_env("ALE/Breakout-v5", seed=0, training=False)
    _, info = env.reset()
    lives = [info["lives"]]
    for action in random_actions(4, 5000):
        _, _, terminated, truncated, info = env.step(action)
        assert info["life_loss"] is False
        lives.append(info["lives"])
        if terminated or truncated:
            break
    assert terminated and lives[0] == 5 and lives[-1] == 0
    env.close()


def test_episode_return_counts_every_raw_reward_including_the_last():
    # A Pong game is lost on its last point, so the final step's reward is -1.
    actions = random_actions(6, 5000, seed=2)
    raw = gymnasium.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0,
                         full_action_space=False)
    raw.reset(seed=0)
    raw_return, raw_frames = 0.0, 0
    for action in actions:
        for _ in range(4):
            _, reward, terminated, truncated, _ = raw.step(action)
            raw_return += reward
            raw_frames += 1
            if terminated or truncated:
                break
        if terminated or truncated:
            break
    assert terminated

    env = make_env("ALE/Pong-v5", seed=0, training=True, repeat_action_probability=0.0)
    env.reset()
    step_rewards = []
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        step_rewards.append(reward)
        if terminated or truncated:
            break
    assert terminated and step_rewards[-1] == -1.0
    assert sum(step_rewards) == raw_return == info["episode"]["r"]
    assert info["episode"]["l"] == len(step_rewards) == -(-raw_frames // 4)
    raw.close()
    env.close()


def test_seeding_once():
    actions = random_actions(4, 60)

    def first_episode(seed):
        env = make_env("ALE/Breakout-v5", seed=seed, training=True)
        env.reset()
        return rollout(env, actions)[0], env

    run_a, env = first_episode(0)
    run_b, _ = first_episode(0)
    run_c, _ = first_episode(1)
    assert np.array_equal(run_a, run_b)
    # Sticky actions draw from the seeded generator, so another seed moves differently.
    assert not np.array_equal(run_a, run_c)
    # A second episode of the same env must not replay the first (no reseeding).
    env.reset()
    assert not np.array_equal(run_a, rollout(env, actions)[0])
    # An explicit seed does reseed.
    env.reset(seed=0)
    assert np.array_equal(run_a, rollout(env, actions)[0])


def test_unknown_names_raise_with_suggestions():
    with pytest.raises(ValueError, match="ALE/Boxing-v5"):
        make_env("ALE/Boxng-v5", seed=0, training=True)
    with pytest.raises(ValueError, match="ALE/Boxing-v5"):
        make_env("ALE/Boxing-v4", seed=0, training=True)
    with pytest.raises(ValueError, match="expected 'ALE/<Game>-v5'.*'dmc/<domain>_<task>'"):
        make_env("Boxing", seed=0, training=True)
    with pytest.raises(ValueError, match="image_size must be an integer >= 1, got 0"):
        make_env("ALE/Boxing-v5", seed=0, training=True, image_size=0)
    with pytest.raises(ValueError, match="num_envs must be an integer >= 1, got 0"):
        make_vector_env("ALE/Boxing-v5", num_envs=0, seed=0, training=True)


def test_vector_env_shapes_seeds_and_episode_statistics():
    num_envs = 3
    envs = make_vector_env("ALE/Breakout-v5", num_envs, seed=5, training=False)
    obs, info = envs.reset()
    assert obs.shape == (num_envs, 64, 64, 3) and obs.dtype == np.uint8
    assert info["life_loss"].dtype == bool and info["life_loss"].shape == (num_envs,)

    # Env i behaves like a single env seeded with 5 + i.
    actions = random_actions(4, 40)
    reference = make_env("ALE/Breakout-v5", seed=6, training=False)
    reference.reset()
    expected = rollout(reference, actions)[0]
    for t, action in enumerate(actions):
        obs, reward, terminated, truncated, info = envs.step(np.full(num_envs, action))
        assert np.array_equal(obs[1], expected[t])
    assert reward.shape == terminated.shape == truncated.shape == (num_envs,)
    assert info["life_loss"].dtype == bool and info["life_loss"].shape == (num_envs,)

    # Play until every env has finished one episode; check the returned statistics.
    returns = np.zeros(num_envs)
    finished = np.zeros(num_envs, dtype=bool)
    envs.reset()
    rng = np.random.default_rng(0)
    for _ in range(5000):
        obs, reward, terminated, truncated, info = envs.step(rng.integers(4, size=num_envs))
        returns += np.where(finished, 0.0, reward)
        done = terminated | truncated
        for i in np.flatnonzero(done & ~finished):
            final_info = info["final_info"]
            assert final_info["_episode"][i]
            assert final_info["episode"]["r"][i] == returns[i]
            assert info["final_obs"][i].shape == (64, 64, 3)
            # Same-step autoreset: the returned obs already starts the next episode.
            assert info["lives"][i] == 5 and final_info["lives"][i] == 0
        finished |= done
        if finished.all():
            break
    assert finished.all()
    envs.close()


# ---------------------------------------------------------------- protocol "iris" (REM_SPEC section 2)
def pil_resize(frame):
    """REM's ResizeObsWrapper, written out: PIL bilinear to 64x64."""
    return np.asarray(Image.fromarray(frame).resize((64, 64), Image.BILINEAR))


@pytest.mark.parametrize("training, frame_cap", [(True, 20_000), (False, 108_000)])
def test_iris_protocol_runs_noframeskip_v4_settings_underneath(training, frame_cap):
    iris = make_env("ALE/Breakout-v5", seed=0, training=training, protocol="iris")
    storm = make_env("ALE/Breakout-v5", seed=0, training=training)
    v4 = gymnasium.make("BreakoutNoFrameskip-v4")
    assert iris.unwrapped.ale.getFloat("repeat_action_probability") == 0.0
    assert storm.unwrapped.ale.getFloat("repeat_action_probability") == 0.25
    assert iris.unwrapped.ale.getInt("max_num_frames_per_episode") == frame_cap
    assert storm.unwrapped.ale.getInt("max_num_frames_per_episode") == 108_000
    # The minimal action set, as v4 and v5 have it.
    assert iris.action_space == storm.action_space == v4.action_space == gymnasium.spaces.Discrete(4)
    assert iris.unwrapped.get_action_meanings() == v4.unwrapped.get_action_meanings()
    # One frame per ALE step underneath, 4 per agent step.
    _, info = iris.reset()
    frames_after_reset = info["episode_frame_number"]
    _, _, _, _, info = iris.step(0)
    assert info["episode_frame_number"] == frames_after_reset + 4
    for env in (iris, storm, v4):
        env.close()


def test_iris_evaluation_env_matches_noframeskip_v4_stepped_by_hand():
    raw = gymnasium.make("BreakoutNoFrameskip-v4")
    env = make_env("ALE/Breakout-v5", seed=3, training=False, protocol="iris")
    raw.reset(seed=3)
    raw_frame, *_ = raw.step(0)             # REM's test env: exactly one no-op
    obs, info = env.reset()
    assert info["episode_frame_number"] == 1
    assert np.array_equal(obs, pil_resize(raw_frame))

    def expected(previous, last):
        # REM resizes each frame, then takes the max of the last two resized frames.
        resized = np.maximum(pil_resize(previous), pil_resize(last))
        return resized, not np.array_equal(resized, pil_resize(np.maximum(previous, last)))

    total_reward, order_mattered = step_beside_raw_ale(env, raw, raw_frame, random_actions(4, 300, seed=3), expected)
    # Otherwise a dropped reward or a max taken before the resize would pass unseen.
    assert total_reward > 0 and order_mattered
    raw.close()
    env.close()


def noop_counts(seed, episodes):
    """How many no-op frames each reset of an iris training env took (ALE counts them)."""
    env = make_env("ALE/Breakout-v5", seed=seed, training=True, protocol="iris")
    counts = [env.reset()[1]["episode_frame_number"] for _ in range(episodes)]
    env.close()
    return counts


def test_iris_training_env_starts_with_1_to_30_noops_from_its_seed():
    counts = noop_counts(0, 100)
    # Drawn from 1..30: never outside, and these 100 draws reach both ends.
    assert all(1 <= count <= 30 for count in counts)
    assert min(counts) == 1 and max(counts) == 30
    # The same seed repeats its counts; another seed draws others.
    assert noop_counts(0, 20) == counts[:20]
    assert noop_counts(1, 20) != counts[:20]

    # The no-ops are action 0 on the raw game: the first observation is the frame after them.
    env = make_env("ALE/Breakout-v5", seed=0, training=True, protocol="iris")
    obs, _ = env.reset()
    raw = gymnasium.make("BreakoutNoFrameskip-v4")
    raw.reset(seed=0)
    for _ in range(counts[0]):
        raw_frame, *_ = raw.step(0)
    assert np.array_equal(obs, pil_resize(raw_frame))
    # Env i of a vector env is a single env seeded with seed + i, protocol included.
    envs = make_vector_env("ALE/Breakout-v5", 2, seed=0, training=True, protocol="iris")
    _, infos = envs.reset()
    assert infos["episode_frame_number"][0] == counts[0]
    assert infos["episode_frame_number"][1] == noop_counts(1, 1)[0]
    for closable in (env, raw, envs):
        closable.close()


def test_iris_frame_cap_truncates_counting_the_noops(monkeypatch):
    # The real caps are read off ALE above; a small one shows the truncation itself
    # without stepping 20,000 frames. Breakout never ends without FIRE.
    monkeypatch.setattr(env_wrapper, "IRIS_TRAINING_FRAME_CAP", 401)
    env = make_env("ALE/Breakout-v5", seed=0, training=True, protocol="iris")
    _, info = env.reset()
    steps = 0
    while True:
        _, _, terminated, truncated, info = env.step(0)
        steps += 1
        if terminated or truncated:
            break
    assert truncated and not terminated
    assert info["episode_frame_number"] == 401
    assert info["episode"]["l"] == steps
    env.close()


def test_protocol_errors():
    with pytest.raises(ValueError, match="unknown Atari protocol 'sticky': expected one of 'storm', 'iris'"):
        make_env("ALE/Boxing-v5", seed=0, training=True, protocol="sticky")
    for name in ("dmc/cartpole_balance", "gym/tests.pixel_games:PixelSide-v0"):
        with pytest.raises(ValueError, match=r"protocol='iris' applies to Atari \('ALE/<Game>-v5'\) envs only"):
            make_env(name, seed=0, training=True, protocol="iris")
        with pytest.raises(ValueError, match="protocol='iris' applies to Atari"):
            make_vector_env(name, 2, seed=0, training=True, asynchronous=True, protocol="iris")


def env_steps(envs, count: int, hold=None) -> list[tuple]:
    """`count` steps of a vector env, holding action `hold` in every env, or (None) drawing
    actions from the envs' own action spaces."""
    out = []
    for _ in range(count):
        action = (np.full(envs.num_envs, hold) if hold is not None else
                  np.stack([envs.single_action_space.sample() for _ in range(envs.num_envs)]))
        obs, reward, terminated, truncated, info = envs.step(action)
        out.append((action, obs, reward, terminated, truncated, info["life_loss"]))
    return out


def assert_saved_state_continues(env_name: str, num_envs: int, protocol: str = "storm", hold_before=None,
                                 hold_after=None) -> None:
    """20 steps (env_steps, holding `hold_before`), then vector_env_state, pickled as a checkpoint
    would be, put back into envs built with another seed and reset once: the next 8 steps
    (holding `hold_after`) and 8 drawn ones give the same actions, frames, rewards, ends and
    life losses, and the same episode statistics."""
    saved = make_vector_env(env_name, num_envs, seed=3, training=True, protocol=protocol)
    restored = make_vector_env(env_name, num_envs, seed=99, training=True, protocol=protocol)
    saved.reset(seed=3)
    restored.reset(seed=99)
    env_steps(saved, 20, hold_before)
    set_vector_env_state(restored, pickle.loads(pickle.dumps(vector_env_state(saved))))
    expected, continued = (env_steps(envs, 8, hold_after) + env_steps(envs, 8) for envs in (saved, restored))
    for step, (want, got) in enumerate(zip(expected, continued)):
        assert all(np.array_equal(w, g) for w, g in zip(want, got)), step
    for a, b in zip(saved.envs, restored.envs):
        assert (a.episode_returns, a.episode_lengths, a.episode_count) == (b.episode_returns, b.episode_lengths,
                                                                           b.episode_count)
    saved.close()
    restored.close()


@pytest.mark.parametrize("protocol", ["storm", "iris"])
def test_a_saved_training_env_state_continues_bit_for_bit(protocol):
    """Sticky actions (storm) included: ALE's saved state leaves out the action a sticky frame
    repeats (here FIRE, held before the save; DOWN follows), which set_state puts back."""
    assert_saved_state_continues("ALE/Boxing-v5", 6, protocol, hold_before=1, hold_after=5)
