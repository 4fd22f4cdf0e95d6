"""The world model of STORM / GIT-STORM (paper section 3, tables 9-14).

    o_t --Encoder--> q(z_t | o_t) (K x C categorical) --sample--> z_t
    e_t = g(z_t, a_t)                  state mixer
    h_t = f(e_{<=t})                   causal transformer
    p(z_{t+1} | h_t)                   prior head: MLP (STORM) or MaskGIT (GIT-STORM)
    r_t, c_t from h_t                  reward (symlog two-hot) and termination heads
    o_t <--Decoder-- z_t               reconstruction

`WorldModel.loss` is the training objective, `update` one optimiser step, `imagine` the
rollout the agent learns from, `act_state` what the policy sees while acting,
`sampling_figures` the prior's like-for-like figures (logged once per log).
"""
from contextlib import nullcontext
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import plain_section
from sub_models.functions_losses import SymlogTwoHot
from sub_models.latents import build_latent
from sub_models.optim import guarded_step, make_adam
from sub_models.priors import build_prior
from sub_models.transformer_model import StochasticTransformer


class Encoder(nn.Module):
    """obs/255 -> EncoderStages x [Conv k4 s2 p1 (no bias) + BN + ReLU] -> 4x4 -> Linear -> K*C logits.

    The ReLUs here and in the decoder work in place: their inputs, BatchNorm outputs, are needed by
    no backward pass, and writing a fresh tensor for each (up to 1024 x 32 x 32 x 32 at paper size)
    is a third of a second per world-model update on a CPU (the authors' layers are in place too)."""

    def __init__(self, in_channels: int, base_channels: int, stages: int, num_variables: int, num_classes: int):
        super().__init__()
        layers, channels = [], in_channels
        for i in range(stages):
            out = base_channels * 2 ** i
            layers += [nn.Conv2d(channels, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.convs = nn.Sequential(*layers)
        self.to_logits = nn.Linear(channels * 4 * 4, num_variables * num_classes)
        self.latent_shape = (num_variables, num_classes)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # obs: (N, H, W, 3) uint8, or floats already scaled to [0, 1] (WorldModel.loss) -> logits (N, K, C)
        x = obs.permute(0, 3, 1, 2)
        x = x / 255.0 if x.dtype == torch.uint8 else x   # one pass: uint8 / float computes in float32
        return self.to_logits(self.convs(x).flatten(1)).unflatten(-1, self.latent_shape)


class Decoder(nn.Module):
    """z (K*C) -> Linear (no bias) -> top x 4 x 4 -> BN + ReLU -> [ConvT k4 s2 p1 + BN + ReLU]* -> ConvT -> image.

    The first BatchNorm is 2-D over the `top` channels (statistics shared by the 16
    positions), as in the authors' decoder."""

    def __init__(self, out_channels: int, base_channels: int, stages: int, num_variables: int, num_classes: int):
        super().__init__()
        top = base_channels * 2 ** (stages - 1)
        self.from_latent = nn.Linear(num_variables * num_classes, top * 16, bias=False)
        layers, channels = [nn.BatchNorm2d(top), nn.ReLU(inplace=True)], top
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(channels // 2), nn.ReLU(inplace=True)]
            channels //= 2
        layers.append(nn.ConvTranspose2d(channels, out_channels, 4, 2, 1))
        self.deconvs = nn.Sequential(*layers)
        self.top = top

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # z: (N, K, C) -> reconstruction (N, H, W, 3) in the units of obs/255
        x = self.from_latent(z.flatten(1)).view(-1, self.top, 4, 4)    # (N, top, 4, 4)
        # Channels-last memory, as the encoder's input already is (a permuted (N, H, W, 3) frame):
        # on a CPU the decoder runs 1.5x faster in it (forward and backward at paper size;
        # tools/benchmarks/memory_layout.py), on a GPU it is the layout tensor cores read, and the
        # output permuted to (N, H, W, 3) is then contiguous, like the frames it is compared with.
        # Same numbers, but for one thing: PyTorch's CPU BatchNorm sums a channels-last batch's
        # statistics in float32 rather than float64, which moves its output by up to ~1e-3 at
        # paper size (the encoder's BatchNorms, the authors' too, already run so).
        x = x.contiguous(memory_format=torch.channels_last)
        return self.deconvs(x).permute(0, 2, 3, 1)


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """2 x [Linear (no bias) + LN + ReLU] -> Linear (table 14)."""
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.LayerNorm(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden, bias=False), nn.LayerNorm(hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim))


class Imagination(NamedTuple):
    latents: torch.Tensor       # (B, H+1, K*C)  z_0..z_H, z_0 sampled from the prior after the context
    hiddens: torch.Tensor       # (B, H+1, D)    h that z_l was predicted from
    actions: torch.Tensor       # (B, H) or (B, H, A)   a_l taken in s_l = [z_l, h_l]
    rewards: torch.Tensor       # (B, H)  r_l for the transition out of s_l
    terminations: torch.Tensor  # (B, H)  1.0 if that transition ends the episode


Policy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def autocast_for(device: torch.device, use_bf16: bool):
    if use_bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


class WorldModel(nn.Module):
    def __init__(self, models_cfg, action_dim: int, discrete_actions: bool, use_bf16: bool = False):
        super().__init__()
        wm = models_cfg.WorldModel
        self.cfg = plain_section(wm)
        self.action_dim, self.discrete_actions, self.use_bf16 = action_dim, discrete_actions, use_bf16
        self.num_variables, self.num_classes = wm.CategoricalDim, wm.ClassDim
        self.encoder = Encoder(wm.InChannels, wm.EncoderBaseChannels, wm.EncoderStages, wm.CategoricalDim, wm.ClassDim)
        # q(z|o) on the encoder's K x C features: categorical or VQ-VAE (sub_models/latents.py)
        self.encoder.latent = build_latent(wm.Latent, wm.CategoricalDim, wm.ClassDim, wm.Unimix)
        self.decoder = Decoder(wm.InChannels, wm.EncoderBaseChannels, wm.EncoderStages, wm.CategoricalDim, wm.ClassDim)
        self.sequence_model = StochasticTransformer(
            wm.CategoricalDim, wm.ClassDim, action_dim, wm.TransformerHiddenDim, wm.TransformerNumLayers,
            wm.TransformerNumHeads, wm.TransformerFeedForwardDim, wm.TransformerMaxLength, wm.Dropout, wm.StateMixer,
            wm.TransformerNormEps)
        self.prior = build_prior(wm, models_cfg.MaskGit)
        self.reward_head = mlp_head(wm.TransformerHiddenDim, wm.HeadHiddenDim, wm.RewardBins)
        self.termination_head = mlp_head(wm.TransformerHiddenDim, wm.HeadHiddenDim, 1)
        self.reward_codec = SymlogTwoHot(wm.RewardBins, wm.RewardLow, wm.RewardHigh)
        if wm.PriorLearningRateScale <= 0:
            raise ValueError(f"Models.WorldModel.PriorLearningRateScale={wm.PriorLearningRateScale}: expected > 0")
        params = self.parameters()
        if wm.PriorLearningRateScale != 1.0:  # the prior head in a parameter group of its own
            prior = {id(p) for p in self.prior.parameters()}
            params = [{"params": [p for p in self.parameters() if id(p) not in prior]},
                      {"params": list(self.prior.parameters()), "lr": wm.PriorLearningRateScale * wm.LearningRate}]
        self.optimizer = make_adam(params, wm.LearningRate, wm.AdamEps)

    @property
    def device(self) -> torch.device:
        return self.reward_head[0].weight.device

    @property
    def latent_dim(self) -> int:
        return self.num_variables * self.num_classes

    def action_input(self, action: torch.Tensor) -> torch.Tensor:
        """Discrete action indices -> one-hot; continuous actions are clipped to the action box
        [-1, 1], as the environment executes them (the policy's Normal draw is unbounded)."""
        if self.discrete_actions:
            return F.one_hot(action.long(), self.action_dim).float()
        return action.float().clamp(-1.0, 1.0)

    def encode(self, obs: torch.Tensor, return_terms: bool = False):
        """obs (..., H, W, 3) uint8 (or scaled to [0, 1]) -> (posterior log-probs (..., K, C), one-hot sample (..., K, C))
        whose gradient flows to the encoder (straight-through); with return_terms also a dict of
        the latent's extra loss ("loss", VQ-VAE only) and figures (sub_models/latents.py)."""
        lead = obs.shape[:-3]
        features = self.encoder(obs.reshape(-1, *obs.shape[-3:])).float()
        logits, sample = self.encoder.latent(features)
        out = logits.reshape(*lead, *logits.shape[1:]), sample.reshape(*lead, *sample.shape[1:])
        return (*out, self.encoder.latent.terms(features, sample)) if return_terms else out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., K, C) -> images (..., H, W, 3) in [0, 1] units (unclipped)."""
        lead = z.shape[:-2]
        images = self.decoder(z.reshape(-1, *z.shape[-2:]))
        return images.reshape(*lead, *images.shape[1:])

    def loss(self, obs, actions, rewards, terminations) -> tuple[torch.Tensor, dict]:
        """obs (B, T, H, W, 3) uint8; actions (B, T[, A]); rewards, terminations (B, T).

        Step t: a_t is taken on o_t and gives r_t, c_t; h_t = f(z_{<=t}, a_{<=t}) predicts r_t, c_t
        and z_{t+1}. Returns the total loss and detached per-term figures.
        """
        cfg = self.cfg
        target = obs / 255.0   # float32 in [0, 1], computed once for the encoder and the reconstruction loss
        posterior_logits, z, latent_terms = self.encode(target, return_terms=True)   # (B, T, K, C)
        reconstruction = self.decode(z)
        reconstruction_loss = (reconstruction.float() - target).pow(2).sum((-3, -2, -1)).mean()

        h = self.sequence_model(z, self.action_input(actions))            # (B, T, D)
        reward_loss = self.reward_codec.loss(self.reward_head(h), rewards).mean()
        termination_logits = self.termination_head(h).squeeze(-1).float()
        termination_loss = F.binary_cross_entropy_with_logits(termination_logits, terminations.float())

        kl = self.prior.kl_terms(h[:, :-1], z[:, :-1], z[:, 1:], posterior_logits[:, 1:])
        if cfg.FreeBitsPerStep:   # eq. 3-4 read per step: max(1, KL_t), then the mean
            dynamics_loss = kl.dynamics_kl.clamp(min=cfg.FreeBits).mean()
            representation_loss = kl.representation_kl.clamp(min=cfg.FreeBits).mean()
        else:                     # the authors' code: max(1, mean KL)
            dynamics_loss = kl.dynamics_kl.mean().clamp(min=cfg.FreeBits)
            representation_loss = kl.representation_kl.mean().clamp(min=cfg.FreeBits)
        if self.encoder.latent.deterministic:   # VQ-VAE: no representation KL for a point mass; the
            representation_loss = torch.zeros_like(representation_loss)   # VQ losses stand in (latents.py)

        total = (cfg.ReconstructionWeight * reconstruction_loss + cfg.RewardWeight * reward_loss
                 + cfg.TerminationWeight * termination_loss + cfg.DynamicsWeight * dynamics_loss
                 + cfg.RepresentationWeight * representation_loss + latent_terms.pop("loss", 0.0))

        # Perplexity of the posterior's z_{t+1} tokens under the prior (paper appendix K),
        # over the tokens the prior was asked to predict.
        token_nll = -(kl.prior_logits * z[:, 1:].detach()).sum(-1)
        prior_perplexity = torch.exp((token_nll * kl.token_mask).sum() / kl.token_mask.sum().clamp(min=1))
        metrics = {
            "world_model/total_loss": total, "world_model/reconstruction_loss": reconstruction_loss,
            "world_model/reward_loss": reward_loss, "world_model/termination_loss": termination_loss,
            "world_model/dynamics_loss": dynamics_loss, "world_model/representation_loss": representation_loss,
            "world_model/dynamics_kl": kl.dynamics_kl.mean(), "world_model/representation_kl": kl.representation_kl.mean(),
            "world_model/prior_perplexity": prior_perplexity, **latent_terms,
        }
        return total, {k: v.detach() for k, v in metrics.items()}

    def update(self, obs, actions, rewards, terminations) -> tuple[dict, torch.Tensor]:
        """One Adam step on a batch. Returns (figures, finite): a non-finite loss or gradient
        skips the step so one bad batch cannot poison the weights; `finite` is a 0-dim bool
        tensor decided on the device (no host sync)."""
        self.train()
        with autocast_for(self.device, self.use_bf16):
            total, metrics = self.loss(obs, actions, rewards, terminations)
        grad_norm, finite = guarded_step(self.optimizer, total, self.cfg.MaxGradNorm)
        metrics["world_model/grad_norm"] = grad_norm
        return metrics, finite

    @torch.no_grad()
    def act_state(self, latents: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the policy sees when acting: the history of posterior latents (N, L, K, C) and
        actions (N, L[, A]) up to the current step -> (prior sample of the next z flattened (N, K*C),
        h of the last step (N, D)), the same kind of state as in imagination."""
        self.eval()
        with autocast_for(self.device, self.use_bf16):
            h = self.sequence_model(latents, self.action_input(actions))[:, -1]
            z_next, _ = self.prior.sample(h)
        return z_next.flatten(-2).float(), h.float()

    @torch.no_grad()
    def sampling_figures(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The prior's like-for-like figures on sequences obs (B, T, H, W, 3), actions (B, T[, A]),
        in eval mode: posterior of z_{t+1} against what `prior.sample(h_t)` draws it from, over
        all K tokens (PriorHead.sampling_figures). Comparable across priors, unlike dynamics_kl."""
        self.eval()
        with autocast_for(self.device, self.use_bf16):
            posterior_logits, z = self.encode(obs)                     # (B, T, K, C)
            h = self.sequence_model(z, self.action_input(actions))      # (B, T, D)
            kl, perplexity = self.prior.sampling_figures(h[:, :-1], posterior_logits[:, 1:], z[:, 1:])
        return {"world_model/sampling_kl": kl, "world_model/sampling_perplexity": perplexity}

    @torch.no_grad()
    def encode_sample(self, obs: torch.Tensor) -> torch.Tensor:
        """Posterior one-hot sample (..., K, C) of observations, in eval mode (acting, context)."""
        self.eval()
        with autocast_for(self.device, self.use_bf16):
            return self.encode(obs)[1].float()

    def compile_hot_paths(self, backend: str = "inductor") -> None:
        """torch.compile the training loss (forward and backward) and the imagination rollout,
        each as one graph (BasicSettings.Compile, update_steps.py). The eager methods are replaced in place."""
        self.loss = torch.compile(self.loss, fullgraph=True, backend=backend)
        self.rollout = torch.compile(self.rollout, fullgraph=True, backend=backend)

    def imagine(self, obs, actions, policy: Policy | torch.Tensor, horizon: int, eager: bool = False) -> Imagination:
        """Roll out `horizon` steps from real context sequences, in eval mode.

        obs (B, C, H, W, 3) uint8 and actions (B, C[, A]) are encoded and fed through the
        transformer, filling its key/value cache; then per step the policy picks a_l from
        s_l = [z_l, h_l], the transformer consumes (z_l, a_l) as one new step and the heads
        predict r_l, c_l and z_{l+1}. Everything stays on the device. `policy` is a callable
        (z (B, K*C), h (B, D)) -> action, or a tensor (B, horizon[, A]) of actions to replay
        open loop (videos, video prediction). `eager` runs the uncompiled rollout whatever
        BasicSettings.Compile says: a video's batch of 4 and tensor policy would otherwise
        compile the rollout a second time, for minutes, to draw one video.
        """
        self.eval()
        if eager:   # the class's method, not the compiled one compile_hot_paths put on the instance
            return type(self).rollout(self, obs, actions, policy, horizon)
        return self.rollout(obs, actions, policy, horizon)

    @torch.no_grad()
    def rollout(self, obs, actions, policy: Policy | torch.Tensor, horizon: int) -> Imagination:
        """`imagine` without the switch to eval mode: the function BasicSettings.Compile compiles."""
        batch = obs.shape[0]
        with autocast_for(self.device, self.use_bf16):
            z_context = self.encode(obs)[1]
            bf16 = self.use_bf16 and self.device.type == "cuda"   # the dtype autocast_for computes in
            cache = self.sequence_model.start_cache(batch, self.device, torch.bfloat16 if bf16 else torch.float32,
                                                    steps=obs.shape[1] + horizon)
            h = self.sequence_model(z_context, self.action_input(actions), cache)[:, -1]
            z, _ = self.prior.sample(h)
            latents, hiddens, taken, rewards, terminations = [z.flatten(-2)], [h], [], [], []
            for _ in range(horizon):
                action = policy(z.flatten(-2).float(), h.float()) if callable(policy) else policy[:, len(taken)]
                h = self.sequence_model(z[:, None], self.action_input(action)[:, None], cache)[:, 0]
                rewards.append(self.reward_codec.decode(self.reward_head(h)))
                terminations.append((self.termination_head(h).squeeze(-1) > 0).float())
                z, _ = self.prior.sample(h)
                latents.append(z.flatten(-2))
                hiddens.append(h)
                taken.append(action)
        return Imagination(torch.stack(latents, 1).float(), torch.stack(hiddens, 1).float(),
                           torch.stack(taken, 1), torch.stack(rewards, 1).float(),
                           torch.stack(terminations, 1).float())
