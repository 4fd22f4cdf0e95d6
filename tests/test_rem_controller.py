"""REM's controller C (sub_models/rem/controller.py): lambda-returns and the loss by hand, the
parameter count of the spec, burn-in masking and action feeding against stepping by hand, the
action sampler's statistics, gradients that reach C only, and the sign of the policy gradient
in a world model rigged to reward one action."""
import functools
import math
from types import SimpleNamespace

import pytest
import torch

from config import ConfigError, plain_section
from families import compose_config
from sub_models.rem import build_rem_models
from sub_models.rem.controller import Controller, lambda_returns, sample_actions
from sub_models.rem.tokenizer import codes_from_tokens
from sub_models.rem.world_model import Imagination, POPWorldModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.lru_cache(maxsize=None)
def config(*overrides):
    return compose_config("REM", list(overrides))


def controller_cfg(*overrides, **changes):
    """Models.Controller as the plain namespace the models keep, with `changes` applied."""
    return SimpleNamespace(**{**vars(plain_section(config(*overrides).Models.Controller)), **changes})


def tiny_controller(seed=0, actions=4, **changes):
    """CPU preset sizes: codes 32 x 8 x 8, convs [16, 8], hidden 64."""
    torch.manual_seed(seed)
    return Controller(controller_cfg("+preset=rem_cpu", **changes), 32, 8, actions)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def segment(batch, length, vocab, actions, seed=1):
    """Random tokens (B, T, 64) and actions (B, T) of a left-padded segment: row i has its first
    3 * i steps padded (the last 3 are always real)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, length, 64), generator=g)
    taken = torch.randint(0, actions, (batch, length), generator=g)
    mask = torch.arange(length)[None] >= 3 * torch.arange(batch)[:, None]
    return tokens, taken, mask


def rigged_world_model(action_dim, rewarded_action=None):
    """CPU-preset M whose RetNet is the identity (retention W_O and FFN output zeroed, so a token's
    output is its own embedding), that never predicts a termination, and whose reward is +1
    exactly when the action is `rewarded_action` (always, when None), 0 otherwise."""
    cfg = config("+preset=rem_cpu")
    vocab = cfg.Models.Tokenizer.VocabSize
    wm = POPWorldModel(cfg.Models.RetNetWorldModel, vocab, action_dim)
    with torch.no_grad():
        for layer in wm.retnet.layers:
            for linear in (layer.retention.out_proj, layer.linear2):
                linear.weight.zero_()
                linear.bias.zero_()
        first, _, last = wm.head_rewards
        first.weight.copy_(torch.eye(wm.embed_dim))
        first.bias.zero_()
        last.weight.zero_()
        if rewarded_action is None:
            last.bias.copy_(torch.tensor([-30.0, -30.0, 30.0]))                    # class 2 = reward +1
        else:
            wm.token_embedding.weight[vocab:].zero_()
            wm.token_embedding.weight[vocab + rewarded_action, 0] = 1.0            # only a* has feature 0 set
            last.weight[2, 0] = 60.0                                                # a*: logits (-30, 0, 30)
            last.bias.copy_(torch.tensor([-30.0, 0.0, -30.0]))                      # else: (-30, 0, -30)
        wm.head_ends[2].weight.zero_()
        wm.head_ends[2].bias.copy_(torch.tensor([30.0, -30.0]))
    return wm


# --------------------------------------------------------------------------- returns and sizes


def test_lambda_returns_by_hand():
    """gamma 0.9, lambda 0.8, so (1 - lambda) = 0.2. Row 0 terminates at t = 1 (and at t = 3, which
    is not read: the last step only bootstraps); row 1 never does.
    row 0: r = (1, 0, 2, 5), V = (0.5, 1, 2, 4), d = (0, 1, 0, 1)
      G3 = V3 = 4
      G2 = 2 + 0.9 (0.2 * 4 + 0.8 * 4) = 2 + 3.6 = 5.6
      G1 = 0 + 0.9 * 0 * (...) = 0
      G0 = 1 + 0.9 (0.2 * 1 + 0.8 * 0) = 1.18
    row 1: r = (0, 1, 0, 0), V = (1, 2, 3, 10), d = 0
      G3 = 10
      G2 = 0 + 0.9 (0.2 * 10 + 0.8 * 10) = 9
      G1 = 1 + 0.9 (0.2 * 3 + 0.8 * 9) = 1 + 0.9 * 7.8 = 8.02
      G0 = 0 + 0.9 (0.2 * 2 + 0.8 * 8.02) = 0.9 * 6.816 = 6.1344"""
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0, 2.0, 4.0], [1.0, 2.0, 3.0, 10.0]], dtype=torch.float64)
    ends = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor([[1.18, 0.0, 5.6, 4.0], [6.1344, 8.02, 9.0, 10.0]], dtype=torch.float64)
    returns = lambda_returns(rewards, values, ends, 0.9, 0.8)
    assert torch.allclose(returns, expected, atol=1e-6, rtol=0)
    assert torch.equal(lambda_returns(rewards, values, ends.bool(), 0.9, 0.8), returns)


def test_paper_size_parameter_count():
    """E 256, 8 x 8 grid, convs [128, 64], hidden 512, |A| = 4:
    conv1 256*128*9 + 128 = 295,040;  conv2 128*64*9 + 64 = 73,792;
    linear 64*8*8 = 4096 -> 512: 4096*512 + 512 = 2,097,664;
    LSTMCell 4*512*(512 + 512) + 2*4*512 = 2,101,248;  actor 512*4 + 4 = 2,052;  critic 513;
    action embedding 4*512 = 2,048.  Sum 4,572,357 (2,048 fewer without action inputs)."""
    cfg = config()
    c = Controller(plain_section(cfg.Models.Controller), 256, 8, 4)
    assert [n_params(c.convs[0]), n_params(c.convs[2])] == [295_040, 73_792]
    assert [n_params(c.dense), n_params(c.lstm), n_params(c.actor), n_params(c.critic)] == \
           [2_097_664, 2_101_248, 2_052, 513]
    assert n_params(c.action_embedding) == 2_048 and n_params(c) == 4_572_357
    no_actions = SimpleNamespace(**{**vars(plain_section(cfg.Models.Controller)), "IncludeActionInputs": False})
    assert n_params(Controller(no_actions, 256, 8, 4)) == 4_572_357 - 2_048
    built = build_rem_models(cfg, 4, True)["controller"]
    assert n_params(built) == 4_572_357
    codes = torch.randn(3, 256, 8, 8)
    logits, value, (h, cell) = c.observe(codes, c.initial_state(3))
    assert logits.shape == (3, 4) and value.shape == (3,) and h.shape == cell.shape == (3, 512)


def test_controller_config_errors():
    for override, message in [("Models.Controller.TrainTemperature=0.0", "TrainTemperature=0.0: expected > 0"),
                              ("Models.Controller.ConvChannels=[]", r"ConvChannels=\[\]: expected a non-empty list")]:
        with pytest.raises(ConfigError, match=message):
            compose_config("REM", [override])


# --------------------------------------------------------------------------- burn-in


def step_by_hand(controller, codes, actions, valid, feeds):
    """One row (T, E, g, g): observe every real frame, then feed its action when `feeds`."""
    state = controller.initial_state(1)
    for t in range(codes.shape[0]):
        if valid[t]:
            _, _, state = controller.observe(codes[t:t + 1], state)
            if feeds:
                state = controller.feed_action(actions[t:t + 1], state)
    return state


@pytest.mark.parametrize("feeds", [False, True])
def test_burn_in_masks_padding_and_feeds_actions_only_when_asked(feeds):
    controller = tiny_controller(BurnInFeedsActions=feeds).double()
    torch.manual_seed(2)
    codes = torch.randn(4, 6, 32, 8, 8, dtype=torch.float64)
    actions = torch.randint(0, 4, (4, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1],
                         [0, 0, 1, 1, 1, 1],        # left padding
                         [0, 0, 0, 0, 0, 0],        # fully padded
                         [1, 0, 1, 0, 0, 1]], dtype=torch.bool)   # masked steps anywhere keep the state
    h, c = controller.burn_in(codes, actions, mask)
    assert torch.equal(h[2], torch.zeros(64, dtype=torch.float64)) and torch.equal(c[2], torch.zeros_like(c[2]))
    for row in range(4):
        h_ref, c_ref = step_by_hand(controller, codes[row], actions[row], mask[row], feeds)
        assert torch.allclose(h[row], h_ref[0], atol=1e-12, rtol=0)
        assert torch.allclose(c[row], c_ref[0], atol=1e-12, rtol=0)
    h_other, _ = controller.burn_in(codes, (actions + 1) % 4, mask)
    if feeds:
        assert not torch.allclose(h_other[[0, 1, 3]], h[[0, 1, 3]])
    else:                                              # REM's burn-in (issue a): actions are never read
        assert torch.equal(h_other, h)


def test_without_action_inputs_actions_are_never_fed():
    controller = tiny_controller(IncludeActionInputs=False, BurnInFeedsActions=True)
    state = controller.initial_state(2)
    assert controller.action_embedding is None
    assert controller.feed_action(torch.tensor([0, 3]), state) is state
    codes, actions = torch.randn(2, 3, 32, 8, 8), torch.randint(0, 4, (2, 3))
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert torch.equal(controller.burn_in(codes, actions, mask)[0], controller.burn_in(codes, 3 - actions, mask)[0])


# --------------------------------------------------------------------------- action sampling


def frequencies(actions, action_dim):
    return torch.bincount(actions, minlength=action_dim).double() / actions.numel()


def within_5_sigma(freq, probs, n):
    """Each empirical frequency within 5 binomial standard deviations of its probability."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    return bool(((freq - probs).abs() <= 5 * (probs * (1 - probs) / n).sqrt() + 1e-12).all())


