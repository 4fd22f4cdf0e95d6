"""World model (SPEC section 4): codecs, KL with free bits, KV cache, straight-through
gradients, layer shapes and parameter counts, the loss terms against hand-computed numbers,
imagination, state mixers, and an overfit run on real Atari frames for both priors.

Numbers in comments are worked out by hand; the tests compare the code against them.
"""
import copy
import functools
import math
import os
import sys
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from families import compose_config  # noqa: E402
from sub_models.functions_losses import (SymlogTwoHot, categorical_kl,  # noqa: E402
                                         sample_one_hot_straight_through, symexp, symlog, unimix_logits)
from sub_models.prior_head import PriorKL, kl_pair  # noqa: E402
from sub_models.priors import MLPPrior  # noqa: E402
from sub_models.state_mixer import MIXERS  # noqa: E402
from sub_models.transformer_model import StochasticTransformer  # noqa: E402
from sub_models.world_models import Decoder, Encoder, WorldModel  # noqa: E402

PRIORS = ("mlp", "maskgit")
LOSS_KEYS = ("total_loss", "reconstruction_loss", "reward_loss", "termination_loss", "dynamics_loss",
             "representation_loss", "dynamics_kl", "representation_kl", "prior_perplexity")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.lru_cache(maxsize=None)
def config(name="STORM", *overrides):
    return compose_config(name, list(overrides))


def tiny_world_model(prior="mlp", *overrides, action_dim=18, discrete=True, seed=0):
    """The CPU preset: K=8 variables x C=8 classes, D=64, one transformer layer, 64x64 frames."""
    cfg = config("STORM", "+preset=cpu", f"Models.WorldModel.Prior={prior}", *overrides)
    torch.manual_seed(seed)
    return WorldModel(cfg.Models, action_dim, discrete)


def random_one_hot(*shape, num_classes, generator=None):
    return F.one_hot(torch.randint(0, num_classes, shape, generator=generator), num_classes).float()


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- symlog / two-hot


def test_symlog_symexp_by_hand_and_inverse():
    e = math.e
    x = torch.tensor([0.0, 1.0, -1.0, e - 1.0, -(e - 1.0)], dtype=torch.float64)
    # symlog(x) = sign(x) ln(1 + |x|): 0, ln 2, -ln 2, ln e = 1, -1
    expected = torch.tensor([0.0, math.log(2.0), -math.log(2.0), 1.0, -1.0], dtype=torch.float64)
    assert torch.allclose(symlog(x), expected, atol=1e-12)
    assert torch.allclose(symexp(expected), x, atol=1e-12)
    values = torch.tensor([-1e5, -37.5, -1.0, -1e-3, 0.0, 1e-3, 0.5, 7.0, 1e5], dtype=torch.float64)
    assert torch.allclose(symexp(symlog(values)), values, rtol=1e-12, atol=0)
    assert torch.allclose(symlog(symexp(values.clamp(-30, 30))), values.clamp(-30, 30), rtol=1e-12, atol=1e-15)


def test_two_hot_five_bins_by_hand():
    codec = SymlogTwoHot(5, -2.0, 2.0)  # bins -2, -1, 0, 1, 2 in symlog space
    assert codec.bins.tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    x = torch.tensor([0.0,                      # y = 0:     one-hot on bin "0" (index 2)
                      math.exp(0.25) - 1.0,     # y = 0.25:  0.75 on index 2, 0.25 on index 3
                      -(math.exp(1.5) - 1.0),   # y = -1.5:  0.5 on index 0 and 0.5 on index 1
                      math.e - 1.0,             # y = 1:     exactly bin "1" (index 3)
                      math.exp(2.0) - 1.0,      # y = 2:     the last bin
                      1e6,                      # y = 13.8:  beyond the range -> last bin
                      -(math.exp(2.0) - 1.0),   # y = -2:    the first bin
                      -1e6])                    # beyond -> first bin
    expected = torch.tensor([[0, 0, 1, 0, 0],
                             [0, 0, 0.75, 0.25, 0],
                             [0.5, 0.5, 0, 0, 0],
                             [0, 0, 0, 1, 0],
                             [0, 0, 0, 0, 1],
                             [0, 0, 0, 0, 1],
                             [1, 0, 0, 0, 0],
                             [1, 0, 0, 0, 0]], dtype=torch.float32)
    target = codec.encode(x)
    assert target.shape == (8, 5)
    assert torch.allclose(target, expected, atol=1e-6)
    # decoding logits whose softmax is the target gives x back inside the range
    inside = x[:5]
    logits = torch.log(codec.encode(inside) + 1e-12)
    assert torch.allclose(codec.decode(logits), inside, rtol=1e-5, atol=1e-6)
    # and clips to symexp(+-2) = +-6.389 outside it
    assert torch.allclose(codec.decode(torch.log(target[5:] + 1e-12)),
                          torch.tensor([math.exp(2) - 1, -(math.exp(2) - 1), -(math.exp(2) - 1)]), rtol=1e-5)


def test_two_hot_reward_codec_255_bins():
    codec = SymlogTwoHot(255, -20.0, 20.0)  # spacing 40/254; bin 127 is 0
    target = codec.encode(torch.tensor([0.0, 1.0, -1.0, 100.0]))
    # x = 1: y = ln 2 = 0.693147; position (y + 20) * 254/40 = 131.401485
    #   -> 1 - 0.401485 = 0.598515 on bin 131 and 0.401485 on bin 132; x = -1 mirrors it at 127
    # x = 100: y = ln 101 = 4.615121; position 156.306015 -> 0.693985 on 156, 0.306015 on 157
    expected = torch.zeros(4, 255)
    expected[0, 127] = 1.0
    expected[1, 131], expected[1, 132] = 0.598515, 0.401485
    expected[2, 123], expected[2, 122] = 0.598515, 0.401485
    expected[3, 156], expected[3, 157] = 0.693985, 0.306015
    assert torch.allclose(target, expected, atol=2e-5)
    assert torch.allclose(target.sum(-1), torch.ones(4), atol=1e-6)
    x = torch.tensor([-1000.0, -3.0, -0.01, 0.0, 0.37, 1.0, 100.0, 1e4])
    assert torch.allclose(codec.decode(torch.log(codec.encode(x) + 1e-12)), x, rtol=1e-4, atol=1e-4)


