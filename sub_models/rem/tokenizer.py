"""REM's tokenizer V: a convolutional VQ-VAE, 64x64x3 frame -> 8x8 = 64 tokens of a 512 x 256 codebook.

REM_SPEC.md section 3 (REM's `SimpleEncoder` / `SimpleDecoder`, `Tokenizer`):

    x = 2 * obs/255 - 1
    GN: GroupNorm with g groups and eps 1e-6 (REM's `Normalize`; PyTorch's default is 1e-5)
    encoder: Conv3x3 3->C | per down step (C -> 2C): GN(g, C), SiLU, zero-pad (0,1,0,1), Conv3x3 s2 C->2C,
             Conv3x3 2C->2C | GN(g, 256), SiLU, Conv3x3 256->256 | pre-quant Conv1x1 256->256
    quantiser: z_k = argmin_i ||h_k - e_i||^2 per grid cell, tokens in row-major (h, w) order;
               straight-through to the encoder; codebook trained by the loss only (no EMA)
    decoder: post-quant Conv1x1 256->256 | Conv3x3 256->256 | per up step (C -> C/2): GN(g, C), SiLU,
             nearest x2, Conv3x3 C->C/2, Conv3x3 C/2->C/2 | GN(g, 32), SiLU, Conv3x3 32->3 (no activation)
    loss: MSE(z_q, sg z) + beta MSE(z, sg z_q) + MSE(x, x_hat) [+ LPIPS, not available here]

With the paper's sizes (32 base channels, 3 down steps, 8 groups, 512 x 256 codebook):
3,189,667 parameters.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sub_models.optim import guarded_step


def preprocess(obs: Tensor) -> Tensor:
    """uint8 frames (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return obs.permute(0, 3, 1, 2).float().div(255.0).mul(2.0).sub(1.0)


def postprocess(x: Tensor) -> Tensor:
    """Decoder output (N, 3, H, W) in [-1, 1] units -> uint8 frames (N, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def codes_from_tokens(tokens: Tensor, codebook: Tensor) -> Tensor:
    """tokens (..., K) -> code maps (..., E, h, w), h = w = sqrt(K): the codebook rows of the tokens
    (what `quantize` returns as z_q), read detached so that their reader never trains the codebook."""
    side = math.isqrt(tokens.shape[-1])
    if side * side != tokens.shape[-1]:
        raise ValueError(f"tokens per frame must be a square (an h x h grid), got {tokens.shape[-1]}")
    codes = F.embedding(tokens, codebook.detach())                          # (..., K, E)
    return codes.unflatten(-2, (side, side)).movedim(-1, -3)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class DownBlock(nn.Module):
    """GN -> SiLU -> zero-pad right/bottom + Conv3x3 stride 2 (C -> 2C) -> Conv3x3 (2C -> 2C)."""

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps)
        self.down = nn.Conv2d(channels, 2 * channels, 3, stride=2)
        self.conv = conv3x3(2 * channels, 2 * channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.down(F.pad(F.silu(self.norm(x)), (0, 1, 0, 1))))


class UpBlock(nn.Module):
    """GN -> SiLU -> nearest x2 -> Conv3x3 (C -> C/2) -> Conv3x3 (C/2 -> C/2)."""

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps)
        self.conv1 = conv3x3(channels, channels // 2)
        self.conv2 = conv3x3(channels // 2, channels // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(F.silu(self.norm(x)), scale_factor=2, mode="nearest-exact")
        return self.conv2(self.conv1(x))


class Encoder(nn.Module):
    def __init__(self, in_channels: int, base_channels: int, steps: int, groups: int, eps: float, embed_dim: int):
        super().__init__()
        top = base_channels * 2 ** steps
        self.in_conv = conv3x3(in_channels, base_channels)
        self.down = nn.Sequential(*(DownBlock(base_channels * 2 ** i, groups, eps) for i in range(steps)))
        self.out_norm = nn.GroupNorm(groups, top, eps)
        self.out_conv = conv3x3(top, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_conv(F.silu(self.out_norm(self.down(self.in_conv(x)))))


class Decoder(nn.Module):
    def __init__(self, out_channels: int, base_channels: int, steps: int, groups: int, eps: float, embed_dim: int):
        super().__init__()
        top = base_channels * 2 ** steps
        self.in_conv = conv3x3(embed_dim, top)
        self.up = nn.Sequential(*(UpBlock(top // 2 ** i, groups, eps) for i in range(steps)))
        self.out_norm = nn.GroupNorm(groups, base_channels, eps)
        self.out_conv = conv3x3(base_channels, out_channels)

    def forward(self, z: Tensor) -> Tensor:
        return self.out_conv(F.silu(self.out_norm(self.up(self.in_conv(z)))))


class Tokenizer(nn.Module):
    """`cfg` is `Models.Tokenizer` of config_files/REM.yaml."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.embed_dim = cfg.VocabSize, cfg.EmbedDim
        self.encoder = Encoder(cfg.InChannels, cfg.BaseChannels, cfg.DownsampleSteps, cfg.NormGroups, cfg.NormEps,
                               cfg.EmbedDim)
        self.pre_quant_conv = nn.Conv2d(cfg.EmbedDim, cfg.EmbedDim, 1)
        self.embedding = nn.Embedding(cfg.VocabSize, cfg.EmbedDim)
        nn.init.uniform_(self.embedding.weight, -1.0 / cfg.VocabSize, 1.0 / cfg.VocabSize)
        self.post_quant_conv = nn.Conv2d(cfg.EmbedDim, cfg.EmbedDim, 1)
        self.decoder = Decoder(cfg.InChannels, cfg.BaseChannels, cfg.DownsampleSteps, cfg.NormGroups, cfg.NormEps,
                               cfg.EmbedDim)
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.LearningRate, weight_decay=cfg.WeightDecay,
                                           fused=True)   # fused: guarded_step skips on the device

    @property
    def codebook(self) -> Tensor:
        """(VocabSize, EmbedDim); the world model reads it detached (it never trains it)."""
        return self.embedding.weight

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (N, E, h, w) -> (tokens (N, h*w) row-major, z_q (N, E, h, w): exactly codebook rows)."""
        n, e, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, e)
        codebook = self.embedding.weight
        distances = (flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)[None]
                     - 2.0 * flat @ codebook.t())
        tokens = distances.argmin(dim=1)
        z_q = self.embedding(tokens).reshape(n, h, w, e).permute(0, 3, 1, 2)
        return tokens.reshape(n, h * w), z_q

    @staticmethod
    def straight_through(z: Tensor, z_q: Tensor) -> Tensor:
        """Forward value exactly z_q (z - sg(z) is exactly 0); gradient w.r.t. the result goes to z
        unchanged (and none to the codebook, as z + sg(z_q - z) in REM)."""
        return z_q.detach() + (z - z.detach())

    def encode(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """obs (..., H, W, 3) uint8 -> (tokens (..., K), z (N, E, h, w), z_q (N, E, h, w)), N = prod(...)."""
        lead = obs.shape[:-3]
        z = self.pre_quant_conv(self.encoder(preprocess(obs.reshape(-1, *obs.shape[-3:]))))
        tokens, z_q = self.quantize(z)
        return tokens.reshape(*lead, -1), z, z_q

    def decode(self, z_q: Tensor) -> Tensor:
        """(N, E, h, w) -> reconstruction (N, 3, H, W) in [-1, 1] units (unclipped)."""
        return self.decoder(self.post_quant_conv(z_q))

    @torch.no_grad()
    def tokenize(self, obs: Tensor) -> Tensor:
        """obs (..., H, W, 3) uint8 -> tokens (..., K), no gradient (what the world model trains on)."""
        return self.encode(obs)[0]

    def to_codes(self, tokens: Tensor) -> Tensor:
        """tokens (..., K) -> code maps (..., E, h, w) (the controller's input), read without gradient."""
        return codes_from_tokens(tokens, self.embedding.weight)

    def loss(self, obs: Tensor) -> tuple[Tensor, dict]:
        """obs (N, H, W, 3) uint8 -> (L_V, metrics): commitment (codebook + beta * encoder) + MSE reconstruction."""
        x = preprocess(obs.reshape(-1, *obs.shape[-3:]))
        z = self.pre_quant_conv(self.encoder(x))
        tokens, z_q = self.quantize(z)
        codebook_loss = F.mse_loss(z_q, z.detach())
        commitment = F.mse_loss(z, z_q.detach())
        commit_loss = codebook_loss + self.cfg.CommitmentBeta * commitment
        reconstruction = F.mse_loss(self.decode(self.straight_through(z, z_q)), x)
        total = commit_loss + reconstruction
        usage = torch.bincount(tokens.flatten(), minlength=self.vocab_size).float()
        probs = usage / usage.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())
        metrics = {"tokenizer/total_loss": total.detach(), "tokenizer/commitment_loss": commit_loss.detach(),
                   "tokenizer/reconstruction_loss": reconstruction.detach(),
                   "tokenizer/codebook_perplexity": perplexity.detach()}
        return total, metrics

    def update(self, obs: Tensor) -> tuple[dict, Tensor]:
        """One AdamW step on a batch of frames; a non-finite loss or gradient skips the step
        (decided on the device: `finite` is a 0-dim bool tensor, sub_models/optim.py)."""
        self.train()
        total, metrics = self.loss(obs)
        metrics["tokenizer/grad_norm"], finite = guarded_step(self.optimizer, total, self.cfg.MaxGradNorm)
        return metrics, finite