def test_sample_actions_temperature_and_epsilon():
    torch.manual_seed(0)
    n = 20_000
    # probabilities 1:2:3:4 at T = 1; (p^2) 1:4:9:16 at T = 0.5
    logits = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0])).expand(n, 4)
    actions = sample_actions(logits, 1.0)
    assert actions.dtype == torch.long and actions.shape == (n,)
    assert within_5_sigma(frequencies(actions, 4), [0.1, 0.2, 0.3, 0.4], n)
    assert within_5_sigma(frequencies(sample_actions(logits, 0.5), 4), [1 / 30, 4 / 30, 9 / 30, 16 / 30], n)
    # a near-deterministic policy: epsilon = 1 is uniform; epsilon = 0.2 keeps action 0 with 0.8 + 0.2 / 4
    sure = torch.tensor([50.0, 0.0, 0.0, 0.0]).expand(n, 4)
    assert within_5_sigma(frequencies(sample_actions(sure, 1.0, epsilon=1.0), 4), [0.25] * 4, n)
    assert within_5_sigma(frequencies(sample_actions(sure, 1.0, epsilon=0.2), 4), [0.85, 0.05, 0.05, 0.05], n)
    # temperature -> 0: the argmax (logit gaps of 0.1 become 100 at T = 1e-3)
    order = torch.stack([torch.randperm(4) for _ in range(1000)])
    spread = order.float() * 0.1
    assert torch.equal(sample_actions(spread, 1e-3), order.argmax(1))
    with pytest.raises(ValueError, match="temperature must be > 0, got 0.0"):
        sample_actions(spread, 0.0)
    with pytest.raises(ValueError, match="epsilon must be a probability in \\[0, 1\\], got 1.5"):
        sample_actions(spread, 1.0, epsilon=1.5)