def test_unimix_floor_and_normalisation():
    torch.manual_seed(0)
    logits = 50.0 * torch.randn(64, 32)
    probs = unimix_logits(logits, 0.01).exp()
    assert torch.allclose(probs.sum(-1), torch.ones(64), atol=1e-5)
    assert probs.min() >= 0.01 / 32 * (1 - 1e-5)
    # one dominant class: the others get exactly 0.01/32 = 3.125e-4, the winner 0.99 + 3.125e-4
    peaked = torch.zeros(32)
    peaked[3] = 1000.0
    p = unimix_logits(peaked, 0.01).exp()
    assert p[3] == pytest.approx(0.9903125, abs=1e-6)
    assert torch.allclose(p[torch.arange(32) != 3], torch.full((31,), 3.125e-4), rtol=1e-5)
    # mix 0 is a plain log-softmax
    assert torch.allclose(unimix_logits(logits, 0.0), torch.log_softmax(logits, -1))


# --------------------------------------------------------------------------- KL and free bits


def test_categorical_kl_two_classes_by_hand():
    p, q = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])
    # KL[p||q] = 0.25 ln(0.25/0.5) + 0.75 ln(0.75/0.5) = -0.173287 + 0.304099 = 0.130812
    # KL[q||p] = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.346574 - 0.202733 = 0.143841
    assert categorical_kl(p.log(), q.log()).item() == pytest.approx(0.130812, abs=1e-6)
    assert categorical_kl(q.log(), p.log()).item() == pytest.approx(0.143841, abs=1e-6)
    # unnormalised logits (log-probs + a constant) give the same numbers
    assert categorical_kl(p.log() + 3.0, q.log() - 7.0).item() == pytest.approx(0.130812, abs=1e-6)
    assert categorical_kl(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_pair_masks_tokens_and_routes_gradients():
    torch.manual_seed(0)
    posterior = torch.randn(2, 3, 4, 5, requires_grad=True)
    prior = torch.randn(2, 3, 4, 5, requires_grad=True)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0]).expand(2, 3, 4)
    dynamics, representation = kl_pair(posterior, prior, mask)
    per_token = categorical_kl(posterior, prior)
    assert torch.allclose(dynamics, per_token[..., 0] + per_token[..., 2])
    assert torch.allclose(representation, dynamics)
    # dynamics: gradient to the prior only; representation: to the posterior only
    g_post, g_prior = torch.autograd.grad(dynamics.sum(), [posterior, prior], allow_unused=True)
    assert (g_post is None or not g_post.any()) and g_prior.abs().sum() > 0
    assert not g_prior[..., 1, :].any()  # an unmasked token gets no gradient
    g_post, g_prior = torch.autograd.grad(representation.sum(), [posterior, prior], allow_unused=True)
    assert (g_prior is None or not g_prior.any()) and g_post.abs().sum() > 0


@pytest.mark.parametrize("per_step, dynamics_loss, representation_loss", [
    # authors' code: max(1, mean KL): dynamics max(1, (0.5 + 3.0)/2 = 1.75) = 1.75,
    #                                 representation max(1, (0.5 + 2.5)/2 = 1.5) = 1.5
    (False, 1.75, 1.5),
    # eq. 3-4 per step: mean(max(1, KL_t)): dynamics (1 + 3.0)/2 = 2.0, representation (1 + 2.5)/2 = 1.75
    (True, 2.0, 1.75),
])
def test_free_bits_and_perplexity_by_hand(per_step, dynamics_loss, representation_loss):
    wm = tiny_world_model("mlp", f"Models.WorldModel.FreeBitsPerStep={str(per_step).lower()}")
    wm.eval()
    K, C = wm.num_variables, wm.num_classes  # 8 x 8
    # tokens 0..3 counted, 4..7 not; counted tokens get the uniform prior (NLL ln 8),
    # uncounted ones a prior that would make the perplexity astronomically large if counted
    token_mask = torch.tensor([1.0] * 4 + [0.0] * 4).expand(1, 2, K)
    prior_logits = torch.where(token_mask.bool()[..., None], torch.full((1, 2, K, C), -math.log(C)),
                               torch.full((1, 2, K, C), -50.0))
    calls = []

    def fake_kl_terms(h, z_current, z_next, posterior_logits_next):
        calls.append((h, z_current, z_next, posterior_logits_next))
        return PriorKL(torch.tensor([[0.5, 3.0]]), torch.tensor([[0.5, 2.5]]), prior_logits, token_mask)

    torch.manual_seed(1)
    obs = torch.randint(0, 256, (1, 3, 64, 64, 3), dtype=torch.uint8)
    with mock.patch.object(wm.prior, "kl_terms", fake_kl_terms):
        total, m = wm.loss(obs, torch.tensor([[1, 2, 3]]), torch.zeros(1, 3), torch.zeros(1, 3))

    # the prior sees h_t, z_t, z_{t+1} and q(z_{t+1}) for t = 0, 1 of the 3 steps
    (h, z_current, z_next, post_next), = calls
    assert h.shape == (1, 2, 64) and z_current.shape == z_next.shape == post_next.shape == (1, 2, K, C)
    assert torch.equal(z_current[:, 1], z_next[:, 0])  # both are z_1
    with torch.no_grad():
        expected_post = unimix_logits(wm.encoder(obs[0, 1:]), 0.01)
    assert torch.allclose(post_next[0], expected_post, atol=1e-5)

    assert m["world_model/dynamics_loss"].item() == pytest.approx(dynamics_loss, abs=1e-6)
    assert m["world_model/representation_loss"].item() == pytest.approx(representation_loss, abs=1e-6)
    assert m["world_model/dynamics_kl"].item() == pytest.approx(1.75, abs=1e-6)  # raw mean, no floor
    assert m["world_model/representation_kl"].item() == pytest.approx(1.5, abs=1e-6)
    assert m["world_model/prior_perplexity"].item() == pytest.approx(8.0, rel=1e-5)  # exp(ln 8)
    # L = L_rec + L_rew + L_term + 0.5 L_dyn + 0.1 L_rep
    rest = m["world_model/reconstruction_loss"] + m["world_model/reward_loss"] + m["world_model/termination_loss"]
    assert (total - rest).item() == pytest.approx(0.5 * dynamics_loss + 0.1 * representation_loss, abs=1e-3)


