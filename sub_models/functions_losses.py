"""Small numerical pieces shared by the world model and the agent.

symlog / symexp (DreamerV3), the symlog two-hot encoding used by the reward head and the
critic, 1% unimix for categorical logits, and the categorical KL divergence.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(torch.abs(x))


def unimix_logits(logits: torch.Tensor, mix: float) -> torch.Tensor:
    """Mix `mix` of a uniform distribution into softmax(logits) and return log-probs.

    Every class keeps at least mix / num_classes probability, so KL terms stay finite
    and the policy/prior never collapses to a deterministic one-hot.
    """
    if mix <= 0.0:
        return torch.log_softmax(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    probs = (1.0 - mix) * probs + mix / logits.shape[-1]
    return torch.log(probs)


def sample_one_hot_straight_through(logits: torch.Tensor) -> torch.Tensor:
    """One-hot sample of Categorical(logits) whose gradient is that of the probabilities.

    Gumbel-max (argmax of logits + Gumbel noise) draws from the same distribution as
    torch.multinomial, batched and without multinomial's host-side input checks."""
    probs = torch.softmax(logits, dim=-1)
    gumbel = -torch.empty_like(logits).exponential_().log()
    sample = F.one_hot((logits + gumbel).argmax(-1), probs.shape[-1]).to(probs.dtype)
    return sample + (probs - probs.detach())   # exactly one-hot in value, gradient of probs


def categorical_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL[p || q] per categorical variable for log-prob (or logit) inputs; shape = input[:-1]."""
    log_p = torch.log_softmax(logits_p, dim=-1)
    log_q = torch.log_softmax(logits_q, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


class SymlogTwoHot(nn.Module):
    """Two-hot encoding of symlog(x) over `num_bins` evenly spaced bins in [low, high].

    A value between bins b_k <= y < b_{k+1} puts weight (b_{k+1} - y) / (b_{k+1} - b_k) on
    bin k and the rest on bin k+1; values outside the range go wholly to the edge bin.
    decode() is the expectation over bins followed by symexp, so decode(encode(x)) == x
    for any x inside the range.
    """

    def __init__(self, num_bins: int, low: float, high: float):
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"SymlogTwoHot needs num_bins >= 2, got {num_bins}")
        self.register_buffer("bins", torch.linspace(low, high, num_bins), persistent=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        y = symlog(x).clamp(self.bins[0], self.bins[-1])
        upper = torch.bucketize(y, self.bins, right=True).clamp(1, len(self.bins) - 1)
        lower = upper - 1
        weight_upper = (y - self.bins[lower]) / (self.bins[upper] - self.bins[lower])
        target = torch.zeros(*y.shape, len(self.bins), dtype=y.dtype, device=y.device)
        target.scatter_(-1, lower.unsqueeze(-1), (1.0 - weight_upper).unsqueeze(-1))
        target.scatter_add_(-1, upper.unsqueeze(-1), weight_upper.unsqueeze(-1))
        return target

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=-1)
        return symexp((probs * self.bins).sum(-1))

    def loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the two-hot target of x under logits, per element (no reduction)."""
        target = self.encode(x.float())
        return -(target * torch.log_softmax(logits.float(), dim=-1)).sum(-1)
