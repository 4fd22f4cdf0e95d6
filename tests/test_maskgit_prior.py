"""MaskGIT prior (GIT-STORM): mask schedule, masked KL, partitions, draft-and-revise passes."""
import math
import types

import pytest
import torch
import torch.nn.functional as F

from sub_models.maskgit import MaskGitPrior, mask_count, random_partition_masks, random_subset_masks
from sub_models.maskgit.transformer import Block, SelfAttention


def make_cfg(**overrides):
    cfg = dict(Architecture="standard", EmbeddingDim=16, NumLayers=1, NumHeads=2, FeedForwardDim=32, Dropout=0.0,
               MaskSchedule="cosine", MinMaskRatio=1.0e-6, MaskRounding="floor", DraftRounds=1, ReviseRounds=1,
               ReviseRepetitions=1, Temperature=1.0, TrainTarget="current", DotProductLogits=True,
               Conditioning="slice", AllMaskProbability=0.0)
    cfg.update(overrides)
    return types.SimpleNamespace(**cfg)


def make_prior(hidden_dim=16, num_variables=8, num_classes=5, unimix=0.01, **overrides):
    return MaskGitPrior(hidden_dim=hidden_dim, num_variables=num_variables, num_classes=num_classes,
                        unimix=unimix, cfg=make_cfg(**overrides))


def one_hot(index, num_classes):
    return F.one_hot(index, num_classes).float()


def record_input_tokens(prior):
    """Spy on the token ids fed to the input embedding; one entry per transformer pass."""
    seen = []
    prior.token_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    return seen


def test_mask_count_worked_numbers():
    r = torch.tensor([0.0, 1.0, 0.5, 1.0 / 3.0])
    # cos(0)=1 -> 32; cos(pi/2)=0 -> clamp 1e-6 -> floor 0 -> at least 1; cos(pi/4)*32=22.6; cos(pi/6)*32=27.7
    assert mask_count(r, 32, "cosine", 1.0e-6).tolist() == [32, 1, 22, 27]
    # linear: 1 - r
    assert mask_count(torch.tensor([0.0, 0.25, 0.5, 1.0]), 32, "linear", 1.0e-6).tolist() == [32, 24, 16, 1]
    with pytest.raises(ValueError, match="square"):
        mask_count(r, 32, "square", 1.0e-6)


def test_mask_count_ceil_rounding_and_how_often_all_tokens_are_masked():
    r = torch.tensor([0.0, 1.0, 0.5, 1.0 / 3.0, 0.1])
    # ceil: cos(0)*32 = 32; 1e-6*32 -> 1; 22.63 -> 23; 27.71 -> 28; cos(0.05 pi)*32 = 31.61 -> 32
    assert mask_count(r, 32, "cosine", 1.0e-6, "ceil").tolist() == [32, 1, 23, 28, 32]
    assert mask_count(r, 32, "cosine", 1.0e-6, "floor").tolist() == [32, 1, 22, 27, 31]
    # all 32 masked: ceil when cos(pi r/2) > 31/32, i.e. r < (2/pi) acos(31/32) = 0.1596;
    # floor only where cos rounds to exactly 1 in float32 (r < ~1.6e-4)
    draws = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    all_ceil = (mask_count(draws, 32, "cosine", 1.0e-6, "ceil") == 32).float().mean().item()
    all_floor = (mask_count(draws, 32, "cosine", 1.0e-6, "floor") == 32).float().mean().item()
    assert all_ceil == pytest.approx(2 / math.pi * math.acos(31 / 32), abs=0.003)
    assert all_floor < 5e-4
    with pytest.raises(ValueError, match="'round'"):
        mask_count(r, 32, "cosine", 1.0e-6, "round")


@pytest.mark.parametrize("probability", [0.0, 0.5, 1.0])
def test_all_mask_probability_is_the_extra_share_of_fully_masked_samples(probability):
    torch.manual_seed(0)
    mask = make_prior(num_variables=8, AllMaskProbability=probability).training_mask(20_000, "cpu")
    # floor alone masks all 8 only where cos(pi r / 2) rounds to 1 (~0.02%), so the share is
    # p + (1 - p) 0.0002; 0.015 is > 4 binomial sd (sqrt(0.25 / 20000) = 0.0035) at p = 0.5
    assert mask.all(-1).float().mean().item() == pytest.approx(probability, abs=0.015)
    assert mask.any(-1).all()  # every sample still masks at least one token
    with pytest.raises(ValueError, match="AllMaskProbability=1.5"):
        make_prior(AllMaskProbability=1.5)


