"""GIT-STORM's dynamics prior: a MaskGIT head over the K latent tokens of z_{t+1}.

z is K categorical variables with C classes; each variable is a token over a vocabulary of C
(plus one [MASK] id, C). A small bidirectional transformer reads h_t, split into K slices, one
per token, together with a partly masked token sequence and predicts a categorical for every
position. `Architecture=authors` swaps in the authors' transformer, head and double unimix in
the loss (transformer.py).

Training (`kl_terms`): per sample draw r ~ U(0, 1), mask n = max(1, round(schedule(r) * K))
random positions of the input tokens and count the dynamics / representation KL against the
posterior of z_{t+1} on the masked positions only. What the unmasked positions show depends on
`TrainTarget`:
  * `current` (paper + authors' code): the tokens of the posterior sample of z_t. The head learns
    p(z_{t+1} | h_t, part of z_t); at sampling time the same slots carry z_{t+1} tokens drafted
    so far, so training and multi-pass decoding see different inputs. With the paper's setting
    T_draft = T_revise = 1 every pass sees all [MASK]: no mismatch of token content, but an
    all-[MASK] input is rare in training: with `MaskRounding=floor` (authors' code) n = K only
    when cos(pi r / 2) rounds to 1 in float32 (r < 1.6e-4, about 0.02% of samples), with `ceil` (paper's text)
    in about 16% of samples for K = 32.
  * `next` (TECO): the tokens of z_{t+1} itself, i.e. ordinary masked-token modelling of
    z_{t+1} given h_t, which is exactly what draft-and-revise decoding asks of the head.
The input tokens are discrete ids (argmax of the one-hot samples), as in MaskGIT: the dynamics
loss does not reach the encoder through the prior's inputs; the representation KL trains it.

Sampling (`sample`, paper Alg. 1-2, draft-and-revise): start with every position [MASK].
Draft: split the K positions into T_draft random disjoint chunks and fill them one chunk per
transformer pass, each pass seeing the tokens filled so far. Revise: M times, split the
positions into T_revise fresh random chunks; per chunk re-mask it, run a pass and resample it.
That is T_draft + M * T_revise passes, every one batched over samples and positions; when
T_revise = 1 only the last pass can affect the sample, and only that one is run
(`decoding_passes`).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sub_models.functions_losses import unimix_logits
from sub_models.maskgit.transformer import ARCHITECTURES, BidirectionalTransformer
from sub_models.prior_head import PriorHead, PriorKL, kl_pair

MASK_SCHEDULES = ("cosine", "linear")
MASK_ROUNDINGS = ("floor", "ceil")
TRAIN_TARGETS = ("current", "next")
CONDITIONINGS = ("slice", "full")


def mask_count(r: torch.Tensor, num_positions: int, schedule: str, min_ratio: float,
               rounding: str = "floor") -> torch.Tensor:
    """Number of positions to mask for schedule draws r in [0, 1]; long tensor shaped like r.

    cosine: ratio = cos(pi r / 2) (MaskGIT), linear: ratio = 1 - r; the ratio is clamped to
    [min_ratio, 1], scaled by the number of positions and rounded down (`floor`, the authors'
    code: all positions are masked only when the ratio is 1) or up (`ceil`, the paper's text:
    all K when ratio > (K-1)/K, about 16% of draws for K = 32 with the cosine schedule), and
    at least one position is always masked so every sample trains the head.
    """
    if schedule == "cosine":
        ratio = torch.cos(0.5 * math.pi * r)
    elif schedule == "linear":
        ratio = 1.0 - r
    else:
        raise ValueError(f"Models.MaskGit.MaskSchedule={schedule!r}: expected one of {MASK_SCHEDULES}")
    if rounding not in MASK_ROUNDINGS:
        raise ValueError(f"Models.MaskGit.MaskRounding={rounding!r}: expected one of {MASK_ROUNDINGS}")
    scaled = ratio.clamp(min_ratio, 1.0) * num_positions
    rounded = torch.floor(scaled) if rounding == "floor" else torch.ceil(scaled)
    return rounded.long().clamp(1, num_positions)


def _random_order(rows: int, num_positions: int, device) -> torch.Tensor:
    """(rows, K) long: an independent uniformly random permutation of 0..K-1 per row."""
    return torch.rand(rows, num_positions, device=device).argsort(dim=-1)


def random_subset_masks(num_masked: torch.Tensor, num_positions: int) -> torch.Tensor:
    """num_masked (N,) long -> (N, num_positions) bool with exactly num_masked[i] True per row,
    at uniformly random positions: the first num_masked[i] entries of a random order."""
    order = _random_order(num_masked.shape[0], num_positions, num_masked.device)  # (N, K)
    chosen = torch.arange(num_positions, device=num_masked.device) < num_masked.unsqueeze(-1)  # (N, K)
    return torch.zeros_like(chosen).scatter(-1, order, chosen)


def random_partition_masks(batch: int, num_positions: int, num_chunks: int, device) -> torch.Tensor:
    """An independent random partition of the positions of every batch row into num_chunks
    disjoint chunks whose sizes differ by at most one (the first K % num_chunks are larger).

    Returns (num_chunks, batch, num_positions) bool; mask [i, b] selects chunk i of row b.
    """
    order = _random_order(batch, num_positions, device)  # (B, K)
    # deal the shuffled positions into num_chunks piles: the j-th position of the order goes to pile j % num_chunks
    pile = (torch.arange(num_positions, device=device) % num_chunks).expand(batch, -1)
    chunk_of_position = torch.empty_like(pile).scatter(-1, order, pile)  # (B, K)
    chunk_ids = torch.arange(num_chunks, device=device).view(num_chunks, 1, 1)
    return chunk_of_position.unsqueeze(0) == chunk_ids


class MaskGitPrior(PriorHead):
    def __init__(self, hidden_dim: int, num_variables: int, num_classes: int, unimix: float, cfg):
        super().__init__()
        if hidden_dim % num_variables != 0:
            raise ValueError(f"MaskGitPrior splits h into one slice per token: hidden_dim={hidden_dim} "
                             f"is not divisible by num_variables={num_variables}")
        if cfg.MaskSchedule not in MASK_SCHEDULES:
            raise ValueError(f"Models.MaskGit.MaskSchedule={cfg.MaskSchedule!r}: expected one of {MASK_SCHEDULES}")
        if cfg.MaskRounding not in MASK_ROUNDINGS:
            raise ValueError(f"Models.MaskGit.MaskRounding={cfg.MaskRounding!r}: expected one of {MASK_ROUNDINGS}")
        if cfg.Architecture not in ARCHITECTURES:
            raise ValueError(f"Models.MaskGit.Architecture={cfg.Architecture!r}: expected one of {ARCHITECTURES}")
        if cfg.TrainTarget not in TRAIN_TARGETS:
            raise ValueError(f"Models.MaskGit.TrainTarget={cfg.TrainTarget!r}: expected one of {TRAIN_TARGETS}")
        for name, low in (("DraftRounds", 1), ("ReviseRounds", 1), ("ReviseRepetitions", 0)):
            value = getattr(cfg, name)
            if not low <= value <= num_variables:
                raise ValueError(f"Models.MaskGit.{name}={value}: expected {low} <= {name} <= {num_variables} (tokens)")
        if cfg.Temperature <= 0:
            raise ValueError(f"Models.MaskGit.Temperature={cfg.Temperature}: expected > 0")
        if cfg.Conditioning not in CONDITIONINGS:
            raise ValueError(f"Models.MaskGit.Conditioning={cfg.Conditioning!r}: expected one of {CONDITIONINGS}")
        if not 0.0 <= cfg.AllMaskProbability <= 1.0:
            raise ValueError(f"Models.MaskGit.AllMaskProbability={cfg.AllMaskProbability}: expected in [0, 1]")
        self.num_variables, self.num_classes, self.unimix = num_variables, num_classes, unimix
        self.mask_id = num_classes
        self.schedule, self.min_mask_ratio, self.mask_rounding = cfg.MaskSchedule, cfg.MinMaskRatio, cfg.MaskRounding
        self.train_target, self.architecture = cfg.TrainTarget, cfg.Architecture
        self.all_mask_probability = cfg.AllMaskProbability
        # slice (paper, authors): token k reads the k-th D/K slice of h_t; full: every token reads all of h_t
        self.full_conditioning = cfg.Conditioning == "full"
        self.draft_rounds, self.revise_rounds = cfg.DraftRounds, cfg.ReviseRounds
        self.revise_repetitions, self.temperature = cfg.ReviseRepetitions, cfg.Temperature
        dim = cfg.EmbeddingDim

        # C real tokens + [MASK]; with DotProductLogits the first C rows double as the output
        # classifier (weight tying), so the logits are similarities to the token embeddings
        self.token_embedding = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.input_proj = nn.Linear(dim + (hidden_dim if self.full_conditioning else hidden_dim // num_variables), dim)
        self.position_bias = nn.Parameter(0.02 * torch.randn(num_variables, dim))
        self.transformer = BidirectionalTransformer(dim, cfg.NumLayers, cfg.NumHeads, cfg.FeedForwardDim, cfg.Dropout,
                                                    cfg.Architecture)
        # Linear + GELU + LN (the authors' MlmLayer); their Transformer ends with one more of
        # the same (fc_out, GELU, layer_norm) where the standard form has its final LayerNorm
        head_layers = 2 if cfg.Architecture == "authors" else 1
        self.output_head = nn.Sequential(*(module for _ in range(head_layers)
                                           for module in (nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))))
        if cfg.DotProductLogits:
            self.logit_bias = nn.Parameter(torch.zeros(num_classes))
            self.class_head = None
        else:
            # paper E.1 ablation "w/o MGDP": an untied linear classifier on xi
            self.class_head = nn.Linear(dim, num_classes)

    def log_probs(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """h (N, D), tokens (N, K) long ids in [0, C] (C = [MASK]) -> unimixed log-probs (N, K, C)."""
        if self.full_conditioning:
            h_per_token = h.unsqueeze(-2).expand(*h.shape[:-1], self.num_variables, -1)  # (N, K, D)
        else:
            h_per_token = h.unflatten(-1, (self.num_variables, -1))  # (N, K, D/K)
        x = torch.cat([self.token_embedding(tokens), h_per_token], dim=-1)  # (N, K, E + D/K or D)
        x = self.input_proj(x) + self.position_bias  # (N, K, E)
        xi = self.output_head(self.transformer(x))  # (N, K, E)
        if self.class_head is None:
            logits = xi @ self.token_embedding.weight[:self.num_classes].t() + self.logit_bias  # (N, K, C)
        else:
            logits = self.class_head(xi)
        return unimix_logits(logits.float(), self.unimix)

    def training_mask(self, num_samples: int, device) -> torch.Tensor:
        """(num_samples, K) bool: the positions masked for one training sample each; with
        probability AllMaskProbability a sample masks all K (the only input sampling sees at
        T_draft = T_revise = M = 1), otherwise the schedule's count."""
        r = torch.rand(num_samples, device=device)
        count = mask_count(r, self.num_variables, self.schedule, self.min_mask_ratio, self.mask_rounding)
        all_masked = torch.rand(num_samples, device=device) < self.all_mask_probability
        return random_subset_masks(count.masked_fill(all_masked, self.num_variables), self.num_variables)

    def kl_terms(self, h, z_current, z_next, posterior_logits_next) -> PriorKL:
        batch, time = h.shape[:2]
        shown = z_current if self.train_target == "current" else z_next
        tokens = shown.argmax(-1).flatten(0, 1)  # (B*T, K)
        mask = self.training_mask(tokens.shape[0], h.device)  # (B*T, K)
        prior_logits = self.log_probs(h.flatten(0, 1), tokens.masked_fill(mask, self.mask_id))
        prior_logits = prior_logits.unflatten(0, (batch, time))  # (B, T, K, C)
        if self.architecture == "authors":
            # their world model mixes the prior's already unimixed output once more before the
            # KL (world_models.py, `self.dist_head.unimix(z_logits)`); sampling mixes once
            prior_logits = unimix_logits(prior_logits, self.unimix)
        token_mask = mask.unflatten(0, (batch, time)).float()  # (B, T, K)
        dynamics, representation = kl_pair(posterior_logits_next, prior_logits, token_mask)
        return PriorKL(dynamics, representation, prior_logits, token_mask)

    def decoding_passes(self, batch: int, device, skip_discarded: bool = True) -> torch.Tensor:
        """(passes, batch, K) bool: the positions (re)sampled by each pass of draft-and-revise,
        T_draft + M * T_revise passes.

        With T_revise = 1 (and M >= 1) every revise pass re-masks all K positions, so it sees
        only h, exactly like a draft pass over all [MASK], and discards everything sampled
        before it: only the last pass decides the sample. `skip_discarded` then returns that
        one all-positions pass, which draws from the same distribution at a fraction of the cost
        (the paper's setting 1, 1, 1 needs one transformer pass instead of two).
        """
        if skip_discarded and self.revise_rounds == 1 and self.revise_repetitions >= 1:
            return torch.ones(1, batch, self.num_variables, dtype=torch.bool, device=device)
        draft = random_partition_masks(batch, self.num_variables, self.draft_rounds, device)
        # all M revise partitions in one draw: rows are (repetition, sample) pairs
        revise = random_partition_masks(self.revise_repetitions * batch, self.num_variables,
                                        self.revise_rounds, device)  # (T_revise, M*batch, K)
        revise = revise.unflatten(1, (self.revise_repetitions, batch)).transpose(0, 1).flatten(0, 1)
        return torch.cat([draft, revise], dim=0)

    def sample(self, h):
        passes = self.decoding_passes(h.shape[0], h.device)
        # standard Gumbel noise for every pass, drawn in one go: Gumbel-max sampling is batched
        # and needs no host sync (torch.multinomial checks its input on the host)
        gumbel = -torch.empty(*passes.shape, self.num_classes, device=h.device).exponential_().log()
        return self.decode(h, passes, gumbel)

    def decode(self, h: torch.Tensor, passes: torch.Tensor, gumbel: torch.Tensor):
        """Draft-and-revise decoding for given passes (P, N, K) bool and Gumbel noise (P, N, K, C).
        Returns the one-hot sample (N, K, C) and, for each position, the log-probs of the last
        pass that (re)sampled it, i.e. the distribution its final token was drawn from."""
        batch = h.shape[0]
        tokens = torch.full((batch, self.num_variables), self.mask_id, dtype=torch.long, device=h.device)
        log_probs = torch.zeros(batch, self.num_variables, self.num_classes, device=h.device)
        for chunk, noise in zip(passes.unbind(0), gumbel.unbind(0)):  # chunk (N, K) bool, noise (N, K, C)
            # during the draft the not-yet-filled positions are still [MASK]; this re-masks the
            # chunk being revised and is a no-op for the chunk being drafted
            pass_log_probs = self.log_probs(h, tokens.masked_fill(chunk, self.mask_id))  # (N, K, C)
            drawn = (pass_log_probs / self.temperature + noise).argmax(-1)  # ~ Categorical(logits / temperature)
            tokens = torch.where(chunk, drawn, tokens)
            log_probs = torch.where(chunk.unsqueeze(-1), pass_log_probs, log_probs)
        return F.one_hot(tokens, self.num_classes).to(h.dtype), log_probs