# --------------------------------------------------------------------------- loss terms by hand


class ConstantHead(nn.Module):
    def __init__(self, output):
        super().__init__()
        self.register_buffer("output", output)

    def forward(self, h):
        return self.output.expand(*h.shape[:-1], self.output.shape[-1])


def test_reconstruction_reward_termination_losses_by_hand():
    wm = tiny_world_model("mlp")
    obs = torch.empty(2, 3, 64, 64, 3, dtype=torch.uint8)
    obs[0], obs[1] = 51, 102  # 0.2 and 0.4 after /255
    rewards = torch.tensor([[0.0, 1.0, -1.0], [1.0, 0.0, 0.0]])
    terminations = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    reward_logits = torch.sin(torch.arange(255, dtype=torch.float32))
    wm.reward_head = ConstantHead(reward_logits)
    wm.termination_head = ConstantHead(torch.tensor([math.log(3.0)]))  # sigmoid = 0.75
    with mock.patch.object(wm, "decode", lambda z: torch.zeros(*z.shape[:-2], 64, 64, 3)):
        total, m = wm.loss(obs, torch.zeros(2, 3, dtype=torch.long), rewards, terminations)

    # reconstruction: sum over 64*64*3 = 12288 values, mean over (B, T):
    # batch 0: 12288 * 0.2^2 = 491.52; batch 1: 12288 * 0.4^2 = 1966.08; mean = 1228.8
    assert m["world_model/reconstruction_loss"].item() == pytest.approx(1228.8, rel=1e-5)

    # reward: cross-entropy against the two-hot of the true reward (bins worked out in
    # test_two_hot_reward_codec_255_bins): r=0 -> bin 127; r=1 -> 0.598515 on 131, 0.401485 on 132;
    # r=-1 -> 0.401485 on 122, 0.598515 on 123
    log_p = torch.log_softmax(reward_logits, -1)
    nll = {0.0: -log_p[127],
           1.0: -(0.598515 * log_p[131] + 0.401485 * log_p[132]),
           -1.0: -(0.401485 * log_p[122] + 0.598515 * log_p[123])}
    expected_reward = sum(nll[r] for r in rewards.flatten().tolist()) / 6
    assert m["world_model/reward_loss"].item() == pytest.approx(expected_reward.item(), abs=1e-4)
    # (a head that ignored the reward would score -log_p[127] everywhere)
    assert abs(expected_reward.item() + log_p[127].item()) > 0.1

    # termination: BCE with p = 0.75: five zeros cost ln 4 = 1.386294, one one costs ln(4/3) = 0.287682
    # mean = (5 * 1.386294 + 0.287682) / 6 = 1.203192
    assert m["world_model/termination_loss"].item() == pytest.approx(1.203192, abs=1e-5)


@pytest.mark.parametrize("prior, overrides", [("mlp", ()), ("maskgit", ()),
                                               ("maskgit", ("Models.MaskGit.Architecture=authors",))])
def test_loss_figures_finite_and_backward(prior, overrides):
    wm = tiny_world_model(prior, *overrides)
    torch.manual_seed(2)
    B, T = 2, 5
    obs = torch.randint(0, 256, (B, T, 64, 64, 3), dtype=torch.uint8)
    rewards = torch.randint(-1, 2, (B, T)).float()
    total, m = wm.loss(obs, torch.randint(0, 18, (B, T)), rewards, (torch.rand(B, T) < 0.2).float())
    assert sorted(m) == sorted(f"world_model/{k}" for k in LOSS_KEYS)
    for key, value in m.items():
        assert value.shape == () and torch.isfinite(value), key
        assert not value.requires_grad, key
    assert m["world_model/dynamics_loss"] >= 1.0 and m["world_model/representation_loss"] >= 1.0
    assert 1.0 < m["world_model/prior_perplexity"] < 8.0 / 0.01  # at most C / unimix floor
    total.backward()
    assert wm.encoder.convs[0].weight.grad.abs().sum() > 0
    assert wm.reward_head[0].weight.grad.abs().sum() > 0
    metrics, finite = wm.update(obs, torch.randint(0, 18, (B, T)), rewards, torch.zeros(B, T))
    assert finite and torch.isfinite(metrics["world_model/grad_norm"])