# --------------------------------------------------------------------------- loss and update


def test_loss_by_hand_with_a_uniform_policy_and_a_constant_critic(monkeypatch):
    """Actor weights 0 (uniform policy: log pi = -ln 4 for every action, entropy ln 4), critic
    V = c = 2 everywhere, M rigged to reward +1 at every step and never terminate. Then with
    H = 10 - 2 + 1 = 9 steps, G_8 = c and G_t = 1 + gamma ((1 - lambda) c + lambda G_{t+1}), and
    over t = 0..7: L_pi = ln 4 * mean(G_t - c), L_V = mean((c - G_t)^2), L_H = -0.001 ln 4."""
    cfg = config("+preset=rem_cpu")
    controller = tiny_controller()
    with torch.no_grad():
        controller.actor.weight.zero_()
        controller.actor.bias.zero_()
        controller.critic.weight.zero_()
        controller.critic.bias.fill_(2.0)
    wm = rigged_world_model(4).train()
    codebook = torch.randn(cfg.Models.Tokenizer.VocabSize, 32)
    tokens, actions, mask = segment(3, 21, cfg.Models.Tokenizer.VocabSize, 4)
    calls = {"start": [], "step": 0, "predict": 0}
    start, step, predict = wm.start_imagination, Imagination.step, Imagination.next_observation_logits

    def count(name, original):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return wrapped

    def record_context(*args):
        calls["start"].append(args)
        return start(*args)
    monkeypatch.setattr(wm, "start_imagination", record_context)
    monkeypatch.setattr(Imagination, "step", count("step", step))
    monkeypatch.setattr(Imagination, "next_observation_logits", count("predict", predict))

    total, metrics = controller.loss(tokens, actions, mask, wm, codebook, horizon=10, context_length=2)
    (ctx_tokens, ctx_actions, _), = calls["start"]
    assert torch.equal(ctx_tokens, tokens[:, -2:]) and torch.equal(ctx_actions, actions[:, -2:-1])
    assert (calls["step"], calls["predict"]) == (9, 8) and not wm.training
    gamma, lam, c = 0.995, 0.95, 2.0
    returns = [c]
    for _ in range(8):
        returns.insert(0, 1.0 + gamma * ((1 - lam) * c + lam * returns[0]))
    g = torch.tensor(returns[:8], dtype=torch.float64)
    expected = {"policy_loss": math.log(4) * (g - c).mean().item(), "value_loss": (g - c).square().mean().item(),
                "entropy_loss": -0.001 * math.log(4), "entropy": math.log(4), "imagined_return": returns[0],
                "imagined_reward": 1.0, "imagined_termination": 0.0}
    for key, value in expected.items():
        assert metrics[f"controller/{key}"].item() == pytest.approx(value, rel=1e-5, abs=1e-6), key
    parts = expected["policy_loss"] + expected["value_loss"] + expected["entropy_loss"]
    assert total.item() == pytest.approx(parts, rel=1e-5)


