"""REM's multi-scale retention (sub_models/rem/retention.py): constants by hand, the retention
sum by hand, and parallel = recurrent = chunkwise (several chunk sizes) in float64."""
import math

import pytest
import torch

from sub_models.rem.retention import (MultiScaleRetention, RetNet, chunk_state, decay_gammas, per_block_states,
                                      position_thetas, retention_chunk, retention_parallel, rotate)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_decays_and_thetas_by_hand():
    # gamma_h = 1 - exp(linspace(ln 1/32, ln 1/512, 4)): 1 - 1/32, 1 - 1/(32 * 16^(1/3)), 1 - 1/(32 * 16^(2/3)), 1 - 1/512
    expected = (0.96875, 1 - 1 / (32 * 16 ** (1 / 3)), 1 - 1 / (32 * 16 ** (2 / 3)), 0.998046875)
    assert decay_gammas(4) == pytest.approx(expected, abs=1e-12)
    assert decay_gammas(4) == pytest.approx((0.968750, 0.987598, 0.995078, 0.998047), abs=5e-7)   # spec 4.3
    thetas = position_thetas(64)
    assert len(thetas) == 64 and thetas[0] == thetas[1] == 1.0
    assert thetas[2] == thetas[3] == pytest.approx(10000 ** (-1 / 31), rel=1e-12)
    assert thetas[62] == pytest.approx(1e-4, rel=1e-12)


def test_rotation_by_hand():
    # pair (x0, x1) = (1, 0) at position 3 with theta_0 = 1 turns by 3 rad; pair (0, 2) with theta_1 = 1e-4 by 3e-4
    x = torch.tensor([[1.0, 0.0, 0.0, 2.0]], dtype=torch.float64)
    out = rotate(x[None], 3, position_thetas(4))[0, 0]
    expected = [math.cos(3), math.sin(3), -2 * math.sin(3e-4), 2 * math.cos(3e-4)]
    assert out.tolist() == pytest.approx(expected, abs=1e-12)


def test_retention_sum_by_hand():
    """y_n = sum_{m <= n} gamma^(n - m) (q_n . k_m) v_m, written as plain Python loops."""
    torch.manual_seed(0)
    gammas = (0.5, 0.9)
    q, k, v = (torch.randn(1, 2, 5, 3, dtype=torch.float64) for _ in range(3))
    expected = torch.zeros_like(v)
    for h, g in enumerate(gammas):
        for n in range(5):
            for m in range(n + 1):
                expected[0, h, n] += g ** (n - m) * float(q[0, h, n] @ k[0, h, m]) * v[0, h, m]
    assert torch.allclose(retention_parallel(q, k, v, gammas), expected, atol=1e-12)
    # two chunks (2 + 3 tokens) through the carried state give the same sums
    state = chunk_state(k[..., :2, :], v[..., :2, :], gammas, None)
    second = retention_chunk(q[..., 2:, :], k[..., 2:, :], v[..., 2:, :], gammas, state)
    assert torch.allclose(second, expected[..., 2:, :], atol=1e-12)
    # S after all 5 tokens = sum_m gamma^(4 - m) k_m^T v_m
    full = sum(torch.tensor(gammas, dtype=torch.float64)[:, None, None] ** (4 - m)
               * k[0, :, m, :, None] * v[0, :, m, None, :] for m in range(5))
    assert torch.allclose(chunk_state(k[..., 2:, :], v[..., 2:, :], gammas, state)[0], full, atol=1e-12)


def tiny_retnet(layers=2, dim=16, heads=2, seed=0):
    torch.manual_seed(seed)
    return RetNet(layers, dim, heads, 2 * dim, dropout=0.0).double().eval()


@pytest.mark.parametrize("chunk", [1, 4, 7, 13, 30])
def test_parallel_recurrent_chunkwise_agree(chunk):
    net = tiny_retnet()
    x = torch.randn(3, 30, 16, dtype=torch.float64)
    with torch.no_grad():
        parallel = net.forward_parallel(x)
        states, outs = net.empty_states(), []
        for n in range(30):
            out, states = net.forward_recurrent(x[:, n], n, states)
            outs.append(out)
        recurrent = torch.stack(outs, 1)
        chunked, chunk_states = net.forward_chunked(x, 0, net.empty_states(), chunk)
    assert torch.allclose(parallel, recurrent, atol=1e-10, rtol=0)
    assert torch.allclose(parallel, chunked, atol=1e-10, rtol=0)
    for a, b in zip(states, chunk_states):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_float32_forms_agree_within_float_tolerance():
    torch.manual_seed(1)
    net = RetNet(2, 32, 4, 64, dropout=0.0).eval()
    x = torch.randn(2, 130, 32)
    with torch.no_grad():
        parallel = net.forward_parallel(x)
        chunked, _ = net.forward_chunked(x, 0, net.empty_states(), 65)
    assert torch.allclose(parallel, chunked, atol=2e-5, rtol=1e-4)


def test_position_is_relative():
    """Starting the same sequence at another absolute index changes nothing: q.k depends on n - m only."""
    net = tiny_retnet()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(net.forward_parallel(x, 0), net.forward_parallel(x, 123), atol=1e-10)


def test_per_block_states_and_batched_block_chunks():
    torch.manual_seed(2)
    gammas = decay_gammas(2)
    k, v = torch.randn(2, 2, 12, 4, dtype=torch.float64), torch.randn(2, 2, 12, 4, dtype=torch.float64)
    prev = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    blocks = per_block_states(k, v, gammas, prev, block=4)
    for j in range(3):
        assert torch.allclose(blocks[j], chunk_state(k[..., :4 * (j + 1), :], v[..., :4 * (j + 1), :], gammas, prev),
                              atol=1e-12)
    # a batch of 3 independent 4-token chunks at global positions 8.., each from its own state
    msr = MultiScaleRetention(8, 2, 0.0).double().eval()
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    states = torch.randn(3, 2, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        batched = msr.forward_from_block_states(x, 8, states, block=4)
        for j in range(3):
            single, _ = msr.forward_chunkwise(x[:, 4 * j:4 * j + 4], 8 + 4 * j, states[j])
            assert torch.allclose(batched[:, 4 * j:4 * j + 4], single, atol=1e-12)