def test_sampling_figures_by_hand_mlp_prior():
    # K = 2 tokens of C = 2 classes, no unimix, the head a constant: p_1 = (0.5, 0.5), p_2 = (0.8, 0.2).
    # Posterior q_1 = (0.5, 0.5), q_2 = (0.2, 0.8); its sample z = (class 0, class 1).
    # KL = KL(q_1 || p_1) + KL(q_2 || p_2) = 0 + 0.2 ln(0.2/0.8) + 0.8 ln(0.8/0.2) = 0.6 ln 4 = 0.831777
    # perplexity = exp(mean(-ln 0.5, -ln 0.2)) = exp(ln 10 / 2) = sqrt(10) = 3.162278
    prior = MLPPrior(hidden_dim=1, num_variables=2, num_classes=2, unimix=0.0)
    with torch.no_grad():
        prior.head.weight.zero_()
        prior.head.bias.copy_(torch.tensor([0.5, 0.5, 0.8, 0.2]).log())
    h = torch.randn(3, 4, 1)  # (B, T, D): every step gets the same p
    posterior = torch.tensor([[0.5, 0.5], [0.2, 0.8]]).log().expand(3, 4, 2, 2)
    z = F.one_hot(torch.tensor([0, 1]), 2).float().expand(3, 4, 2, 2)
    kl, perplexity = prior.sampling_figures(h, posterior, z)
    assert kl.item() == pytest.approx(0.6 * math.log(4), abs=1e-6)
    assert perplexity.item() == pytest.approx(math.sqrt(10), abs=1e-5)


def test_sampling_figures_of_the_maskgit_prior_count_all_tokens_of_its_all_mask_pass():
    # At T_draft = T_revise = M = 1 sampling is one pass over all [MASK]: p is that pass's
    # distribution for every one of the K tokens (the training KL would count the masked ones only).
    wm = tiny_world_model("maskgit")
    K, C = wm.num_variables, wm.num_classes
    torch.manual_seed(3)
    h = torch.randn(2, 3, wm.cfg.TransformerHiddenDim)
    posterior = torch.log_softmax(2.0 * torch.randn(2, 3, K, C), -1)
    z = random_one_hot(2, 3, K, num_classes=C)
    kl, perplexity = wm.prior.sampling_figures(h, posterior, z)
    with torch.no_grad():
        p = wm.prior.log_probs(h.flatten(0, 1), torch.full((6, K), C)).unflatten(0, (2, 3))  # (B, T, K, C)
    by_hand = (posterior.exp() * (posterior - p)).sum((-1, -2)).mean()
    torch.testing.assert_close(kl, by_hand)
    torch.testing.assert_close(perplexity, (-(p * z).sum(-1)).mean().exp())


def test_world_model_sampling_figures_in_eval_mode_on_the_batch():
    wm = tiny_world_model("mlp")
    torch.manual_seed(4)
    obs = torch.randint(0, 256, (2, 5, 64, 64, 3), dtype=torch.uint8)
    actions = torch.randint(0, 18, (2, 5))
    torch.manual_seed(5)
    figures = wm.sampling_figures(obs, actions)
    wm.eval()  # dropout off, BatchNorm on its running statistics: the model imagination uses
    torch.manual_seed(5)
    with torch.no_grad():
        posterior, z = wm.encode(obs)
        p = wm.prior.logits(wm.sequence_model(z, wm.action_input(actions))[:, :-1])
    assert sorted(figures) == ["world_model/sampling_kl", "world_model/sampling_perplexity"]
    torch.testing.assert_close(figures["world_model/sampling_kl"], categorical_kl(posterior[:, 1:], p).sum(-1).mean())
    torch.testing.assert_close(figures["world_model/sampling_perplexity"],
                               (-(p * z[:, 1:]).sum(-1)).mean().exp())
    assert not figures["world_model/sampling_kl"].requires_grad


# --------------------------------------------------------------------------- KV cache


def make_transformer(mixer="concat", action_dim=5, max_length=16, seed=0):
    torch.manual_seed(seed)
    model = StochasticTransformer(num_variables=4, num_classes=3, action_dim=action_dim, dim=32, num_layers=2,
                                  num_heads=4, feedforward_dim=64, max_length=max_length, dropout=0.1, mixer=mixer)
    return model.eval()


def cached_forward(model, z, a, chunks):
    cache = model.start_cache(z.shape[0], z.device)
    out, start = [], 0
    for size in chunks:
        out.append(model(z[:, start:start + size], a[:, start:start + size], cache))
        start += size
    assert start == z.shape[1] and cache[0].length == start
    return torch.cat(out, 1)


@pytest.mark.parametrize("mixer", sorted(MIXERS))
@pytest.mark.parametrize("chunks", [[5] + [1] * 7,           # context of 5, then one step at a time
                                    [1] * 12,                # every step alone
                                    [4, 3, 3, 2],            # context, then chunks of several steps
                                    [12]])
def test_kv_cache_matches_full_forward(mixer, chunks):
    model = make_transformer(mixer)
    g = torch.Generator().manual_seed(3)
    z, a = random_one_hot(3, 12, 4, num_classes=3, generator=g), random_one_hot(3, 12, num_classes=5, generator=g)
    with torch.no_grad():
        full = model(z, a)
        assert torch.allclose(cached_forward(model, z, a, chunks), full, atol=1e-5)


def test_kv_cache_projects_only_new_steps():
    model = make_transformer()
    seen = []  # (layer, sequence length of the qkv projection's input)
    for i, block in enumerate(model.blocks):
        block.attention.qkv.register_forward_hook(lambda mod, args, out, i=i: seen.append((i, args[0].shape[1])))
    z, a = random_one_hot(2, 12, 4, num_classes=3), random_one_hot(2, 12, num_classes=5)
    with torch.no_grad():
        cached_forward(model, z, a, [4] + [1] * 8)
    # the context is projected once (4 rows per layer); each of the 8 steps projects one new row
    # per layer; re-projecting the history would feed 5, 6, ..., 12 rows instead
    assert seen == [(0, 4), (1, 4)] + [(layer, 1) for _ in range(8) for layer in (0, 1)]
    assert sum(length for _, length in seen) == 2 * 12


