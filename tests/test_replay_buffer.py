"""Tests for replay_buffer.ReplayBuffer.

Each stored step encodes where it came from: pixel channels 0/1 hold the step index
(low/high byte), channel 2 the env index, and reward / action hold the step index too,
so every sampled sequence can be checked against worked-out numbers.
"""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from replay_buffer import ReplayBuffer  # noqa: E402

OBS_SHAPE = (4, 4, 3)


def make_buffer(num_envs=2, capacity=20, warmup_steps=0, action_shape=(), action_dtype=torch.int64, obs_shape=OBS_SHAPE):
    return ReplayBuffer(obs_shape, action_shape, action_dtype, num_envs, capacity, warmup_steps)


def step_data(step, num_envs, obs_shape=OBS_SHAPE):
    obs = np.zeros((num_envs, *obs_shape), dtype=np.uint8)
    obs[..., 0] = step % 256
    obs[..., 1] = step // 256
    obs[..., 2] = np.arange(num_envs)[:, None, None]
    action = np.full((num_envs,), step, dtype=np.int64)
    reward = np.full((num_envs,), float(step), dtype=np.float32)
    termination = np.full((num_envs,), step % 7 == 0)
    return obs, action, reward, termination


def fill(buffer, num_steps, start=0):
    for step in range(start, start + num_steps):
        buffer.append(*step_data(step, buffer.num_envs))


def decode(obs):
    """obs (B, T, H, W, C) -> step index (B, T), env index (B, T), checking every pixel agrees."""
    obs = obs.long()
    assert (obs == obs[:, :, :1, :1, :]).all(), "pixels of one frame disagree"
    return obs[:, :, 0, 0, 0] + 256 * obs[:, :, 0, 0, 1], obs[:, :, 0, 0, 2]


def check_consistent(batch):
    """Every sequence is consecutive steps of one env, and all four fields describe the same steps."""
    obs, action, reward, termination = batch
    steps, envs = decode(obs)
    assert (steps[:, 1:] - steps[:, :-1] == 1).all(), f"non-consecutive steps:\n{steps}"
    assert (envs == envs[:, :1]).all(), f"sequence mixes envs:\n{envs}"
    assert torch.equal(action, steps)
    assert torch.equal(reward, steps.float())
    assert torch.equal(termination, (steps % 7 == 0).float())
    return steps, envs


def test_sample_shapes_and_dtypes():
    buffer = make_buffer()
    fill(buffer, 6)
    obs, action, reward, termination = buffer.sample(5, 3)
    assert obs.shape == (5, 3, *OBS_SHAPE) and obs.dtype == torch.uint8
    assert action.shape == (5, 3) and action.dtype == torch.int64
    assert reward.shape == (5, 3) and reward.dtype == torch.float32
    assert termination.shape == (5, 3) and termination.dtype == torch.float32
    assert all(x.device == torch.device("cpu") for x in (obs, action, reward, termination))


def test_len_and_ready_flip_after_warmup():
    buffer = make_buffer(num_envs=2, capacity=20, warmup_steps=5)
    assert len(buffer) == 0 and not buffer.ready()
    expected_ready = []
    for k in range(1, 15):
        fill(buffer, 1, start=k)
        assert len(buffer) == min(2 * k, 20)
        expected_ready.append(buffer.ready())
    # 2 envs: 3 vector steps = 6 stored steps is the first count above warmup 5.
    assert expected_ready == [False, False] + [True] * 12


def test_sequences_are_contiguous_and_from_one_env():
    torch.manual_seed(0)
    buffer = make_buffer(num_envs=3, capacity=30)
    fill(buffer, 8)
    steps, envs = check_consistent(buffer.sample(256, 4))
    assert set(envs[:, 0].tolist()) == {0, 1, 2}
    assert steps.min() >= 0 and steps.max() <= 7


def test_accepts_torch_inputs_and_bool_terminations():
    buffer = make_buffer(num_envs=2)
    for step in range(5):
        obs, action, reward, termination = step_data(step, 2)
        buffer.append(torch.from_numpy(obs), torch.from_numpy(action), torch.from_numpy(reward), torch.from_numpy(termination))
    check_consistent(buffer.sample(16, 5))


def test_sampling_never_crosses_write_head():
    torch.manual_seed(1)
    num_envs, capacity, length = 2, 14, 3
    track = capacity // num_envs  # 7
    buffer = make_buffer(num_envs=num_envs, capacity=capacity)
    for n in range(1, 60):  # wraps the 7-slot tracks 8 times, ending at every head position
        fill(buffer, 1, start=n - 1)
        if n < length:
            continue
        for _ in range(5):
            steps, _ = check_consistent(buffer.sample(64, length))
            # Only the most recent `track` steps (n - track .. n - 1) are still stored.
            assert steps.min() >= max(0, n - track) and steps.max() <= n - 1