@pytest.mark.parametrize("conditioning, readers", [("slice", [0]), ("full", [0, 1, 2, 3])])
def test_conditioning_which_tokens_read_the_first_slice_of_h(conditioning, readers):
    # with no transformer layer every token's logits depend only on its own input row, so the
    # tokens whose logits move when h's first D/K = 4 numbers change are the ones that read them
    torch.manual_seed(0)
    prior = make_prior(hidden_dim=16, num_variables=4, num_classes=5, NumLayers=0, Conditioning=conditioning).eval()
    tokens = torch.full((1, 4), prior.mask_id)
    h = torch.randn(1, 16)
    moved = h.clone()
    moved[0, :4] += 1.0
    change = (prior.log_probs(moved, tokens) - prior.log_probs(h, tokens)).abs().amax(-1)[0]  # (K,)
    assert (change > 1e-6).nonzero().flatten().tolist() == readers
    with pytest.raises(ValueError, match="Conditioning='all'"):
        make_prior(Conditioning="all")


def test_random_subset_masks_exact_counts():
    counts = torch.tensor([1, 3, 8, 5, 2])
    masks = random_subset_masks(counts, 8)
    assert masks.shape == (5, 8) and masks.dtype == torch.bool
    assert masks.sum(-1).tolist() == counts.tolist()


@pytest.mark.parametrize("num_chunks, sizes", [(1, [8]), (3, [3, 3, 2]), (4, [2, 2, 2, 2]), (8, [1] * 8)])
def test_random_partition_masks_disjoint_cover_balanced(num_chunks, sizes):
    torch.manual_seed(0)
    masks = random_partition_masks(50, 8, num_chunks, torch.device("cpu"))
    assert masks.shape == (num_chunks, 50, 8) and masks.dtype == torch.bool
    assert (masks.sum(0) == 1).all()  # every position in exactly one chunk: disjoint and covering
    assert (masks.sum(-1) == torch.tensor(sizes).unsqueeze(-1)).all()
    if 1 < num_chunks:  # independent partitions per row
        assert not (masks == masks[:, :1]).all()


