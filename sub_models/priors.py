"""The dynamics priors p(z_{t+1} | h_t) (interface: sub_models/prior_head.py).

STORM's prior is a single linear layer (MLPPrior, here). GIT-STORM's is a MaskGIT head
with draft-and-revise sampling (sub_models/maskgit/). `build_prior` picks one from
`Models.WorldModel.Prior`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from sub_models.functions_losses import unimix_logits
from sub_models.maskgit import MaskGitPrior
from sub_models.prior_head import PriorHead, PriorKL, kl_pair


class MLPPrior(PriorHead):
    """STORM's prior: Linear(D -> K*C) logits with unimix, every token predicted at once."""

    def __init__(self, hidden_dim: int, num_variables: int, num_classes: int, unimix: float):
        super().__init__()
        self.num_variables, self.num_classes, self.unimix = num_variables, num_classes, unimix
        self.head = nn.Linear(hidden_dim, num_variables * num_classes)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        raw = self.head(h).unflatten(-1, (self.num_variables, self.num_classes))
        return unimix_logits(raw.float(), self.unimix)

    def kl_terms(self, h, z_current, z_next, posterior_logits_next) -> PriorKL:
        prior_logits = self.logits(h)
        token_mask = torch.ones(prior_logits.shape[:-1], device=h.device)
        dynamics, representation = kl_pair(posterior_logits_next, prior_logits, token_mask)
        return PriorKL(dynamics, representation, prior_logits, token_mask)

    def sample(self, h):
        logits = self.logits(h)
        # Gumbel-max: a categorical sample without the argument checks that sync with the host
        index = (logits - torch.empty_like(logits).exponential_().log()).argmax(-1)
        return F.one_hot(index, self.num_classes).to(h.dtype), logits


def build_prior(world_model_cfg, maskgit_cfg) -> PriorHead:
    kind = world_model_cfg.Prior
    common = dict(hidden_dim=world_model_cfg.TransformerHiddenDim,
                  num_variables=world_model_cfg.CategoricalDim,
                  num_classes=world_model_cfg.ClassDim,
                  unimix=world_model_cfg.Unimix)
    if kind == "mlp":
        return MLPPrior(**common)
    if kind == "maskgit":
        return MaskGitPrior(**common, cfg=maskgit_cfg)
    raise ValueError(f"Models.WorldModel.Prior={kind!r}: expected 'mlp' (STORM) or 'maskgit' (GIT-STORM)")