def test_every_valid_start_sampled_roughly_uniformly():
    torch.manual_seed(2)
    buffer = make_buffer(num_envs=2, capacity=20)  # tracks of 10
    fill(buffer, 25)                                # wrapped: steps 15..24 remain, head at slot 5
    length = 4
    counts = torch.zeros(2, 25, dtype=torch.long)
    for _ in range(700):
        steps, envs = check_consistent(buffer.sample(20, length))
        counts.index_put_((envs[:, 0], steps[:, 0]), torch.ones(20, dtype=torch.long), accumulate=True)
    # Valid first steps are 15..21 in each env: 14 cells, 1000 draws expected in each.
    assert counts[:, :15].sum() == 0 and counts[:, 22:].sum() == 0
    observed = counts[:, 15:22].flatten().double()
    assert (observed > 0).all()
    chi_square = ((observed - 1000.0) ** 2 / 1000.0).sum().item()
    assert chi_square < 40.0, f"chi-square {chi_square:.1f} with 13 dof: sampling is not uniform"


def test_storage_memory_stays_bounded():
    buffer = make_buffer(num_envs=2, capacity=20)
    tensors = (buffer.obs, buffer.action, buffer.reward, buffer.termination)
    shapes = [t.shape for t in tensors]
    pointers = [t.data_ptr() for t in tensors]
    fill(buffer, 137)
    assert [t.shape for t in (buffer.obs, buffer.action, buffer.reward, buffer.termination)] == shapes
    assert [t.data_ptr() for t in (buffer.obs, buffer.action, buffer.reward, buffer.termination)] == pointers
    assert buffer.obs.shape[:2] == (2, 10) and len(buffer) == 20


def test_save_load_round_trip_preserves_samples_and_wrap_state(tmp_path):
    path = tmp_path / "buffer.pt"
    original = make_buffer(num_envs=2, capacity=20)
    fill(original, 23)  # wrapped, head at slot 3
    original.save(path)
    assert os.listdir(tmp_path) == ["buffer.pt"], "temp file left behind"

    restored = make_buffer(num_envs=2, capacity=20)
    restored.load(path)
    assert len(restored) == len(original) and restored.num_appended == 23

    torch.manual_seed(3)
    expected = original.sample(32, 5)
    torch.manual_seed(3)
    found = restored.sample(32, 5)
    assert all(torch.equal(a, b) for a, b in zip(expected, found))

    # Appending after load overwrites the oldest step (13) and keeps the newest-first order.
    fill(original, 4, start=23)
    fill(restored, 4, start=23)
    for buffer in (original, restored):
        torch.manual_seed(4)
        steps, _ = check_consistent(buffer.sample(256, 10))
        assert steps[:, 0].unique().tolist() == [17]  # only one start left: steps 17..26
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), restored.state_dict().values())
               if isinstance(a, torch.Tensor))


def test_save_stores_only_filled_part(tmp_path):
    buffer = ReplayBuffer((64, 64, 3), (), torch.int64, num_envs=1, capacity=1000, warmup_steps=0)
    for step in range(3):
        obs, action, reward, termination = step_data(step, 1, (64, 64, 3))
        buffer.append(obs, action, reward, termination)
    assert buffer.state_dict()["obs"].shape == (1, 3, 64, 64, 3)
    buffer.save(tmp_path / "small.pt")
    assert os.path.getsize(tmp_path / "small.pt") < 10 * 64 * 64 * 3  # a full buffer would be 12 MB


def test_failed_save_keeps_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "buffer.pt"
    buffer = make_buffer()
    fill(buffer, 3)
    buffer.save(path)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"half a file")
        raise KeyboardInterrupt

    fill(buffer, 3, start=3)
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        buffer.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["buffer.pt"]


def test_continuous_actions():
    torch.manual_seed(5)
    buffer = make_buffer(num_envs=2, capacity=20, action_shape=(6,), action_dtype=torch.float32)
    for step in range(8):
        obs, _, reward, termination = step_data(step, 2)
        action = np.tile(np.linspace(-1, 1, 6), (2, 1)) * step / 8  # float64, stored as float32
        buffer.append(obs, action, reward, termination)
    obs, action, reward, _ = buffer.sample(10, 4)
    assert action.shape == (10, 4, 6) and action.dtype == torch.float32
    steps, _ = decode(obs)
    expected = torch.linspace(-1, 1, 6, dtype=torch.float64) * steps[..., None] / 8
    torch.testing.assert_close(action, expected.float())


