"""The optimiser step of every model here: fused Adam / AdamW that skips, on the device, an
update whose loss or gradient is not finite.

Deciding "skip" on the host (`if bool(torch.isfinite(loss))`) would stall the CPU until the
GPU has finished the backward pass of every update. Fused Adam instead reads a `found_inf`
flag on the device (the mechanism torch's GradScaler uses) and, when it is set, leaves the
parameters, both moments and the step count untouched. The caller gets the flag back as a
tensor and looks at it only when it logs.
"""
import torch
import torch.nn as nn


def make_adam(params, lr: float, eps: float) -> torch.optim.Adam:
    # fused: one kernel over all parameters, and the only Adam that honours found_inf
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)


def guarded_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_grad_norm: float):
    """Backward `loss`, clip the global gradient norm to `max_grad_norm`, and take the step of
    `optimizer` (a fused Adam or AdamW) only if the loss and the gradient norm are finite. Returns (grad_norm, finite) as
    0-dim device tensors; nothing here waits for the device."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = nn.utils.clip_grad_norm_(params, max_grad_norm)
    finite = torch.isfinite(grad_norm) & torch.isfinite(loss.detach())
    optimizer.found_inf = (~finite).float()
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf
    return grad_norm.detach(), finite
