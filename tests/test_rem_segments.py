"""REM's episode segments over the replay buffer (families/rem/segments.py), checked against
episodes laid out by hand. Every frame is filled with (its append count + 1), so a real frame
is never 0 and a padded one always is."""
from unittest import mock

import pytest
import torch

from replay_buffer import ReplayBuffer
from families.rem.segments import EpisodeSegments


def filled_buffer(ends_at, steps=12, capacity=20, num_envs=1):
    """Steps 0..steps-1 appended; step t ends an episode if t in ends_at. Frame value t + 1,
    action t, reward 10 t (env e adds 100 e to frame values)."""
    buffer = ReplayBuffer((2, 2, 3), (), torch.long, num_envs, capacity * num_envs, 0)
    for t in range(steps):
        obs = torch.stack([torch.full((2, 2, 3), t + 1 + 100 * e, dtype=torch.uint8) for e in range(num_envs)])
        buffer.append(obs, torch.full((num_envs,), t), torch.full((num_envs,), 10.0 * t),
                      torch.full((num_envs,), float(t in ends_at)))
    return buffer


def frame_ids(obs):
    """obs (B, T, 2, 2, 3) -> (B, T) frame values as ints (0 = padding)."""
    return obs[..., 0, 0, 0].long()


# Episodes of the 12 steps with ends at 3 and 7: [0..3], [4..7], [8..11] (still being played).
ENDS = (3, 7)


def test_world_model_segments_start_where_enough_real_steps_follow_and_pad_on_the_right():
    segments = EpisodeSegments(filled_buffer(ENDS))
    torch.manual_seed(0)
    obs, actions, rewards, ends, mask = segments.forward_segments(600, 4, min_real=3)
    first = frame_ids(obs)[:, 0] - 1
    # a start needs 3 real steps from it on in its episode: 0, 1 | 4, 5 | 8, 9
    assert sorted(set(first.tolist())) == [0, 1, 4, 5, 8, 9]
    counts = torch.bincount(first, minlength=10)[[0, 1, 4, 5, 8, 9]].float()
    assert (counts - 100).abs().max() < 40            # uniform: 100 each (sd ~9)
    for row in range(obs.shape[0]):
        p = int(first[row])
        stop = {0: 4, 1: 4, 4: 8, 5: 8, 8: 12, 9: 12}[p]
        real = [p + i < stop for i in range(4)]
        assert mask[row].tolist() == real
        assert frame_ids(obs)[row].tolist() == [p + i + 1 if r else 0 for i, r in enumerate(real)]
        assert actions[row].tolist() == [p + i if r else 0 for i, r in enumerate(real)]
        assert rewards[row].tolist() == [10.0 * (p + i) if r else 0.0 for i, r in enumerate(real)]
        assert ends[row].tolist() == [float(p + i in ENDS) if r else 0.0 for i, r in enumerate(real)]


def test_controller_segments_end_where_enough_real_steps_lead_up_and_pad_on_the_left():
    segments = EpisodeSegments(filled_buffer(ENDS))
    torch.manual_seed(1)
    obs, actions, _, _, mask = segments.backward_segments(400, 5, min_real=3)
    last = frame_ids(obs)[:, -1] - 1
    # the last step needs 3 real steps up to it in its episode: 2, 3 | 6, 7 | 10, 11
    assert sorted(set(last.tolist())) == [2, 3, 6, 7, 10, 11]
    for row in range(obs.shape[0]):
        p = int(last[row])
        start = {2: 0, 3: 0, 6: 4, 7: 4, 10: 8, 11: 8}[p]
        real = [p - 4 + i >= start for i in range(5)]
        assert mask[row].tolist() == real
        assert frame_ids(obs)[row].tolist() == [p - 4 + i + 1 if r else 0 for i, r in enumerate(real)]
        assert actions[row].tolist() == [p - 4 + i if r else 0 for i, r in enumerate(real)]


