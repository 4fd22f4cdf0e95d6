"""The posterior q(z_t | o_t): how the encoder's K x C features become K one-hot tokens.

`Models.WorldModel.Latent` picks one; both give the world model the same thing, so the
priors, the state mixer, the decoder and the agent work unchanged:

    forward(features (N, K, C)) -> (posterior log-probs (N, K, C), one-hot sample (N, K, C))
    terms(features, sample)     -> extra loss "loss" (added to the world-model total) and
                                   figures "world_model/..." for TensorBoard (VQ-VAE only)

* `categorical` (STORM, DreamerV3; the default): K categoricals of C classes with 1% unimix,
  one sample each, straight-through gradient of the probabilities.
* `vqvae` (paper appendix E.3, table 7): the K feature vectors of dimension C are quantised to
  the nearest of C code vectors of dimension C (the paper's 32 entries of dimension 32, to
  match 32 categoricals of 32 classes); token k of z is the one-hot of the chosen code. The
  posterior is deterministic (a point mass), so:
    - straight-through gradient: z is exactly the one-hot in value, with the gradient of
      softmax(-||e - c_j||^2) over the codes (codebook detached), so what the decoder, mixer
      and heads want of z reaches the encoder vector e (VQ-VAE copies the gradient of the
      quantised vector to e; here z is a one-hot, not a code vector, so the soft assignment
      is the nearest differentiable stand-in);
    - codebook learning by the VQ-VAE losses (van den Oord et al., 2017), not EMA updates:
      codebook loss ||sg(e) - c||^2 plus commitment loss BETA ||e - sg(c)||^2, summed over the
      C dimensions and the K vectors and averaged over frames (the units of the summed KL);
    - the representation KL KL[q || sg(p)] has no gradient for a point mass chosen by argmin,
      so the world model sets it to zero and adds the two VQ losses instead (weight 1, as in
      VQ-VAE); the dynamics loss KL[sg(q) || p] of a point mass is the cross-entropy
      -log p(selected code), which the returned log-probs (0 for the chosen code, -1e4 for the
      others: exactly a point mass after softmax) make every prior compute unchanged, free
      bits included.
  No dead-code restarts: the paper reports that these latents collapse, and
  `world_model/code_perplexity` (exp of the entropy of how often each code is used over the
  batch's K tokens; C = all codes used equally, 1 = one code) shows it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from sub_models.functions_losses import sample_one_hot_straight_through, unimix_logits

LATENTS = ("categorical", "vqvae")


def code_perplexity(sample: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the share of (frame, variable) tokens that chose each class: in [1, C]."""
    usage = sample.detach().reshape(-1, sample.shape[-1]).float().mean(0)
    return torch.exp(-(usage * torch.log(usage.clamp(min=1e-12))).sum())


class CategoricalPosterior(nn.Module):
    """K categoricals with unimix; a one-hot sample with the probabilities' gradient."""
    deterministic = False

    def __init__(self, num_variables: int, num_classes: int, unimix: float):
        super().__init__()
        self.unimix = unimix

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = unimix_logits(features.float(), self.unimix)
        return logits, sample_one_hot_straight_through(logits)

    def terms(self, features: torch.Tensor, sample: torch.Tensor) -> dict:
        return {}   # the default run logs exactly what it did before this module existed


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of K vectors of dimension C to C codes (see the module docstring)."""
    deterministic = True
    BETA = 0.25               # commitment weight of VQ-VAE (van den Oord et al., 2017)
    LOG_ZERO = -1.0e4         # log-prob of the codes not chosen: exp() is exactly 0 in fp32

    def __init__(self, num_variables: int, num_classes: int, unimix: float):
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(num_classes, num_classes))   # C codes of dimension C
        nn.init.uniform_(self.codebook, -1.0 / num_classes, 1.0 / num_classes)

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Squared distances (N, K, C) of every feature vector to every code, in fp32 even under
        autocast (a bf16 matmul could pick the wrong nearest code); codebook detached."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            e, codes = features.float(), self.codebook.detach().float()
            return (e.pow(2).sum(-1, keepdim=True) - 2.0 * e @ codes.t() + codes.pow(2).sum(-1)).clamp(min=0)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distances = self.distances(features)
        one_hot = F.one_hot(distances.argmin(-1), self.codebook.shape[0]).to(distances.dtype)
        soft = torch.softmax(-distances, dim=-1)
        sample = one_hot + (soft - soft.detach())   # exactly one-hot in value, gradient of the soft assignment
        log_probs = torch.where(one_hot > 0, 0.0, self.LOG_ZERO)   # a point mass on the chosen code
        return log_probs, sample

    def terms(self, features: torch.Tensor, sample: torch.Tensor) -> dict:
        e = features.float()
        quantised = self.codebook[sample.detach().argmax(-1)].float()    # c_{argmin}: (N, K, C)
        codebook_loss = (e.detach() - quantised).pow(2).sum((-2, -1)).mean()
        commitment_loss = (e - quantised.detach()).pow(2).sum((-2, -1)).mean()
        return {"loss": codebook_loss + self.BETA * commitment_loss,
                "world_model/vq_codebook_loss": codebook_loss,
                "world_model/vq_commitment_loss": commitment_loss,
                "world_model/code_perplexity": code_perplexity(sample)}


def build_latent(kind: str, num_variables: int, num_classes: int, unimix: float) -> nn.Module:
    """The posterior module selected by Models.WorldModel.Latent."""
    if kind == "categorical":
        return CategoricalPosterior(num_variables, num_classes, unimix)
    if kind == "vqvae":
        return VectorQuantizer(num_variables, num_classes, unimix)
    raise ValueError(f"Models.WorldModel.Latent={kind!r}: expected one of {', '.join(LATENTS)}")
