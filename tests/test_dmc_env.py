"""DeepMind Control side of env_wrapper, checked against the raw dm_control env."""

import os

import gymnasium
import numpy as np
import pytest

import env_wrapper
from env_wrapper import DMC_TASKS, make_env, make_vector_env

if "DISPLAY" not in os.environ:
    os.environ.setdefault("MUJOCO_GL", "egl")
from dm_control import suite  # noqa: E402  (after MUJOCO_GL is chosen)


def test_task_list_matches_dm_control():
    all_tasks = {f"{domain}_{task}" for domain, task in suite.ALL_TASKS}
    assert len(DMC_TASKS) == len(set(DMC_TASKS)) == 20
    assert set(DMC_TASKS) <= all_tasks


def test_spaces_shapes_and_types():
    env = make_env("dmc/cartpole_balance", seed=0, training=True)
    assert env.observation_space == gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.action_space == gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
    obs, info = env.reset()
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert info["life_loss"] is False
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert type(reward) is float and 0.0 < reward <= 2.0
    assert info["life_loss"] is False and terminated is False and truncated is False
    with pytest.raises(ValueError, match=r"action must have shape \(1,\), got \(2,\)"):
        env.step(np.zeros(2))
    env.close()


def test_action_repeat_2_matches_raw_dm_control():
    raw = suite.load("cartpole", "balance", task_kwargs={"random": 7})
    raw.reset()
    env = make_env("dmc/cartpole_balance", seed=7, training=True)
    obs, _ = env.reset()
    assert np.array_equal(obs, raw.physics.render(64, 64, camera_id=0))
    actions = np.random.default_rng(0).uniform(-1, 1, size=(10, 1)).astype(np.float32)
    for action in actions:
        raw_reward = raw.step(action).reward + raw.step(action).reward
        obs, reward, _, _, _ = env.step(action)
        assert reward == raw_reward
        assert np.array_equal(obs, raw.physics.render(64, 64, camera_id=0))
    env.close()


def test_actions_are_rescaled_to_the_task_bounds():
    # Quadruped's actuators have bounds other than [-1, 1], e.g. [-0.8, 0.8].
    env = make_env("dmc/quadruped_walk", seed=0, training=True)
    env.reset()
    physics = env.unwrapped._env.physics
    spec = env.unwrapped._env.action_spec()
    assert not np.allclose(spec.minimum, -1.0)
    for action, expected in [(-1.0, spec.minimum), (1.0, spec.maximum),
                             (0.0, (spec.minimum + spec.maximum) / 2)]:
        env.step(np.full(12, action, dtype=np.float32))
        np.testing.assert_allclose(physics.data.ctrl, expected, atol=1e-6)
    env.close()


def test_episode_is_500_agent_steps_then_truncated(monkeypatch):
    # Rendering costs ~0.03 s a frame on CPU and the pixels do not matter here.
    monkeypatch.setattr(env_wrapper.DMCEnv, "_render",
                        lambda self: np.zeros((64, 64, 3), np.uint8))
    env = make_env("dmc/cartpole_balance", seed=0, training=True)
    env.reset()
    rewards = []
    for step in range(1, 501):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        rewards.append(reward)
        assert terminated is False and info["life_loss"] is False
        assert truncated == (step == 500)
    assert info["episode"]["l"] == 500
    assert info["episode"]["r"] == pytest.approx(sum(rewards))
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(env.action_space.sample())
    env.close()


def test_seeding_once():
    def first_obs(seed):
        env = make_env("dmc/cartpole_swingup", seed=seed, training=True)
        return env.reset()[0], env

    obs_a, env = first_obs(0)
    obs_b, _ = first_obs(0)
    obs_c, _ = first_obs(1)
    assert np.array_equal(obs_a, obs_b)
    assert not np.array_equal(obs_a, obs_c)
    # The next episode starts from a new random state (no reseeding at reset).
    assert not np.array_equal(obs_a, env.reset()[0])
    # An explicit seed does reseed.
    assert np.array_equal(obs_a, env.reset(seed=0)[0])


def test_vector_env():
    envs = make_vector_env("dmc/cartpole_balance", num_envs=2, seed=3, training=True)
    obs, info = envs.reset()
    assert obs.shape == (2, 64, 64, 3) and obs.dtype == np.uint8
    assert envs.single_action_space == gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
    single = make_env("dmc/cartpole_balance", seed=4, training=True)
    assert np.array_equal(obs[1], single.reset()[0])
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert obs.shape == (2, 64, 64, 3) and reward.shape == (2,)
    assert info["life_loss"].dtype == bool and not info["life_loss"].any()
    envs.close()


def test_unknown_task_raises_with_suggestions():
    with pytest.raises(ValueError, match="dmc/cartpole_balance"):
        make_env("dmc/cartpole_balanse", seed=0, training=True)
    # The paper's "Cup Catch" is dm_control's ball_in_cup domain.
    with pytest.raises(ValueError, match="dmc/ball_in_cup_catch"):
        make_env("dmc/cup_catch", seed=0, training=True)


def test_a_saved_training_env_state_continues_bit_for_bit():
    """reacher_easy moves its target in the model at every episode start: the state carries the
    model arrays the task changed as well as MuJoCo's integration state."""
    from tests.test_env_wrapper import assert_saved_state_continues
    assert_saved_state_continues("dmc/reacher_easy", 1)