def test_a_resumed_run_starts_new_episodes_where_it_reset():
    buffer = filled_buffer(ENDS, steps=10)
    segments = EpisodeSegments(buffer)
    segments.mark_new_episode()                       # envs reset after step 9 without a stored end
    assert segments.current_episodes(3)[4].tolist() == [[False, False, False]]
    for t in (10, 11):
        buffer.append(torch.full((1, 2, 2, 3), t + 1, dtype=torch.uint8), torch.tensor([t]), torch.tensor([0.0]),
                      torch.tensor([0.0]))
    # episodes now [0..3], [4..7], [8, 9], [10, 11]: only 0, 1, 4, 5 have 3 real steps ahead
    torch.manual_seed(2)
    obs, *_, mask = segments.forward_segments(300, 3, min_real=3)
    assert sorted(set((frame_ids(obs)[:, 0] - 1).tolist())) == [0, 1, 4, 5]
    obs, *_, mask = segments.current_episodes(4)
    assert frame_ids(obs).tolist() == [[0, 0, 11, 12]] and mask.tolist() == [[False, False, True, True]]


def test_the_oldest_stored_step_begins_an_episode_once_the_buffer_wraps():
    # capacity 10, 12 steps: steps 2..11 stored; episodes [2, 3], [4..7], [8..11]
    segments = EpisodeSegments(filled_buffer(ENDS, steps=12, capacity=10))
    torch.manual_seed(3)
    obs, *_, mask = segments.backward_segments(300, 3, min_real=2)
    last = frame_ids(obs)[:, -1] - 1
    assert sorted(set(last.tolist())) == [3, 5, 6, 7, 9, 10, 11]
    row = int((last == 3).nonzero()[0])
    assert frame_ids(obs)[row].tolist() == [0, 3, 4] and mask[row].tolist() == [False, True, True]
    frames = frame_ids(segments.frames(500)[:, None])[:, 0] - 1
    assert sorted(set(frames.tolist())) == list(range(2, 12))


def test_collection_burns_in_on_the_ongoing_episode_of_each_env():
    segments = EpisodeSegments(filled_buffer(ENDS, num_envs=2))
    obs, actions, _, _, mask = segments.current_episodes(6)
    # episode [8..11] is being played in both envs: the last 6 steps are 6..11, of which 8..11 are its own
    assert mask.tolist() == [[False, False, True, True, True, True]] * 2
    assert frame_ids(obs).tolist() == [[0, 0, 9, 10, 11, 12], [0, 0, 109, 110, 111, 112]]
    assert actions[0].tolist() == [0, 0, 8, 9, 10, 11]
    ended = EpisodeSegments(filled_buffer((3, 7, 11)))
    assert not ended.current_episodes(4)[4].any()      # the newest step ended its episode: nothing to burn in on
    empty = EpisodeSegments(ReplayBuffer((2, 2, 3), (), torch.long, 2, 8, 0))
    assert empty.current_episodes(3)[4].shape == (2, 3) and not empty.current_episodes(3)[4].any()


def test_sampling_without_a_long_enough_episode_is_a_clear_error():
    segments = EpisodeSegments(filled_buffer((0, 1, 2), steps=3))
    with pytest.raises(ValueError, match="no stored episode has 3 steps from its start yet"):
        segments.forward_segments(4, 5, min_real=3)
    with pytest.raises(ValueError, match="replay buffer is empty"):
        EpisodeSegments(ReplayBuffer((2, 2, 3), (), torch.long, 1, 8, 0)).frames(2)


def test_valid_segment_steps_are_found_once_per_buffer_change():
    """`nonzero` (its size depends on the data, so on a GPU it waits for the device) runs once
    per sampler after the buffer changed, not at every update; the draws are as before."""
    buffer = filled_buffer(ENDS)
    segments = EpisodeSegments(buffer)
    calls = []
    nonzero = torch.Tensor.nonzero

    def counted(tensor, *args, **kwargs):
        calls.append(tensor.shape)
        return nonzero(tensor, *args, **kwargs)

    torch.manual_seed(0)
    with mock.patch.object(torch.Tensor, "nonzero", counted):
        drawn = [segments.forward_segments(8, 4, min_real=3)[0] for _ in range(3)]
        segments.backward_segments(8, 4, min_real=3)
        segments.backward_segments(8, 4, min_real=3)
        assert len(calls) == 2                                  # one per sampler
        buffer.append(torch.full((1, 2, 2, 3), 13, dtype=torch.uint8), torch.tensor([12]), torch.tensor([0.0]),
                      torch.tensor([0.0]))
        segments.forward_segments(8, 4, min_real=3)
        assert len(calls) == 3                                  # the buffer changed: found again
    torch.manual_seed(0)
    fresh = EpisodeSegments(filled_buffer(ENDS))
    for obs in drawn:
        assert torch.equal(obs, fresh.forward_segments(8, 4, min_real=3)[0])