@pytest.mark.parametrize(
    "num_envs, capacity, warmup_steps, match",
    [
        (4, 3, 0, "capacity must be an int >= num_envs"),
        (0, 10, 0, "num_envs must be a positive int"),
        (2, 10, 10, "warmup_steps must be an int in"),
        (2, 10.0, 0, "capacity must be an int"),
    ],
)
def test_bad_configuration_errors(num_envs, capacity, warmup_steps, match):
    with pytest.raises(ValueError, match=match):
        ReplayBuffer(OBS_SHAPE, (), torch.int64, num_envs, capacity, warmup_steps)


def test_append_errors_name_the_bad_input():
    buffer = make_buffer(num_envs=2)
    obs, action, reward, termination = step_data(0, 2)
    with pytest.raises(ValueError, match=r"obs must have shape \(2, 4, 4, 3\), got \(2, 5, 4, 3\)"):
        buffer.append(np.zeros((2, 5, 4, 3), np.uint8), action, reward, termination)
    with pytest.raises(ValueError, match=r"obs must have shape \(2, 4, 4, 3\), got \(3, 4, 4, 3\)"):
        buffer.append(np.zeros((3, 4, 4, 3), np.uint8), action, reward, termination)
    with pytest.raises(TypeError, match="obs must be uint8"):
        buffer.append(obs.astype(np.float32), action, reward, termination)
    with pytest.raises(TypeError, match="integer indices"):
        buffer.append(obs, action.astype(np.float32), reward, termination)
    with pytest.raises(ValueError, match=r"reward must have shape \(2,\)"):
        buffer.append(obs, action, reward[:, None], termination)
    assert len(buffer) == 0


def test_sample_errors_when_not_enough_steps():
    buffer = make_buffer(num_envs=2, capacity=20)
    fill(buffer, 3)
    with pytest.raises(ValueError, match="length 4: each env track holds only 3 steps"):
        buffer.sample(2, 4)
    with pytest.raises(ValueError, match="exceeds the per-env track capacity 10"):
        buffer.sample(2, 11)
    check_consistent(buffer.sample(2, 3))


def test_load_rejects_mismatched_configuration(tmp_path):
    path = tmp_path / "buffer.pt"
    buffer = make_buffer()
    fill(buffer, 4)
    buffer.save(path)
    with pytest.raises(ValueError, match=r"obs_shape: buffer has \(8, 8, 3\), state has \(4, 4, 3\)"):
        make_buffer(obs_shape=(8, 8, 3)).load(path)
    with pytest.raises(ValueError, match="num_envs: buffer has 4, state has 2"):
        make_buffer(num_envs=4).load(path)
    with pytest.raises(ValueError, match="capacity: buffer has 40, state has 20"):
        make_buffer(capacity=40).load(path)
    with pytest.raises(ValueError, match=r"action_shape: buffer has \(6,\), state has \(\)"):
        make_buffer(action_shape=(6,), action_dtype=torch.float32).load(path)
    with pytest.raises(ValueError, match="action_dtype: buffer has 'torch.int32', state has 'torch.int64'"):
        make_buffer(action_dtype=torch.int32).load(path)


def test_load_corrupt_or_missing_file_names_the_path(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(RuntimeError, match="garbage.pt"):
        make_buffer().load(garbage)

    buffer = make_buffer()
    fill(buffer, 4)
    buffer.save(tmp_path / "full.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "full.pt").read_bytes()[:200])
    with pytest.raises(RuntimeError, match="truncated.pt"):
        make_buffer().load(truncated)

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        make_buffer().load(tmp_path / "missing.pt")


@pytest.mark.cuda
@pytest.mark.parametrize("store_on_device", [False, True])
def test_cuda_samples_match_cpu_samples(store_on_device):
    cpu = make_buffer(num_envs=2, capacity=20)
    cuda = ReplayBuffer(OBS_SHAPE, (), torch.int64, 2, 20, 0, device="cuda", store_on_device=store_on_device)
    fill(cpu, 23)
    fill(cuda, 23)
    # Start indices come from the CPU generator, so the storage device does not change the draw.
    torch.manual_seed(6)
    expected = cpu.sample(32, 5)
    torch.manual_seed(6)
    found = cuda.sample(32, 5)
    assert all(x.device.type == "cuda" for x in found)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(expected, found))