def test_sequence_model_is_causal_with_and_without_cache():
    model = make_transformer()
    g = torch.Generator().manual_seed(4)
    z, a = random_one_hot(2, 10, 4, num_classes=3, generator=g), random_one_hot(2, 10, num_classes=5, generator=g)
    z2 = z.clone()
    z2[:, 6] = z[:, 6].roll(1, dims=-1)  # another one-hot at step 6 only
    with torch.no_grad():
        for forward in (lambda zz: model(zz, a), lambda zz: cached_forward(model, zz, a, [8, 1, 1])):
            h, h2 = forward(z), forward(z2)
            assert torch.allclose(h[:, :6], h2[:, :6], atol=1e-6)  # steps before 6 do not see it
            assert (h[:, 6:] - h2[:, 6:]).abs().amax(-1).min() > 1e-4  # steps 6.. all do


def test_sequence_model_layer_norms_use_the_authors_eps():
    # The input norm and each block's two post-norms, built from the config: a 64-wide vector of
    # +-1e-3 has mean 0 and variance 1e-6, so LN gives +-1e-3 / sqrt(1e-6 + eps):
    # 1/sqrt(2) = 0.70711 at the authors' eps 1e-6, 1e-3/sqrt(1.1e-5) = 0.30151 at PyTorch's 1e-5.
    model = tiny_world_model().sequence_model
    x = 1e-3 * torch.tensor([1.0, -1.0]).repeat(32)
    norms = [model.input_norm] + [norm for block in model.blocks
                                  for norm in (block.attention_norm, block.feedforward_norm)]
    assert len(norms) == 3
    for norm in norms:
        torch.testing.assert_close(norm(x), x.sign() / math.sqrt(2), atol=1e-5, rtol=0)


def test_sequence_model_rejects_too_long_sequences():
    model = make_transformer(max_length=8)
    z, a = random_one_hot(1, 9, 4, num_classes=3), random_one_hot(1, 9, num_classes=5)
    with pytest.raises(ValueError, match="TransformerMaxLength"):
        model(z, a)
    cache = model.start_cache(1, "cpu")
    model(z[:, :6], a[:, :6], cache)
    with pytest.raises(ValueError):
        model(z[:, 6:9], a[:, 6:9], cache)


# --------------------------------------------------------------------------- straight-through


def test_straight_through_sample_is_one_hot_with_probability_gradient():
    torch.manual_seed(5)
    logits = torch.log(torch.tensor([0.2, 0.3, 0.5])).expand(20000, 3).clone().requires_grad_(True)
    sample = sample_one_hot_straight_through(logits)
    assert set(sample.detach().unique().tolist()) == {0.0, 1.0} and (sample.sum(-1) == 1).all()
    assert torch.allclose(sample.detach().mean(0), torch.tensor([0.2, 0.3, 0.5]), atol=0.015)
    w = torch.randn(3)
    (grad,) = torch.autograd.grad((sample * w).sum(), logits)
    (expected,) = torch.autograd.grad((torch.softmax(logits, -1) * w).sum(), logits)
    assert torch.allclose(grad, expected, atol=1e-6)


def test_gradient_of_decoded_sample_reaches_encoder():
    wm = tiny_world_model("mlp")
    torch.manual_seed(6)
    obs = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8)
    logits, z = wm.encode(obs)
    assert logits.shape == z.shape == (2, 3, 8, 8)
    assert torch.equal(z.detach(), F.one_hot(z.detach().argmax(-1), 8).float())  # exactly one-hot in value
    assert torch.allclose(logits.exp().sum(-1), torch.ones(2, 3, 8), atol=1e-5)
    loss = (wm.decode(z) - obs.float() / 255).pow(2).sum()
    loss.backward()
    assert wm.encoder.convs[0].weight.grad.abs().sum() > 0
    assert wm.encoder.to_logits.weight.grad.abs().sum() > 0
    # the only path is the straight-through estimator: a detached sample gives the encoder nothing
    wm.zero_grad(set_to_none=True)
    (wm.decode(wm.encode(obs)[1].detach()) - obs.float() / 255).pow(2).sum().backward()
    assert wm.encoder.convs[0].weight.grad is None


# --------------------------------------------------------------------------- shapes and sizes


def test_decoder_in_channels_last_computes_the_plain_layers():
    """The decoder runs its layers in channels-last memory (for speed) and hands back contiguous
    (N, H, W, 3) frames; the numbers are those of the same layers on ordinary NCHW tensors in
    float64, up to float32 rounding (and the CPU's float32 channels-last BatchNorm statistics)."""
    torch.manual_seed(0)
    decoder = Decoder(3, 8, 3, 4, 4)   # 4x4 -> 8 -> 16 -> 32 pixels
    z = F.one_hot(torch.randint(0, 4, (64, 4)), 4).float()                 # (64, K=4, C=4)
    frames = decoder(z)
    assert frames.shape == (64, 32, 32, 3) and frames.is_contiguous()
    reference = decoder.double()
    x = reference.from_latent(z.double().flatten(1)).view(-1, reference.top, 4, 4).contiguous()
    expected = reference.deconvs(x).permute(0, 2, 3, 1)
    assert torch.allclose(frames.double(), expected, atol=1e-5, rtol=1e-5)