def test_draft_fills_each_position_once_and_each_revise_resamples_each_once():
    torch.manual_seed(0)
    K, C, T_draft, T_revise, M = 8, 5, 3, 2, 2
    prior = make_prior(num_variables=K, num_classes=C, DraftRounds=T_draft, ReviseRounds=T_revise,
                       ReviseRepetitions=M)
    seen = record_input_tokens(prior)
    z, _ = prior.sample(torch.randn(6, 16))
    assert len(seen) == T_draft + M * T_revise == 7
    masked = torch.stack(seen) == C  # (passes, N, K)

    # draft: pass i sees chunks i.. still masked, so chunk i = masked_i minus masked_{i+1}
    draft = masked[:T_draft]
    assert draft[0].all()
    filled = torch.cat([draft[:-1] & ~draft[1:], draft[-1:]])  # (T_draft, N, K)
    assert (filled.sum(0) == 1).all()
    assert (filled.sum(-1).sort(0, descending=True).values == torch.tensor([3, 3, 2]).unsqueeze(-1)).all()

    # revise: every pass re-masks exactly one chunk; each repetition's chunks partition K
    revise = masked[T_draft:].unflatten(0, (M, T_revise))  # (M, T_revise, N, K)
    assert (revise.sum(1) == 1).all()
    assert (revise.sum(-1) == K // T_revise).all()

    # the last pass resampled its chunk; the rest of the final z is what that pass was shown
    keep = ~masked[-1]
    assert (z.argmax(-1)[keep] == seen[-1][keep]).all()


def count_passes(prior):
    calls = []
    original = prior.log_probs
    prior.log_probs = lambda h, tokens: calls.append(tokens.clone()) or original(h, tokens)
    return calls


@pytest.mark.parametrize("repetitions", [1, 3])
def test_discarded_passes_are_skipped_with_the_same_result_for_the_same_noise(repetitions):
    # T_revise = 1: every revise pass re-masks all K positions, so the full procedure's result is
    # that of its last pass alone. Fed the same noise for that pass, the one-pass procedure
    # must give exactly the same tokens and log-probs.
    K, C, N = 8, 5, 64
    torch.manual_seed(12)
    prior = make_prior(num_variables=K, num_classes=C, DraftRounds=4, ReviseRounds=1,
                       ReviseRepetitions=repetitions).eval()
    h = torch.randn(N, 16)
    full = prior.decoding_passes(N, h.device, skip_discarded=False)
    assert full.shape == (4 + repetitions, N, K) and full[-1].all()   # the last pass re-masks everything
    gumbel = -torch.empty(*full.shape, C).exponential_().log()
    z_full, log_probs_full = prior.decode(h, full, gumbel)

    skipped = prior.decoding_passes(N, h.device)
    assert skipped.shape == (1, N, K) and skipped.all()
    calls = count_passes(prior)
    z_one, log_probs_one = prior.decode(h, skipped, gumbel[-1:])
    assert len(calls) == 1 and (calls[0] == C).all()                 # one pass, from all [MASK]
    assert torch.equal(z_one, z_full) and torch.equal(log_probs_one, log_probs_full)
    calls.clear()
    prior.sample(h)
    assert len(calls) == 1


@pytest.mark.parametrize("draft, revise, repetitions", [(1, 2, 1), (4, 4, 2), (3, 2, 0)])
def test_passes_that_matter_are_all_run(draft, revise, repetitions):
    prior = make_prior(DraftRounds=draft, ReviseRounds=revise, ReviseRepetitions=repetitions)
    calls = count_passes(prior)
    prior.sample(torch.randn(4, 16))
    assert len(calls) == draft + repetitions * revise


def test_kl_counts_only_masked_tokens_with_schedule_counts():
    B, T, K, C = 2, 3, 8, 5
    torch.manual_seed(1)
    prior = make_prior(num_variables=K, num_classes=C)
    h = torch.randn(B, T, 16)
    z_current = one_hot(torch.randint(0, C, (B, T, K)), C)
    z_next = one_hot(torch.randint(0, C, (B, T, K)), C)
    posterior = torch.log_softmax(3.0 * torch.randn(B, T, K, C), -1)

    torch.manual_seed(123)
    out = prior.kl_terms(h, z_current, z_next, posterior)
    torch.manual_seed(123)
    r = torch.rand(B * T)  # the schedule draw kl_terms made first
    expected_n = torch.clamp(torch.floor(torch.cos(math.pi * r / 2).clamp(1e-6, 1) * K), min=1)
    assert out.token_mask.sum(-1).flatten().tolist() == expected_n.tolist()

    # the prior is the head run on z_current with exactly the reported positions masked
    tokens = z_current.argmax(-1).masked_fill(out.token_mask.bool(), C)
    recomputed = prior.log_probs(h.flatten(0, 1), tokens.flatten(0, 1)).unflatten(0, (B, T))
    torch.testing.assert_close(out.prior_logits, recomputed)

    kl_per_token = (posterior.exp() * (posterior - out.prior_logits)).sum(-1)  # (B, T, K)
    by_hand = (kl_per_token * out.token_mask).sum(-1)  # summed over masked tokens, not renormalised
    torch.testing.assert_close(out.dynamics_kl, by_hand)
    torch.testing.assert_close(out.representation_kl, by_hand)
    assert out.token_mask.shape == (B, T, K) and out.dynamics_kl.shape == (B, T)


def test_kl_with_hand_built_mask_ignores_unmasked_tokens():
    B, T, K, C = 1, 2, 4, 3
    torch.manual_seed(2)
    prior = make_prior(num_variables=K, num_classes=C)
    mask = torch.tensor([[True, False, False, True], [False, False, True, False]])
    prior.training_mask = lambda num_samples, device: mask
    h = torch.randn(B, T, 16)
    z = one_hot(torch.randint(0, C, (B, T, K)), C)
    posterior = torch.log_softmax(torch.randn(B, T, K, C), -1)
    out = prior.kl_terms(h, z, z, posterior)
    # changing the posterior on unmasked tokens must not change the KL
    wild = posterior.clone()
    wild[~mask.view(B, T, K)] = torch.log_softmax(torch.tensor([20.0, -20.0, 0.0]), -1)
    out_wild = prior.kl_terms(h, z, z, wild)
    torch.testing.assert_close(out.dynamics_kl, out_wild.dynamics_kl)
    p, q = out.prior_logits[0], posterior[0]
    kl = (q.exp() * (q - p)).sum(-1)  # (T, K)
    torch.testing.assert_close(out.dynamics_kl[0], torch.stack([kl[0, 0] + kl[0, 3], kl[1, 2]]))


@pytest.mark.parametrize("tied", [True, False])
def test_weight_tying_output_path(tied):
    torch.manual_seed(3)
    K, C = 4, 5
    prior = make_prior(num_variables=K, num_classes=C, DotProductLogits=tied).eval()
    h = torch.randn(3, 16)
    all_mask = torch.full((3, K), C)  # the input reads only the [MASK] row
    before = prior.log_probs(h, all_mask)
    with torch.no_grad():
        # random, not constant: xi leaves a LayerNorm (zero mean), blind to a constant shift
        prior.token_embedding.weight[1] += torch.randn(16)
    after = prior.log_probs(h, all_mask)
    if tied:
        assert (before - after).abs().max() > 1e-3
    else:
        assert torch.equal(before, after)


@pytest.mark.parametrize("target", ["current", "next"])
def test_train_target_chooses_input_tokens(target):
    B, T, K, C = 2, 2, 8, 5
    torch.manual_seed(4)
    prior = make_prior(num_variables=K, num_classes=C, TrainTarget=target)
    ids_current = torch.randint(0, C, (B, T, K))
    ids_next = (ids_current + 1) % C  # differs everywhere
    seen = record_input_tokens(prior)
    out = prior.kl_terms(torch.randn(B, T, 16), one_hot(ids_current, C), one_hot(ids_next, C),
                         torch.log_softmax(torch.randn(B, T, K, C), -1))
    shown = seen[0].unflatten(0, (B, T))
    masked = out.token_mask.bool()
    assert (shown[masked] == C).all()
    expected = ids_current if target == "current" else ids_next
    assert torch.equal(shown[~masked], expected[~masked])


def test_sample_one_hot_deterministic_and_cold_is_argmax():
    K, C = 8, 5
    torch.manual_seed(5)
    prior = make_prior(num_variables=K, num_classes=C, DraftRounds=2, ReviseRounds=2)
    h = torch.randn(10, 16)
    torch.manual_seed(6)
    z, log_probs = prior.sample(h)
    assert z.shape == log_probs.shape == (10, K, C)
    assert ((z == 0) | (z == 1)).all() and (z.sum(-1) == 1).all()
    torch.manual_seed(6)
    z_again, log_probs_again = prior.sample(h)
    assert torch.equal(z, z_again) and torch.equal(log_probs, log_probs_again)

    prior.temperature = 1.0e-6
    z_cold, log_probs_cold = prior.sample(h)
    # each position's log-probs are those it was drawn from, so a cold draw is their argmax
    assert torch.equal(z_cold.argmax(-1), log_probs_cold.argmax(-1))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_single_pass_samples_follow_tempered_distribution(temperature):
    K, C, N = 4, 4, 20000
    torch.manual_seed(7)
    prior = make_prior(num_variables=K, num_classes=C, unimix=0.0, ReviseRepetitions=0, Temperature=temperature)
    with torch.no_grad():
        prior.token_embedding.weight.mul_(50.0)  # spread the logits so temperature matters
        z, log_probs = prior.sample(torch.randn(1, 16).expand(N, 16))
    expected = torch.softmax(log_probs[0] / temperature, -1)  # (K, C); one pass, same h for all rows
    assert (expected.max() - expected.min()) > 0.2
    torch.testing.assert_close(z.mean(0), expected, atol=0.02, rtol=0)


def test_unimix_floor_on_prior_probs():
    K, C, unimix = 4, 5, 0.01
    torch.manual_seed(8)
    prior = make_prior(num_variables=K, num_classes=C, unimix=unimix)
    with torch.no_grad():
        prior.token_embedding.weight.mul_(1000.0)  # near-deterministic raw logits
    _, log_probs = prior.sample(torch.randn(6, 16))
    out = prior.kl_terms(torch.randn(2, 3, 16), one_hot(torch.randint(0, C, (2, 3, K)), C),
                         one_hot(torch.randint(0, C, (2, 3, K)), C), torch.log_softmax(torch.randn(2, 3, K, C), -1))
    floor = unimix / C * (1 - 1e-4)
    assert log_probs.exp().min() >= floor and out.prior_logits.exp().min() >= floor
    assert log_probs.exp().max() > 0.9  # the floor is reached, not just trivially satisfied


def test_config_errors_name_the_values():
    with pytest.raises(ValueError, match=r"hidden_dim=30.*num_variables=8"):
        make_prior(hidden_dim=30, num_variables=8)
    with pytest.raises(ValueError, match="'previous'"):
        make_prior(TrainTarget="previous")
    with pytest.raises(ValueError, match="'square'"):
        make_prior(MaskSchedule="square")


def test_gradients_reach_h_and_token_embeddings():
    B, T, K, C = 2, 2, 4, 5
    torch.manual_seed(9)
    prior = make_prior(num_variables=K, num_classes=C)
    h = torch.randn(B, T, 16, requires_grad=True)
    posterior = torch.log_softmax(torch.randn(B, T, K, C), -1).requires_grad_()
    z = one_hot(torch.randint(0, C, (B, T, K)), C)
    out = prior.kl_terms(h, z, z, posterior)
    (out.dynamics_kl + out.representation_kl).mean().backward()
    assert h.grad.abs().sum() > 0
    grad = prior.token_embedding.weight.grad
    assert (grad[:C].abs().sum(-1) > 0).all()  # every real row, through the tied output
    assert grad[C].abs().sum() > 0  # the [MASK] row, through the input
    assert posterior.grad.abs().sum() > 0  # the representation KL reaches the posterior


def test_no_host_syncs_in_sampling_or_training():
    # meta tensors have no data: any .item()/.cpu()/data-dependent shape would raise here
    prior = make_prior(DraftRounds=2, ReviseRounds=2, ReviseRepetitions=2).to("meta")
    z, _ = prior.sample(torch.empty(3, 16, device="meta"))
    z_seq = torch.empty(2, 3, 8, 5, device="meta")
    out = prior.kl_terms(torch.empty(2, 3, 16, device="meta"), z_seq, z_seq, z_seq)
    assert z.shape == (3, 8, 5) and out.dynamics_kl.shape == (2, 3)


@pytest.mark.parametrize("target", ["current", "next"])
def test_overfits_deterministic_mapping(target):
    K, C, D, num_states = 4, 4, 16, 8
    torch.manual_seed(10)
    prior = make_prior(hidden_dim=D, num_variables=K, num_classes=C, EmbeddingDim=32, NumHeads=4,
                       FeedForwardDim=64, NumLayers=2, TrainTarget=target)
    h = torch.randn(num_states, 1, D)
    targets = torch.randint(0, C, (num_states, 1, K))
    z_next = one_hot(targets, C)
    posterior = torch.log(0.99 * z_next + 0.01 / C)

    def eval_kl():
        torch.manual_seed(11)  # same masks before and after training
        with torch.no_grad():
            return prior.kl_terms(h, one_hot(torch.randint(0, C, targets.shape), C), z_next, posterior).dynamics_kl.mean()

    initial = eval_kl()
    optimizer = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(200):
        # z_t unrelated to z_{t+1}: the head has to read the mapping from h
        z_current = one_hot(torch.randint(0, C, targets.shape), C)
        loss = prior.kl_terms(h, z_current, z_next, posterior).dynamics_kl.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = eval_kl()
    assert final < initial / 10

    with torch.no_grad():
        z, _ = prior.sample(h[:, 0].repeat(25, 1))
    exact = (z.argmax(-1) == targets[:, 0].repeat(25, 1)).all(-1).float().mean()
    assert exact > 0.8


# ---------------------------------------------------------------- Architecture=authors

def test_authors_attention_weights_sum_to_one_over_queries():
    torch.manual_seed(13)
    x = torch.randn(3, 5, 8)  # (N, K, E)
    authors = SelfAttention(8, num_heads=2, dropout=0.0, softmax_over_queries=True)
    q, k, v = authors.heads(x)
    weights = authors.attention_weights(q, k)  # (N, H, K_query, K_key)
    torch.testing.assert_close(weights.sum(-2), torch.ones(3, 2, 5))    # each key's weights over the queries
    assert (weights.sum(-1) - 1).abs().max() > 0.1                        # not each query's over the keys
    # the layer mixes the values with exactly these weights: out_i = proj(sum_j w_ij v_j)
    by_hand = authors.proj((weights @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(authors(x), by_hand)
    # the standard form is softmax over the keys (what scaled_dot_product_attention computes)
    standard = SelfAttention(8, num_heads=2, dropout=0.0)
    standard.load_state_dict(authors.state_dict())
    torch.testing.assert_close(standard.attention_weights(q, k).sum(-1), torch.ones(3, 2, 5))
    torch.testing.assert_close(standard(x), standard.proj((standard.attention_weights(q, k) @ v)
                                                          .transpose(1, 2).flatten(2)))


@pytest.mark.parametrize("architecture", ["authors", "standard"])
def test_authors_layer_has_no_mlp_residual_two_tokens_by_hand(architecture):
    # E = 2, one head, 2 tokens x_1 = (1, -1), x_2 = (3, 1). Weights: q = k = 0 (all scores 0,
    # so every weight is 1/2 whichever axis is normalised), v = LN1(x), proj = identity,
    # both MLP linears identity, no biases. LN of a 2-vector (a, b), a > b, is (1, -1) up to
    # the eps: (a-b)/2 / sqrt(((a-b)/2)^2 + 1e-5); both tokens give s (1, -1), s = 1/sqrt(1 + 1e-5).
    # attention: x' = x + mean_j LN1(x_j) = x + s (1, -1):  x'_1 = (1+s, -1-s), x'_2 = (3+s, 1-s)
    # MLP on LN2(x'), again s' (1, -1) with s' = 1/sqrt(1 + 1e-5 / (1+s)^2) for both tokens:
    # y = GELU(s' (1, -1)) = (0.841345, -0.158655) (GELU(1) = Phi(1) = 0.841345, GELU(-1) = -0.158655)
    # authors: the layer returns y; standard: x' + y.
    block = Block(2, num_heads=1, ffn_dim=2, dropout=0.0, architecture=architecture)
    with torch.no_grad():
        for linear in (block.attn.qkv, block.attn.proj, block.mlp[0], block.mlp[2]):
            linear.bias.zero_()
        block.attn.qkv.weight.copy_(torch.cat([torch.zeros(4, 2), torch.eye(2)]))
        block.attn.proj.weight.copy_(torch.eye(2))
        block.mlp[0].weight.copy_(torch.eye(2))
        block.mlp[2].weight.copy_(torch.eye(2))
    x = torch.tensor([[[1.0, -1.0], [3.0, 1.0]]])
    s = 1 / math.sqrt(1 + 1e-5)
    y = torch.tensor([[0.841345, -0.158655]] * 2)
    x_after_attention = torch.tensor([[1 + s, -1 - s], [3 + s, 1 - s]])
    expected = y if architecture == "authors" else x_after_attention + y
    torch.testing.assert_close(block(x)[0], expected, atol=2e-5, rtol=0)


def test_authors_parameter_count_at_paper_size():
    # The authors' MaskGit at paper size (configs: VocabSize 32, VocabDim = EmbedDim 128, 8 heads,
    # 4 layers, MlpDim ignored; cond = h split into 32 slices of 512/32 = 16), as their code builds it:
    #   token_embed            33 x 128                                   =   4,224
    #   fc_in                  (128 + 16) x 128 + 128                     =  18,560
    #   position biases        32 x 128                                   =   4,096
    #   per layer: 2 LNs 2 x 256; 8 heads of q, k, v Linear(128, 16): 8 x 3 x 2,064 = 49,536;
    #              projector 128 x 128 + 128 = 16,512; MLP 2 x 16,512 = 33,024  -> 99,584, x 4 = 398,336
    #   fc_out 16,512 + layer_norm 256                                    =  16,768
    #   MlmLayer: fc 16,512 + ln 256 + bias 32                            =  16,800
    #   total                                                             = 458,784
    prior = make_prior(hidden_dim=512, num_variables=32, num_classes=32, Architecture="authors",
                       EmbeddingDim=128, NumLayers=4, NumHeads=8, FeedForwardDim=1024)
    assert sum(p.numel() for p in prior.parameters()) == 458_784


def test_authors_mixes_uniform_twice_in_the_loss_once_at_sampling():
    B, T, K, C, unimix = 1, 2, 4, 5, 0.5  # a large mix, so one more mix shows clearly
    torch.manual_seed(14)
    prior = make_prior(num_variables=K, num_classes=C, unimix=unimix, Architecture="authors")
    mask = torch.ones(B * T, K, dtype=torch.bool)  # all [MASK]: the same input as sampling's one pass
    prior.training_mask = lambda num_samples, device: mask
    h = torch.randn(B, T, 16)
    z = one_hot(torch.randint(0, C, (B, T, K)), C)
    out = prior.kl_terms(h, z, z, torch.log_softmax(torch.randn(B, T, K, C), -1))
    _, sampled_from = prior.sample(h.flatten(0, 1))
    once = sampled_from.exp().unflatten(0, (B, T))
    # mixing p with the uniform twice: (1-u) ((1-u) p + u/C) + u/C
    torch.testing.assert_close(out.prior_logits.exp(), (1 - unimix) * once + unimix / C)
    # the raw head's probabilities mixed once give what sampling draws from
    raw = torch.softmax(prior.log_probs(h.flatten(0, 1), torch.full((B * T, K), C)), -1)
    torch.testing.assert_close(sampled_from.exp(), raw)
