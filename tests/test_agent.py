"""The actor-critic of agents.py against numbers worked out by hand (SPEC 5).

Every expected value below is derived in the comment next to it; none is produced by
running the code under test.
"""
import functools
import math

import pytest
import torch

from agents import ActorCriticAgent, ContinuousActionDist, ReturnNormalizer, lambda_returns, percentile
from families import compose_config
from sub_models.world_models import Imagination

LATENT, HIDDEN = 8, 8          # s = [z (8), h (8)] -> state_dim 16
STATE_DIM = LATENT + HIDDEN


@functools.lru_cache(maxsize=None)
def agent_config(*overrides):
    return compose_config("STORM", ["+preset=cpu", "Models.Agent.HiddenDim=16", *overrides]).Models.Agent


def make_agent(*overrides, discrete=True, action_dim=2, seed=0):
    torch.manual_seed(seed)
    return ActorCriticAgent(agent_config(*overrides), STATE_DIM, action_dim, discrete)


def rollout(batch=2, horizon=3, rewards=None, terminations=None, seed=1, action_dim=2, discrete=True):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, horizon + 1, LATENT, generator=g)
    hiddens = torch.randn(batch, horizon + 1, HIDDEN, generator=g)
    if discrete:
        actions = torch.randint(action_dim, (batch, horizon), generator=g)
    else:
        actions = torch.rand(batch, horizon, action_dim, generator=g) * 2 - 1
    rewards = torch.randn(batch, horizon, generator=g) if rewards is None else rewards
    terminations = torch.zeros(batch, horizon) if terminations is None else terminations
    return Imagination(latents, hiddens, actions, rewards, terminations)


def constant_head(head, logits):
    """Make an MLP's last Linear output `logits` whatever the input (weight 0, bias = logits)."""
    with torch.no_grad():
        head[-1].weight.zero_()
        head[-1].bias.copy_(logits)


# ----------------------------------------------------------------------------- lambda-returns
def test_lambda_returns_hand_example_with_termination():
    # gamma = 0.5, lambda = 0.5, r = [1, 2, 3], c = [1, 0, 1], V(s_0..s_3) = [1, 2, 3, 4].
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    continues = torch.tensor([[1.0, 0.0, 1.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]])

    # Paper (StormCompat=false): G_l = r_l + g c_l [(1-l) V(s_{l+1}) + l G_{l+1}], G_3 = V(s_3) = 4
    #   G_2 = 3 + 0.5*1*(0.5*V_3 + 0.5*G_3) = 3 + 0.5*(2 + 2)     = 5
    #   G_1 = 2 + 0.5*0*(...)                                       = 2     (terminates: no bootstrap)
    #   G_0 = 1 + 0.5*1*(0.5*V_1 + 0.5*G_1) = 1 + 0.5*(1 + 1)     = 2
    paper = lambda_returns(rewards, continues, values, 0.5, 0.5, storm_compat=False)
    torch.testing.assert_close(paper, torch.tensor([[2.0, 2.0, 5.0]]), rtol=0, atol=1e-6)

    # Authors' code (StormCompat=true): V(s_l) in place of V(s_{l+1}), G_3 = V(s_3) = 4
    #   G_2 = 3 + 0.5*(0.5*V_2 + 0.5*G_3) = 3 + 0.5*(1.5 + 2)      = 4.75
    #   G_1 = 2 + 0                                                  = 2
    #   G_0 = 1 + 0.5*(0.5*V_0 + 0.5*G_1) = 1 + 0.5*(0.5 + 1)      = 1.75
    compat = lambda_returns(rewards, continues, values, 0.5, 0.5, storm_compat=True)
    torch.testing.assert_close(compat, torch.tensor([[1.75, 2.0, 4.75]]), rtol=0, atol=1e-6)