def test_encoder_decoder_shapes_full_size_and_cpu_preset():
    obs = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    encoder, decoder = Encoder(3, 32, 4, 32, 32), Decoder(3, 32, 4, 32, 32)
    assert [m.out_channels for m in encoder.convs if isinstance(m, nn.Conv2d)] == [32, 64, 128, 256]
    assert all(m.bias is None for m in encoder.convs if isinstance(m, nn.Conv2d))
    assert encoder.to_logits.in_features == 4096 and encoder.to_logits.out_features == 1024
    logits = encoder(obs)
    assert logits.shape == (2, 32, 32)
    assert decoder.from_latent.in_features == 1024 and decoder.from_latent.out_features == 4096
    assert decoder.from_latent.bias is None
    # the authors' first normalisation: 2-D over 256 channels of 4x4 (not 1-D over 4096 units)
    first_norm = decoder.deconvs[0]
    assert isinstance(first_norm, nn.BatchNorm2d) and first_norm.num_features == 256
    deconvs = [m for m in decoder.deconvs if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in deconvs] == [128, 64, 32, 3]
    assert deconvs[-1].bias is not None and all(m.bias is None for m in deconvs[:-1])
    assert decoder(F.one_hot(logits.argmax(-1), 32).float()).shape == (2, 64, 64, 3)

    wm = tiny_world_model("mlp")
    assert wm.encoder(obs).shape == (2, 8, 8)
    assert wm.decode(torch.zeros(2, 3, 8, 8)).shape == (2, 3, 64, 64, 3)


# Parameter counts of the Atari-size model (18 actions), worked out from SPEC section 4:
ENCODER = (3 * 32 + 32 * 64 + 64 * 128 + 128 * 256) * 16 + 2 * (32 + 64 + 128 + 256) + 4096 * 1024 + 1024
DECODER = 1024 * 4096 + 2 * 256 + (256 * 128 + 128 * 64 + 64 * 32 + 32 * 3) * 16 + 2 * (128 + 64 + 32) + 3
MIXER = (1024 + 18) * 512 + 2 * 512 + 512 * 512 + 2 * 512
BLOCK = 512 * 1536 + 512 * 512 + 2 * 512 + (512 * 1024 + 1024 + 1024 * 512 + 512) + 2 * 512
SEQUENCE = MIXER + 64 * 512 + 2 * 512 + 2 * BLOCK
TRUNK = 512 * 512 + 2 * 512 + 512 * 512 + 2 * 512
REWARD, TERMINATION = TRUNK + 512 * 255 + 255, TRUNK + 512 + 1
MLP_PRIOR = 512 * 1024 + 1024
MASKGIT_BLOCK = 2 * 128 + (128 * 384 + 384) + (128 * 128 + 128) + 2 * 128 + (128 * 128 + 128 + 128 * 128 + 128)
MASKGIT_PRIOR = (33 * 128 + (144 * 128 + 128) + 32 * 128 + 4 * MASKGIT_BLOCK + 2 * 128
                 + (128 * 128 + 128) + 2 * 128 + 32)


@pytest.mark.parametrize("name, prior", [("STORM", MLP_PRIOR), ("GITSTORM", MASKGIT_PRIOR)])
def test_full_size_parameter_counts(name, prior):
    assert (ENCODER, DECODER, SEQUENCE, MLP_PRIOR, MASKGIT_PRIOR) == (4885952, 4884931, 5032960, 525312, 442272)
    cfg = config(name)
    wm = WorldModel(cfg.Models, 18, True)
    assert n_params(wm.encoder) == ENCODER
    assert n_params(wm.decoder) == DECODER
    assert n_params(wm.sequence_model) == SEQUENCE
    assert n_params(wm.prior) == prior
    assert (n_params(wm.reward_head), n_params(wm.termination_head)) == (REWARD, TERMINATION)
    assert n_params(wm) == ENCODER + DECODER + SEQUENCE + prior + REWARD + TERMINATION


# --------------------------------------------------------------------------- state mixers


@pytest.mark.parametrize("mixer", sorted(MIXERS))
@pytest.mark.parametrize("discrete", [True, False])
def test_state_mixers_shape_and_inputs_matter(mixer, discrete):
    assert set(MIXERS) == {"concat", "concat_attn", "cross_attn"}
    torch.manual_seed(7)
    A = 5 if discrete else 6
    module = MIXERS[mixer](4, 3, A, 32, 4)
    z = random_one_hot(2, 3, 4, num_classes=3)
    a = random_one_hot(2, 3, num_classes=A) if discrete else torch.rand(2, 3, A) * 2 - 1
    e = module(z, a)
    assert e.shape == (2, 3, 32)
    assert module(z[0, 0], a[0, 0]).shape == (32,)  # any leading shape
    assert torch.allclose(module(z[0, 0], a[0, 0]), e[0, 0], atol=1e-6)
    # both the latent and the action change e_t
    other_a = a.roll(1, dims=-1) if discrete else -a
    assert (module(z, other_a) - e).abs().amax(-1).min() > 1e-4
    assert (module(z.roll(1, dims=-1), a) - e).abs().amax(-1).min() > 1e-4


# --------------------------------------------------------------------------- imagination


def policy_recorder(action_dim, seen):
    def policy(latent, hidden):
        seen.append((latent.clone(), hidden.clone()))
        return torch.randint(0, action_dim, (latent.shape[0],))
    return policy