def test_update_trains_the_controller_only():
    cfg = config("+preset=rem_cpu")
    torch.manual_seed(0)
    tokenizer, wm, controller = build_rem_models(cfg, 4, True).values()
    tokens, actions, mask = segment(3, 21, cfg.Models.Tokenizer.VocabSize, 4)
    before = {name: p.detach().clone() for name, p in controller.named_parameters()}
    metrics, finite = controller.update(tokens, actions, mask, wm, tokenizer.codebook, horizon=10,
                                        context_length=2)
    assert finite.dim() == 0 and bool(finite)
    assert set(metrics) == {f"controller/{k}" for k in (
        "total_loss", "policy_loss", "entropy_loss", "entropy", "value_loss", "imagined_return", "imagined_reward",
        "imagined_termination", "grad_norm")}
    assert all(v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in metrics.values())
    assert all(p.grad is None for p in wm.parameters()) and all(p.grad is None for p in tokenizer.parameters())
    for name, p in controller.named_parameters():          # every part of C, the action embedding included
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert not torch.equal(p, before[name]), name
    assert not wm.training


def test_policy_gradient_raises_the_probability_of_the_rewarded_action():
    """M rewards action 2 only (+1, else 0). The probability that C gives action 2 at step 0 of a
    rollout (after burn-in on held-out segments) starts near 1/4 and must pass 0.6 after 25
    updates at lr 1e-2. Measured, 1 thread: 0.278 -> 0.999 here (controller seeds 1 / 2:
    0.251 -> 0.999, 0.258 -> 1.000); with the sign of L_pi flipped, 0.278 -> 0.000."""
    cfg = config("+preset=rem_cpu")
    vocab = cfg.Models.Tokenizer.VocabSize
    controller = tiny_controller(seed=0, LearningRate=1e-2)
    wm = rigged_world_model(4, rewarded_action=2)
    codebook = torch.randn(vocab, 32)
    probe_tokens, probe_actions, probe_mask = segment(16, 21, vocab, 4, seed=100)
    probe_codes = codes_from_tokens(probe_tokens, codebook)                       # (16, 21, 32, 8, 8)

    def p_rewarded():
        with torch.no_grad():
            state = controller.burn_in(probe_codes[:, :-1], probe_actions[:, :-1], probe_mask[:, :-1])
            logits, _, _ = controller.observe(probe_codes[:, -1], state)
            return logits.softmax(-1)[:, 2].mean().item()

    start = p_rewarded()
    for i in range(25):
        tokens, actions, mask = segment(8, 21, vocab, 4, seed=i)
        metrics, finite = controller.update(tokens, actions, mask, wm, codebook, horizon=10, context_length=2)
        assert finite
    assert 0.15 < start < 0.35
    assert p_rewarded() > 0.6
    assert metrics["controller/imagined_reward"].item() > 0.5       # the rollouts now mostly take action 2