def test_lambda_returns_paper_constants_batched():
    # gamma = 0.985, lambda = 0.95; row 0: r = [1, 0], c = [1, 1], V = [0, 0, 10];
    # row 1 is the 3-step example above cut to 2 steps with c = [0, 1] and V = [1, 2, 3].
    rewards = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    continues = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    values = torch.tensor([[0.0, 0.0, 10.0], [1.0, 2.0, 3.0]])

    # Paper, row 0: G_2 = 10
    #   G_1 = 0 + 0.985*(0.05*10 + 0.95*10)          = 0.985*10            = 9.85
    #   G_0 = 1 + 0.985*(0.05*V_1 + 0.95*9.85)       = 1 + 0.985*9.3575    = 10.2171375
    # Paper, row 1: G_2 = 3
    #   G_1 = 2 + 0.985*(0.05*3 + 0.95*3)            = 2 + 2.955           = 4.955
    #   G_0 = 1 + 0.985*0*(...)                                            = 1
    paper = lambda_returns(rewards, continues, values, 0.985, 0.95, storm_compat=False)
    torch.testing.assert_close(paper, torch.tensor([[10.2171375, 9.85], [1.0, 4.955]]), rtol=0, atol=1e-5)

    # Compat, row 0: G_2 = 10
    #   G_1 = 0 + 0.985*(0.05*V_1 + 0.95*10)         = 0.985*9.5           = 9.3575
    #   G_0 = 1 + 0.985*(0.05*V_0 + 0.95*9.3575)     = 1 + 0.985*8.889625  = 9.756280625
    # Compat, row 1: G_2 = 3
    #   G_1 = 2 + 0.985*(0.05*V_1 + 0.95*3)          = 2 + 0.985*2.95      = 4.90575
    #   G_0 = 1
    compat = lambda_returns(rewards, continues, values, 0.985, 0.95, storm_compat=True)
    torch.testing.assert_close(compat, torch.tensor([[9.756280625, 9.3575], [1.0, 4.90575]]), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- return normaliser
def test_percentile_is_the_kth_smallest_with_k_int_qn_as_the_authors():
    # k-th smallest (1-based), k = int(q n), no interpolation. [0, 10]: P5: int(0.1) = 0 -> at
    # least 1 -> 0; P95: int(1.9) = 1 -> 0 (interpolation would give 0.5 and 9.5); P100: 10.
    x = torch.tensor([10.0, 0.0])
    assert percentile(x, 0.05).item() == 0.0 and percentile(x, 0.95).item() == 0.0
    assert percentile(x, 1.0).item() == 10.0
    # [0, 1, 4, 9, 16]: q = 0.3 -> int(1.5) = 1 -> 0; q = 0.5 -> 2 -> 1; q = 0.95 -> int(4.75) = 4 -> 9
    y = torch.tensor([16.0, 1.0, 9.0, 0.0, 4.0])
    assert [percentile(y, q).item() for q in (0.0, 0.3, 0.5, 0.95, 1.0)] == [0.0, 0.0, 1.0, 9.0, 16.0]
    # 56 values 0..55: P5 -> int(2.8) = 2 -> 1; P95 -> int(53.2) = 53 -> 52 (spread 51; torch.quantile: 49.5)
    z = torch.arange(56.0)[torch.randperm(56, generator=torch.Generator().manual_seed(0))].reshape(7, 8)
    assert percentile(z, 0.05).item() == 1.0 and percentile(z, 0.95).item() == 52.0
    w = torch.randn(7, 11, generator=torch.Generator().manual_seed(0))
    for q in (0.05, 0.5, 0.95):
        assert percentile(w, q).item() == torch.kthvalue(w.flatten(), int(q * 77)).values.item()


def test_return_normalizer_known_batch():
    norm = ReturnNormalizer(decay=0.99, low_percentile=5, high_percentile=95)
    assert norm.scale.item() == 0.0
    # 0, 1, ..., 100 (101 values, shuffled into a (B, H) batch): P5 is the int(5.05) = 5th smallest,
    # 4, P95 the int(95.95) = 95th smallest, 94: spread 90.
    order = torch.randperm(101, generator=torch.Generator().manual_seed(0))
    returns = torch.arange(101.0)[order].reshape(1, 101)

    taken = torch.tensor(True)

    def update(returns):
        scale = norm.next_scale(returns)
        norm.commit(scale, taken)
        return norm.divisor(scale)

    divisor = update(returns)
    # scale = 0.99*0 + 0.01*90 = 0.9; divisor = max(1, 0.9) = 1
    assert norm.scale.item() == pytest.approx(0.9, abs=1e-6)
    assert divisor.item() == 1.0
    divisor = update(returns)
    # scale = 0.99*0.9 + 0.9 = 1.791 > 1, so it is the divisor
    assert norm.scale.item() == pytest.approx(1.791, abs=1e-5)
    assert divisor.item() == pytest.approx(1.791, abs=1e-5)
    # a skipped update leaves the running scale alone
    norm.commit(norm.next_scale(returns), torch.tensor(False))
    assert norm.scale.item() == pytest.approx(1.791, abs=1e-5)
    for _ in range(998):
        divisor = update(returns)
    # after n updates scale = 90*(1 - 0.99^n); n = 1000: 90*(1 - 4.317e-5) = 89.9961
    assert divisor.item() == pytest.approx(90 * (1 - 0.99 ** 1000), abs=1e-3)
    assert 89.99 < divisor.item() < 90.0


# ----------------------------------------------------------------------------- slow critic
def test_update_slow_critic_moves_two_percent():
    agent = make_agent()
    assert agent.cfg.SlowCriticDecay == 0.98
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.fill_(-2.0)
        for p in agent.slow_critic.parameters():
            p.fill_(3.0)
    agent.update_slow_critic()
    # 0.98*3 + 0.02*(-2) = 2.94 - 0.04 = 2.9
    for p in agent.slow_critic.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 2.9), rtol=0, atol=1e-6)
    agent.update_slow_critic()
    # 0.98*2.9 + 0.02*(-2) = 2.842 - 0.04 = 2.802
    for p in agent.slow_critic.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 2.802), rtol=0, atol=1e-6)
    # the critic itself is untouched
    for p in agent.critic.parameters():
        assert torch.all(p == -2.0)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def count_slow_critic_updates(agent):
    """Record, per call of update_slow_critic, whether it was told the step was taken."""
    calls = []
    original = agent.update_slow_critic

    def counting(step_taken=None):
        calls.append(True if step_taken is None else bool(step_taken))
        original(step_taken)

    agent.update_slow_critic = counting
    return calls