@pytest.mark.parametrize("prior", PRIORS)
def test_imagine_shapes_and_full_forward_agreement(prior):
    wm = tiny_world_model(prior)
    B, C, H, K, Cl = 3, 4, 6, 8, 8
    g = torch.Generator().manual_seed(8)
    z_context = random_one_hot(B, C, K, num_classes=Cl, generator=g)
    context_actions = torch.randint(0, 18, (B, C), generator=g)
    obs = torch.randint(0, 256, (B, C, 64, 64, 3), dtype=torch.uint8, generator=g)
    seen, caches = [], []
    start_cache = wm.sequence_model.start_cache
    with (mock.patch.object(wm, "encode", lambda o: (torch.zeros_like(z_context), z_context)),
          mock.patch.object(wm.sequence_model, "start_cache", lambda *a, **k: caches.append(start_cache(*a, **k))
                            or caches[-1])):
        imag = wm.imagine(obs, context_actions, policy_recorder(18, seen), H)
    # one cache per layer, sized to the C + H = 10 steps fed, not TransformerMaxLength = 32
    assert [layer.keys.shape for layer in caches[0]] == [(B, 2, C + H, 32)]
    assert imag.latents.shape == (B, H + 1, K * Cl) and imag.hiddens.shape == (B, H + 1, 64)
    assert imag.actions.shape == imag.rewards.shape == imag.terminations.shape == (B, H)
    for x in imag:
        assert x.device == wm.device
    assert torch.equal(imag.latents.unflatten(-1, (K, Cl)).sum(-1), torch.ones(B, H + 1, K))
    assert set(imag.terminations.unique().tolist()) <= {0.0, 1.0}
    # the policy saw s_l = [z_l, h_l] for l = 0..H-1
    assert len(seen) == H
    for l, (latent, hidden) in enumerate(seen):
        assert torch.equal(latent, imag.latents[:, l]) and torch.equal(hidden, imag.hiddens[:, l])

    # the cached rollout equals the full forward over [context, z_0..z_{H-1}] with [actions, a_0..a_{H-1}];
    # h_0 comes from the last context step, h_{l+1} from consuming (z_l, a_l), which predicts r_l, c_l
    z_all = torch.cat([z_context, imag.latents[:, :-1].unflatten(-1, (K, Cl))], 1)
    a_all = torch.cat([context_actions, imag.actions], 1)
    with torch.no_grad():
        full = wm.sequence_model(z_all, wm.action_input(a_all))
        assert torch.allclose(imag.hiddens[:, 0], full[:, C - 1], atol=1e-5)
        assert torch.allclose(imag.hiddens[:, 1:], full[:, C:], atol=1e-5)
        assert torch.allclose(imag.rewards, wm.reward_codec.decode(wm.reward_head(full[:, C:])), atol=1e-4)
        assert torch.equal(imag.terminations, (wm.termination_head(full[:, C:]).squeeze(-1) > 0).float())
    assert not wm.training  # imagination runs in eval mode


def _forbidden(name):
    def call(*args, **kwargs):
        raise AssertionError(f"imagine() synchronised with the host through Tensor.{name}")
    return call


@pytest.mark.parametrize("prior", PRIORS)
def test_imagine_never_syncs_with_the_host(prior):
    """No .item()/.cpu()/.tolist()/.numpy() and no Python truth test of a tensor (`if t:`,
    `bool(t)`): each is a device-to-host copy that stalls a CUDA rollout at every step."""
    wm = tiny_world_model(prior)
    torch.manual_seed(9)
    obs = torch.randint(0, 256, (2, 4, 64, 64, 3), dtype=torch.uint8)
    actions = torch.randint(0, 18, (2, 4))
    policy = policy_recorder(18, [])
    names = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__")
    with mock.patch.multiple(torch.Tensor, **{name: _forbidden(name) for name in names}):
        imag = wm.imagine(obs, actions, policy, 5)
    assert imag.rewards.shape == (2, 5)


@pytest.mark.parametrize("prior", PRIORS)
def test_updates_never_sync_with_the_host(prior):
    """A world-model update and an agent update, non-finite check and skipped step included,
    run without waiting for the device: `finite` comes back as a tensor."""
    from agents import ActorCriticAgent
    wm = tiny_world_model(prior)
    agent = ActorCriticAgent(config("STORM", "+preset=cpu").Models.Agent, wm.latent_dim + 64, 18, True)
    torch.manual_seed(10)
    obs = torch.randint(0, 256, (2, 6, 64, 64, 3), dtype=torch.uint8)
    actions = torch.randint(0, 18, (2, 6))
    names = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__")
    with mock.patch.multiple(torch.Tensor, **{name: _forbidden(name) for name in names}):
        _, wm_finite = wm.update(obs, actions, torch.randn(2, 6), torch.zeros(2, 6))
        _, agent_finite = agent.update(wm.imagine(obs, actions, agent.policy, 4))
        wm.sampling_figures(obs, actions)   # once per log, on the device too
    assert bool(wm_finite) and bool(agent_finite)


