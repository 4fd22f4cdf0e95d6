import os

import pytest
import torch

# What the machine really has, for the tests marked cuda (everything else runs CPU-only).
_CUDA_AVAILABLE = torch.cuda.is_available
_VISIBLE_DEVICES = os.environ.get("CUDA_VISIBLE_DEVICES")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` ask for the GPU explicitly; without one they are skipped, not failed.
    Tests of a module that trains in the background (`start_background_training`) go last, so
    that the others run while it trains."""
    items.sort(key=lambda item: hasattr(getattr(item, "module", None), "start_background_training"))
    if _CUDA_AVAILABLE():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _background_modules(session):
    return {item.module for item in getattr(session, "items", [])
            if hasattr(getattr(item, "module", None), "start_background_training")}


def pytest_collection_finish(session):
    """Start the background training of the modules selected (tests/test_learning.py): their
    runs take minutes on one core each, and most of the suite leaves a core free."""
    if not session.config.option.collectonly:
        for module in _background_modules(session):
            module.start_background_training()


def pytest_sessionfinish(session):
    for module in _background_modules(session):
        module.stop_background_training()


@pytest.fixture(scope="session", autouse=True)
def cpu_only():
    """The suite runs as on a machine without a GPU, so it gives the same verdicts everywhere:
    `Device=auto` resolves to the CPU (hence fp32 and no compile) in this process, and the
    entry points the tests start as subprocesses see no GPU either. Session-wide, so fixtures
    of any scope are pinned too; tests marked `cuda` get the GPU back (`gpu_for_cuda_tests`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        yield


@pytest.fixture(autouse=True)
def gpu_for_cuda_tests(request, cpu_only, monkeypatch):
    if "cuda" not in request.keywords:
        return
    monkeypatch.setattr(torch.cuda, "is_available", _CUDA_AVAILABLE)
    if _VISIBLE_DEVICES is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", _VISIBLE_DEVICES)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two OpenMP threads on two busy cores run the tiny test models several times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def boxing_steps():
    """300 agent steps of ALE/Boxing-v5 under a seeded random policy (Boxing scores often), in
    this project's replay buffer: real frames for the overfitting tests of both world models."""
    from env_wrapper import make_env
    from replay_buffer import ReplayBuffer
    env = make_env("ALE/Boxing-v5", 0, training=True)
    buffer = ReplayBuffer((64, 64, 3), (), torch.long, num_envs=1, capacity=300, warmup_steps=16)
    obs, _ = env.reset()
    for _ in range(300):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, info = env.step(action)
        buffer.append(torch.as_tensor(obs)[None], torch.tensor([action]), torch.tensor([reward]),
                      torch.tensor([float(terminated or info["life_loss"])]))
        obs = next_obs if not (terminated or truncated) else env.reset()[0]
    env.close()
    assert (buffer.reward != 0).sum() >= 5  # the reward head has something to learn
    return buffer