def test_update_steps_and_moves_slow_critic_once():
    agent = make_agent()
    calls = count_slow_critic_updates(agent)
    before_actor, before_critic, before_slow = snapshot(agent.actor), snapshot(agent.critic), snapshot(agent.slow_critic)
    metrics, finite = agent.update(rollout())
    assert bool(finite) and calls == [True]
    assert any(not torch.equal(before_actor[k], v) for k, v in agent.actor.state_dict().items())
    assert any(not torch.equal(before_critic[k], v) for k, v in agent.critic.state_dict().items())
    # slow <- 0.98 slow + 0.02 critic_after_step, checked on every tensor
    for name, slow in agent.slow_critic.state_dict().items():
        if slow.is_floating_point():
            expected = 0.98 * before_slow[name] + 0.02 * agent.critic.state_dict()[name]
            torch.testing.assert_close(slow, expected, rtol=0, atol=1e-6)
    agent.update(rollout(seed=2))
    assert calls == [True, True]


def test_non_finite_update_changes_nothing():
    agent = make_agent()
    agent.update(rollout())                      # a normal step first, so Adam has state
    calls = count_slow_critic_updates(agent)
    state = snapshot(agent)
    optimizer_state = {k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)}
                       for k, v in agent.optimizer.state_dict()["state"].items()}

    bad_rewards = torch.randn(2, 3)
    bad_rewards[1, 2] = float("nan")
    metrics, finite = agent.update(rollout(rewards=bad_rewards, seed=3))
    assert not bool(finite)
    assert calls == [False]
    after = agent.state_dict()
    changed = [k for k, v in state.items() if not torch.equal(v, after[k])]
    # Weights, slow critic and the return normaliser's running scale must all be as before:
    # a skipped update must not leave a NaN in the normaliser (it would divide every later
    # advantage and make every later update non-finite too).
    assert changed == []
    for k, v in agent.optimizer.state_dict()["state"].items():
        for n, t in v.items():
            if torch.is_tensor(t):
                assert torch.equal(t, optimizer_state[k][n]), (k, n)

    # ... and the next good rollout trains normally again.
    metrics, finite = agent.update(rollout(seed=4))
    assert bool(finite) and calls == [False, True]


