"""Fréchet Video Distance (Unterthiner et al. 2019).

    FVD = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))

over the 400-d Kinetics logits of I3D (tools/video_prediction/i3d.py) of the real and the
generated clips, each set fitted by a Gaussian (mean, covariance with n - 1). As in the
reference code, frames are resized to 224x224 (bilinear) and scaled to [-1, 1] before I3D.
"""
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from utils import full_fp32

I3D_SIZE = 224


def preprocess(videos: torch.Tensor, size: int = I3D_SIZE) -> torch.Tensor:
    """uint8 videos (B, T, H, W, 3) -> I3D input (B, 3, T, size, size) float32 in [-1, 1].
    Bilinear resize with half-pixel centres (torch's align_corners=False, tf.image.resize's
    default); the FVD reference used TF1's resize_bilinear, which differs by a fraction of a pixel."""
    b, t, h, w, _ = videos.shape
    frames = videos.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float()        # (B*T, 3, H, W) in 0..255
    if (h, w) != (size, size):
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    frames = frames * (2.0 / 255.0) - 1.0
    return frames.reshape(b, t, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()


@torch.no_grad()
def i3d_features(model: torch.nn.Module, videos: torch.Tensor, batch_size: int = 8, size: int = I3D_SIZE,
                 device=None, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """uint8 videos (N, T, H, W, 3), on any device -> I3D logits (N, 400) float64.
    Clips are moved to the model's device `batch_size` at a time; on_batch(n) after each.
    Computed in full fp32 (no TF32 on a GPU): the port matches the reference to 2e-5 only so."""
    device = device or next(model.parameters()).device
    features = []
    with full_fp32():
        for start in range(0, len(videos), batch_size):
            batch = preprocess(videos[start:start + batch_size].to(device), size)
            features.append(model(batch).double().cpu())
            if on_batch is not None:
                on_batch(len(batch))
    return torch.cat(features).numpy()


def gaussian_fit(features) -> tuple[torch.Tensor, torch.Tensor]:
    """features (N, D) -> mean (D,), covariance (D, D) with the n - 1 normalisation, float64.
    (torch linear algebra, which follows torch.set_num_threads: NumPy's BLAS threads crawl
    on a busy machine.)"""
    features = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got shape {tuple(features.shape)}")
    return features.mean(0), torch.cov(features.T)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2) (arrays or tensors).

    tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)), a symmetric PSD
    matrix: stable for the rank-deficient covariances of 256 clips in 400 dimensions (where
    scipy.linalg.sqrtm of the non-symmetric S1 S2 can return complex noise)."""
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(np.asarray(x), dtype=torch.float64) for x in (mu1, sigma1, mu2, sigma2))
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = ((mu1 - mu2) ** 2).sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)   # >= 0 mathematically; rounding can give -1e-12


def fvd_from_features(real, generated) -> float:
    """FVD of two sets of I3D features (N, 400), (M, 400)."""
    return frechet_distance(*gaussian_fit(real), *gaussian_fit(generated))