@pytest.mark.parametrize("prior", PRIORS)
def test_non_finite_world_model_update_changes_no_weight_and_no_optimiser_state(prior):
    wm = tiny_world_model(prior)
    torch.manual_seed(11)
    obs = torch.randint(0, 256, (2, 6, 64, 64, 3), dtype=torch.uint8)
    actions = torch.randint(0, 18, (2, 6))
    _, finite = wm.update(obs, actions, torch.randn(2, 6), torch.zeros(2, 6))   # Adam has state now
    assert bool(finite)
    state = copy.deepcopy(wm.state_dict())
    optimizer_state = copy.deepcopy(wm.optimizer.state_dict())
    bad_rewards = torch.randn(2, 6)
    bad_rewards[0, 3] = float("nan")
    metrics, finite = wm.update(obs, actions, bad_rewards, torch.zeros(2, 6))
    assert not bool(finite) and not torch.isfinite(metrics["world_model/reward_loss"])
    after = wm.state_dict()
    # every parameter, and BatchNorm's running statistics of the skipped forward aside, is as before
    changed = [k for k, v in state.items() if not torch.equal(v, after[k]) and "running" not in k
               and "num_batches" not in k]
    assert changed == []
    for key, value in wm.optimizer.state_dict()["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, optimizer_state["state"][key][name]), (key, name)


# --------------------------------------------------------------------------- overfit on real frames
# (boxing_steps: tests/conftest.py)


@pytest.mark.parametrize("prior", PRIORS)
def test_overfit_real_frames(prior, boxing_steps):
    """100 updates (4 x 16 steps, lr 1e-3 instead of 1e-4 so a CPU minute suffices) on 300 frames.

    Measured over seeds 0-3 (2 busy cores, ~15-20 s each): reconstruction ~4000-5000 -> ~80-86
    (x47-x58), reward 5.2-5.8 -> 0.27-0.40 (x14-x19). The raw dynamics KL *rises* during training
    (MLP 1.6 -> ~2; MaskGIT, which counts masked tokens only, 0.3 -> ~3) because the posterior
    goes from near-uniform to confident, so "the KL falls" is not an honest check. Instead the
    trained prior is compared with its untrained copy on the same trained posterior (and the same
    MaskGIT masks): KL lower by x2.0-x3.3 (MLP) and x1.45-x2.05 (MaskGIT); perplexity lower by
    x1.53-x1.76 (MLP) and x1.54-x2.1 (MaskGIT). Thresholds leave margin below the worst seed.
    """
    wm = tiny_world_model(prior, "Models.WorldModel.LearningRate=1e-3")
    untrained_prior = copy.deepcopy(wm.prior)
    torch.manual_seed(10)
    history = []
    for _ in range(100):
        metrics, finite = wm.update(*boxing_steps.sample(4, 16))
        assert finite
        history.append({k.split("/")[1]: v.item() for k, v in metrics.items()})
    first = history[0]
    last = {k: sum(h[k] for h in history[-10:]) / 10 for k in first}
    assert last["reconstruction_loss"] < first["reconstruction_loss"] / 10
    assert last["reward_loss"] < first["reward_loss"] / 4
    assert last["termination_loss"] < first["termination_loss"]

    wm.eval()
    idx = torch.arange(0, 288, 16)[:, None] + torch.arange(16)  # 18 disjoint sequences of 16 steps
    obs, actions = boxing_steps.obs[0, idx], boxing_steps.action[0, idx]
    figures = {}
    with torch.no_grad():
        torch.manual_seed(11)
        posterior, z = wm.encode(obs)
        h = wm.sequence_model(z, wm.action_input(actions))
        for name, head in (("trained", wm.prior), ("untrained", untrained_prior)):
            torch.manual_seed(12)  # the same MaskGIT masks for both
            kl = head.kl_terms(h[:, :-1], z[:, :-1], z[:, 1:], posterior[:, 1:])
            nll = -(kl.prior_logits * z[:, 1:]).sum(-1)
            figures[name] = (kl.dynamics_kl.mean().item(),
                             math.exp(((nll * kl.token_mask).sum() / kl.token_mask.sum()).item()))
    (kl_trained, ppl_trained), (kl_untrained, ppl_untrained) = figures["trained"], figures["untrained"]
    assert kl_trained < kl_untrained / 1.2, figures
    assert ppl_trained < ppl_untrained / 1.25, figures


def test_world_model_update_scales_frames_once_and_writes_conv_activations_in_place():
    """The work an update does on frames and conv activations, read off torch.profiler: the uint8
    batch becomes floats in [0, 1] in one op, shared by the encoder and the reconstruction target
    (it was two conversions and two divisions), and the encoder's and decoder's ReLUs run in place
    (an out-of-place ReLU writes a new tensor per layer: 1024 x 32 x 32 x 32 floats at paper size).
    Scaling inside the encoder gives the same logits bit for bit."""
    wm = tiny_world_model()
    torch.manual_seed(12)
    obs = torch.randint(0, 256, (2, 6, 64, 64, 3), dtype=torch.uint8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profiler:
        wm.update(obs, torch.randint(0, 18, (2, 6)), torch.randn(2, 6), torch.zeros(2, 6))
    frame_shapes = ([2, 6, 64, 64, 3], [12, 64, 64, 3], [12, 3, 64, 64])

    def within_div(event):   # uint8 / 255 converts to float inside the division
        return event.cpu_parent is not None and (event.cpu_parent.name == "aten::div" or within_div(event.cpu_parent))

    on_frames = [e.name for e in profiler.events() if e.name in ("aten::_to_copy", "aten::div") and e.input_shapes
                 and e.input_shapes[0] in frame_shapes and not within_div(e)]
    assert on_frames == ["aten::div"]
    out_of_place_relu = [e.input_shapes for e in profiler.events() if e.name in ("aten::relu", "aten::clamp_min")
                         and e.input_shapes and len(e.input_shapes[0]) == 4]
    assert out_of_place_relu == []
    frames = obs[0]
    assert torch.equal(wm.encoder(frames), wm.encoder(frames / 255.0))


def test_memory_layout_benchmark_prints_every_figure(capsys, one_torch_thread):
    """tools/benchmarks/memory_layout.py (docs/speed.md's layer timings) runs, at a tiny batch."""
    from tools.benchmarks.memory_layout import main
    main(["--frames", "2", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ConvTranspose2d 256->128 at 4x4", "ConvTranspose2d 128->64 at 8x8", "ConvTranspose2d 64->32 at 16x16",
        "ConvTranspose2d 32->3 at 32x32", "Decoder forward + backward", "BatchNorm2d(32) on 2 x 32 x 32 x 32, largest "
        "deviation from float64"]