def test_skipped_update_with_finite_returns_leaves_return_scale_alone():
    # A NaN in the actor makes the policy loss (and the gradient) non-finite while the critic,
    # and so the lambda-returns and their percentile range, stay finite: the running scale must
    # still not move, because the update that computed it is not taken.
    agent = make_agent()
    agent.update(rollout(rewards=10 * torch.randn(2, 3)))
    before = agent.return_normalizer.scale.clone()
    assert before.item() > 0
    with torch.no_grad():
        agent.actor[-1].bias[0] = float("nan")
    metrics, finite = agent.update(rollout(rewards=10 * torch.randn(2, 3), seed=5))
    assert not bool(finite)
    assert torch.isfinite(metrics["agent/return_scale"]) and metrics["agent/return_scale"] != before
    assert torch.equal(agent.return_normalizer.scale, before)


# ----------------------------------------------------------------------------- critic targets
def spy_codec_targets(agent):
    """Record the targets x of every value_codec.loss(logits, x) call (value loss, then regulariser)."""
    targets = []
    original = agent.value_codec.loss

    def spy(logits, x):
        targets.append(x.detach().clone())
        return original(logits, x)

    agent.value_codec.loss = spy
    return targets


@pytest.mark.parametrize("storm_compat", [False, True])
def test_critic_targets(storm_compat):
    agent = make_agent("Models.Agent.Gamma=0.5", "Models.Agent.Lambda=0.5", f"Models.Agent.StormCompat={storm_compat}")
    # Critic: uniform logits -> E[bin] = 0 over the symmetric bins -> V(s) = symexp(0) = 0 everywhere.
    constant_head(agent.critic, torch.zeros(agent.cfg.CriticBins))
    # Slow critic: logits = log(two-hot(2)) -> decode = symexp(symlog(2)) = 2 everywhere.
    slow_logits = torch.log(agent.value_codec.encode(torch.tensor(2.0)))
    assert agent.value_codec.decode(slow_logits).item() == pytest.approx(2.0, abs=1e-5)
    constant_head(agent.slow_critic, slow_logits)
    targets = spy_codec_targets(agent)

    # gamma = lambda = 0.5, r = [1, 2, 3], c = [1, 0, 1]
    imagined = rollout(batch=1, rewards=torch.tensor([[1.0, 2.0, 3.0]]), terminations=torch.tensor([[0.0, 1.0, 0.0]]))
    agent.loss(imagined)
    assert len(targets) == 2
    # Critic target, V = 0 (both switch settings agree when V is constant): G_3 = 0
    #   G_2 = 3 + 0.5*(0.5*0 + 0.5*0) = 3;  G_1 = 2;  G_0 = 1 + 0.5*(0.5*0 + 0.5*2) = 1.5
    torch.testing.assert_close(targets[0], torch.tensor([[1.5, 2.0, 3.0]]), rtol=0, atol=1e-4)
    if not storm_compat:
        # Paper: the slow critic's value V_slow(s_l) = 2 at l = 0, 1, 2.
        expected = torch.tensor([[2.0, 2.0, 2.0]])
    else:
        # Authors: the slow critic's lambda-return with V_slow = 2: G_3 = 2
        #   G_2 = 3 + 0.5*(0.5*2 + 0.5*2) = 4;  G_1 = 2;  G_0 = 1 + 0.5*(0.5*2 + 0.5*2) = 2
        expected = torch.tensor([[2.0, 2.0, 4.0]])
    torch.testing.assert_close(targets[1], expected, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- loss composition / entropy
def test_discrete_loss_hand_computed():
    agent = make_agent("Models.Agent.Gamma=0.5", "Models.Agent.Lambda=0.5")
    assert agent.entropy_coef == 3e-4
    constant_head(agent.actor, torch.zeros(2))                      # uniform over 2 actions
    constant_head(agent.critic, torch.zeros(agent.cfg.CriticBins))  # V = 0
    constant_head(agent.slow_critic, torch.zeros(agent.cfg.CriticBins))
    imagined = rollout(batch=1, rewards=torch.tensor([[1.0, 2.0, 3.0]]), terminations=torch.tensor([[0.0, 1.0, 0.0]]))
    total, m = agent.loss(imagined)
    # G = [1.5, 2, 3] (test_critic_targets). Percentiles of 3 values, the k-th smallest with
    # k = int(3 q): P5 -> k = max(int(0.15), 1) = 1 -> 1.5, P95 -> int(2.85) = 2 -> 2; spread 0.5
    # -> scale 0.01*0.5 = 0.005, divisor max(1, .) = 1, so advantage = G - V = [1.5, 2, 3].
    assert m["agent/return_scale"].item() == pytest.approx(0.005, abs=1e-6)
    # log pi(a) = -ln 2 for every action: policy loss = ln2 * mean(1.5, 2, 3) = ln2 * 13/6
    assert m["agent/policy_loss"].item() == pytest.approx(math.log(2) * 13 / 6, abs=1e-5)
    assert m["agent/entropy"].item() == pytest.approx(math.log(2), abs=1e-6)
    # Uniform critic logits: cross-entropy to any two-hot target = ln 255, for both terms.
    assert m["agent/value_loss"].item() == pytest.approx(math.log(255), abs=1e-5)
    assert m["agent/slow_critic_loss"].item() == pytest.approx(math.log(255), abs=1e-5)
    # total = policy - 3e-4 * entropy + value + 1 * slow
    expected = math.log(2) * 13 / 6 - 3e-4 * math.log(2) + 2 * math.log(255)
    assert total.item() == pytest.approx(expected, abs=1e-5)


def test_continuous_loss_uses_continuous_entropy_coefficient():
    agent = make_agent("Models.Agent.Gamma=0.5", "Models.Agent.Lambda=0.5", discrete=False, action_dim=2)
    assert agent.entropy_coef == 1e-4
    constant_head(agent.actor, torch.zeros(4))   # mean tanh(0) = 0, std 2*sigmoid(0)+0.1 = 1.1
    constant_head(agent.critic, torch.zeros(agent.cfg.CriticBins))
    constant_head(agent.slow_critic, torch.zeros(agent.cfg.CriticBins))
    actions = torch.full((1, 3, 2), 0.5)
    imagined = rollout(batch=1, rewards=torch.tensor([[1.0, 2.0, 3.0]]), terminations=torch.tensor([[0.0, 1.0, 0.0]]),
                       discrete=False)._replace(actions=actions)
    total, m = agent.loss(imagined)
    # log N(0.5; 0, 1.1) per dim = -0.5*(0.5/1.1)^2 - ln 1.1 - 0.5 ln 2pi
    #                            = -0.1033058 - 0.0953102 - 0.9189385 = -1.1175545; 2 dims: -2.2351090
    log_prob = -2.2351090
    # entropy per dim 0.5 ln(2 pi e 1.1^2) = 0.9189385 + 0.5 + 0.0953102 = 1.5142487; 2 dims: 3.0284974
    entropy = 3.0284974
    assert m["agent/entropy"].item() == pytest.approx(entropy, abs=1e-5)
    # advantage [1.5, 2, 3] as in the discrete case
    assert m["agent/policy_loss"].item() == pytest.approx(-log_prob * 13 / 6, abs=1e-5)
    expected = -log_prob * 13 / 6 - 1e-4 * entropy + 2 * math.log(255)
    assert total.item() == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------- continuous actor
def test_continuous_distribution_hand_values():
    dist = ContinuousActionDist(torch.zeros(3, 4))           # 2 action dims, mean 0, std 1.1
    assert torch.allclose(dist.mean, torch.zeros(3, 2))
    assert torch.allclose(dist.std, torch.full((3, 2), 1.1))
    lp = dist.log_prob(torch.full((3, 2), 0.5))
    torch.testing.assert_close(lp, torch.full((3,), -2.2351090), rtol=0, atol=1e-5)
    torch.testing.assert_close(dist.entropy(), torch.full((3,), 3.0284974), rtol=0, atol=1e-5)

    # mean_raw = atanh(0.5) = 0.5493061 -> mean 0.5; std_raw = 2 ln(1/3) -> sigmoid = 1/4 -> std 0.6.
    raw = torch.tensor([[0.5493061, 2 * math.log(1 / 3)]])
    dist = ContinuousActionDist(raw)
    assert dist.mean.item() == pytest.approx(0.5, abs=1e-6)
    assert dist.std.item() == pytest.approx(0.6, abs=1e-6)
    # log N(0.5; 0.5, 0.6) = -ln 0.6 - 0.5 ln 2pi = 0.5108256 - 0.9189385 = -0.4081129
    assert dist.log_prob(torch.tensor([[0.5]])).item() == pytest.approx(-0.4081129, abs=1e-6)


def reinforce_gradient_of_mean(std: float, num_samples: int) -> float:
    """d/d mean of E[clip(x)], x ~ N(0, std), estimated the way agent.loss does it: draw the
    actions with the policy's sampler, score them with log_prob, reward = clipped action."""
    torch.manual_seed(0)
    mean_raw = torch.zeros((), requires_grad=True)
    std_raw = 2 * math.log((std - 0.1) / 2 / (1 - (std - 0.1) / 2))      # 2 sigmoid(std_raw / 2) + 0.1 = std
    raw = torch.stack([mean_raw.expand(num_samples), torch.full((num_samples,), std_raw)], dim=-1)
    dist = ContinuousActionDist(raw)
    assert dist.std[0].item() == pytest.approx(std, abs=1e-6)
    action = dist.sample().detach()                                       # what imagination stores
    reward = action.clamp(-1, 1).squeeze(-1)                              # what the env executes
    (reward * dist.log_prob(action)).mean().backward()                    # REINFORCE surrogate
    return mean_raw.grad.item()   # d mean / d mean_raw = 1 - tanh(0)^2 = 1


@pytest.mark.parametrize("std", [1.1, 0.6])
def test_continuous_reinforce_gradient_matches_closed_form(std):
    # E[clip(x)] for x ~ N(m, s): its derivative in m is P(-1 < x < 1) (the clipped tails are
    # flat), at m = 0: 2 Phi(1/s) - 1 = erf(1 / (s sqrt 2)). s = 1.1: 0.6367; s = 0.6: 0.9044.
    exact = math.erf(1 / (std * math.sqrt(2)))
    estimate = reinforce_gradient_of_mean(std, 400_000)
    # The score-function estimate has standard deviation about 1.2/sqrt(400k) = 0.002; scoring
    # the clipped action instead (log N(clip(x))) gives about 0.45 at s = 1.1 (30% too small).
    assert estimate == pytest.approx(exact, rel=0.03)


def test_continuous_samples_unclipped_and_executed_clipped():
    torch.manual_seed(0)
    n = 2000
    # std_raw = 20 -> std = 2*sigmoid(10) + 0.1 ~ 2.0999: about 63% of N(0, 2.1) draws fall outside [-1, 1]
    raw = torch.stack([torch.zeros(n), torch.full((n,), 20.0)], dim=-1)
    sample = ContinuousActionDist(raw).sample()
    assert sample.shape == (n, 1)
    outside = (sample.abs() > 1.0).float().mean().item()
    # P(|N(0, 2.1)| > 1) = 2*(1 - Phi(1/2.0999)) = 2*(1 - Phi(0.4762)) = 2*0.3170 = 0.634
    assert 0.58 < outside < 0.69
    # the world model sees the draw clipped to the action box, as the env executes it
    cfg = compose_config("STORM", ["+preset=cpu"]).Models
    from sub_models.world_models import WorldModel
    world_model = WorldModel(cfg, action_dim=1, discrete_actions=False)
    torch.testing.assert_close(world_model.action_input(sample), sample.clamp(-1, 1), rtol=0, atol=0)


def test_discrete_policy_samples_valid_actions():
    agent = make_agent(action_dim=3)
    constant_head(agent.actor, torch.tensor([0.0, 0.0, -1e9]))   # action 2 impossible
    actions = agent.policy(torch.randn(500, LATENT), torch.randn(500, HIDDEN))
    assert actions.shape == (500,) and actions.dtype == torch.long
    assert set(actions.tolist()) == {0, 1}
    # sampled, not greedy: both of two equally likely actions appear about half the time
    assert 0.4 < actions.float().mean().item() < 0.6


def test_continuous_policy_draws_unclipped_and_env_gets_them_clipped():
    from families.storm.acting import EnvActor
    import gymnasium
    agent = make_agent(discrete=False, action_dim=3)
    drawn = agent.policy(torch.randn(200, LATENT), torch.randn(200, HIDDEN))
    assert drawn.shape == (200, 3) and drawn.abs().max().item() > 1.0   # std ~ 1.1: a third fall outside

    cfg = compose_config("STORM", ["+preset=cpu"]).Models
    from sub_models.world_models import WorldModel
    torch.manual_seed(0)
    world_model = WorldModel(cfg, action_dim=3, discrete_actions=False)
    agent = ActorCriticAgent(agent_config(), world_model.latent_dim + cfg.WorldModel.TransformerHiddenDim, 3, False)
    actor = EnvActor(world_model, agent, gymnasium.spaces.Box(-1, 1, (3,)), num_envs=64, context_length=4)
    obs = torch.randint(0, 256, (64, 64, 64, 3), dtype=torch.uint8).numpy()
    actor.act(obs)                     # first step: random
    actions = actor.act(obs)           # the policy's draws, clipped for the env
    assert actions.shape == (64, 3) and abs(actions).max() <= 1.0 and (abs(actions) == 1.0).any()


# ----------------------------------------------------------------------------- optimiser
def test_adam_settings_from_config():
    cfg = compose_config("STORM", []).Models.Agent        # the paper config, not the CPU preset
    agent = ActorCriticAgent(cfg, STATE_DIM, 2, True)
    group = agent.optimizer.param_groups[0]
    assert isinstance(agent.optimizer, torch.optim.Adam)
    assert group["lr"] == 3e-5 and group["eps"] == 1e-5 and cfg.MaxGradNorm == 100.0
    optimized = {id(p) for g in agent.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in list(agent.actor.parameters()) + list(agent.critic.parameters())}
    assert not any(id(p) in optimized for p in agent.slow_critic.parameters())


def unchanged_return_scale(agent):
    """The figures a stand-in loss must return: the return scale its update would store."""
    return {"agent/return_scale": agent.return_normalizer.scale.clone()}


def test_adam_first_step_size_shows_lr_and_eps():
    agent = make_agent()
    bias = agent.actor[-1].bias
    before = bias.detach().clone()
    # loss = 1e-5 * sum(bias): gradient g = 1e-5 on each entry. Adam's first step is
    # lr * m_hat / (sqrt(v_hat) + eps) = 3e-5 * 1e-5 / (1e-5 + 1e-5) = 1.5e-5 (down).
    agent.loss = lambda rollout: (1e-5 * bias.sum(), unchanged_return_scale(agent))
    _, finite = agent.update(rollout())
    assert bool(finite)
    torch.testing.assert_close(bias.detach() - before, torch.full_like(before, -1.5e-5), rtol=1e-3, atol=0)


def test_gradient_norm_clipped_to_100():
    agent = make_agent()
    states = torch.randn(64, STATE_DIM)
    agent.loss = lambda rollout: (1e6 * (agent.actor(states).pow(2).sum() + agent.critic(states).pow(2).sum()),
                                  unchanged_return_scale(agent))
    metrics, finite = agent.update(rollout())
    assert bool(finite)
    assert metrics["agent/grad_norm"].item() > 1e4               # the raw norm is huge ...
    grads = [p.grad for g in agent.optimizer.param_groups for p in g["params"] if p.grad is not None]
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
    assert clipped == pytest.approx(100.0, rel=1e-4)              # ... and is scaled down to 100


# ----------------------------------------------------------------------------- compiled path
def test_compiled_agent_update_equals_eager():
    """BasicSettings.Compile: the agent loss compiled as one graph (fullgraph) gives the eager
    losses and, after one update through the compiled backward, the same weights."""
    import torch._dynamo
    eager, compiled = make_agent(), make_agent()
    compiled.compile_hot_paths()
    imagined = rollout(batch=4, horizon=5, seed=7)
    try:
        metrics_eager, _ = eager.update(imagined)
        metrics_compiled, finite = compiled.update(imagined)
    finally:
        torch._dynamo.reset()
    assert bool(finite)
    for key, value in metrics_eager.items():
        torch.testing.assert_close(metrics_compiled[key], value, rtol=1e-4, atol=1e-5, msg=key)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
