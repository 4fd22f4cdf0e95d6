"""The interface of every dynamics prior p(z_{t+1} | h_t): what the world model asks of it.

The world model never branches on which prior it drives: it asks a prior for
  * `kl_terms(...)` during training: the dynamics and representation KL per step, the
    prior's logits and which tokens the KL counted, and
  * `sample(h)` during imagination and acting: a one-hot z_{t+1} ~ p(. | h_t).
`sampling_figures(...)` compares any prior with the posterior through `sample` alone, so its
two figures mean the same for every prior (the training KLs do not: the MaskGIT prior's
counts only the tokens it masked).

The priors themselves: STORM's MLP prior and `build_prior` in sub_models/priors.py, GIT-STORM's
MaskGIT prior in sub_models/maskgit/.
"""
import abc
from typing import NamedTuple

import torch
import torch.nn as nn

from sub_models.functions_losses import categorical_kl


class PriorKL(NamedTuple):
    dynamics_kl: torch.Tensor        # (B, T)  sum over counted tokens of KL[sg(q) || p]
    representation_kl: torch.Tensor  # (B, T)  sum over counted tokens of KL[q || sg(p)]
    prior_logits: torch.Tensor       # (B, T, K, C) log-probabilities of the prior
    token_mask: torch.Tensor         # (B, T, K) 1.0 where the token entered the KL


def kl_pair(posterior_logits: torch.Tensor, prior_logits: torch.Tensor, token_mask: torch.Tensor):
    """Dynamics and representation KL per step, summed over the tokens selected by token_mask.

    Both compare the same two distributions; they differ only in where gradients stop:
    the dynamics loss trains the prior toward a fixed posterior, the representation
    loss pulls the posterior (encoder) toward a fixed prior.
    """
    dynamics = categorical_kl(posterior_logits.detach(), prior_logits)
    representation = categorical_kl(posterior_logits, prior_logits.detach())
    return (dynamics * token_mask).sum(-1), (representation * token_mask).sum(-1)


class PriorHead(nn.Module, metaclass=abc.ABCMeta):
    """Interface of every prior head. Shapes: K categorical variables with C classes each."""

    @abc.abstractmethod
    def kl_terms(self, h: torch.Tensor, z_current: torch.Tensor, z_next: torch.Tensor,
                 posterior_logits_next: torch.Tensor) -> PriorKL:
        """h (B,T,D) hidden states after step t; z_current, z_next (B,T,K,C) one-hot posterior
        samples of z_t and z_{t+1}; posterior_logits_next (B,T,K,C) log-probs of q(z_{t+1}|o_{t+1})."""

    @abc.abstractmethod
    def sample(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (N, D) -> (one-hot z_{t+1} (N, K, C), the log-probs it was drawn from (N, K, C))."""

    @torch.no_grad()
    def sampling_figures(self, h: torch.Tensor, posterior_logits_next: torch.Tensor,
                         z_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """How well what imagination draws z_{t+1} from matches the posterior, over all K tokens.

        h (B, T, D) hidden states after step t; posterior_logits_next (B, T, K, C) log-probs of
        q(z_{t+1} | o_{t+1}); z_next (B, T, K, C) its one-hot sample. p is the distribution
        `sample(h)` drew each token from (for MaskGIT: the last decoding pass that set it).
        Returns 0-dim tensors (sampling KL, sampling perplexity):
          KL[q || p] summed over the K tokens, mean over steps, and
          exp(mean over steps and tokens of -log p(z_{t+1})), at most C / unimix.
        """
        _, log_probs = self.sample(h.flatten(0, -2))
        log_probs = log_probs.unflatten(0, h.shape[:-1]).float()  # (B, T, K, C)
        kl = categorical_kl(posterior_logits_next.float(), log_probs).sum(-1).mean()
        token_nll = -(log_probs * z_next.float()).sum(-1)  # (B, T, K)
        return kl, token_nll.mean().exp()
