"""The three Keypoint Pyramids losses (Qian et al. 2022, Eq. 1, 3, 4) as pure functions.

Reductions follow the equations' squared L2 norms: each term is summed over
pixels and channels (or over keypoints and coordinates) per image, then
averaged over the batch. Keypoints are in [-1, 1] (B×N×2). With these units
the paper's λ_s = 1 keeps children near, not on, their parent; see
docs/pyramids.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _per_image_sse(pred: Tensor, target: Tensor) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return (pred - target).pow(2).flatten(1).sum(dim=1)


def reconstruction_loss(reconstruction: Tensor, image: Tensor) -> Tensor:
    """Eq. 1: ||x̂ − x||², B×3×H×W each → scalar (sum per image, mean over the batch)."""
    return _per_image_sse(reconstruction, image).mean()


def transport_loss(reconstructions: Sequence[Tensor], image: Tensor, weights: Sequence[float]) -> Tensor:
    """Eq. 3: Σ_l λ_l ||x̂_l(Φ'_l) − x||², one B×3×H×W reconstruction per level → scalar."""
    if len(reconstructions) != len(weights):
        raise ValueError(f"{len(reconstructions)} level reconstructions but {len(weights)} level weights")
    total = image.new_zeros(())
    for recon, weight in zip(reconstructions, weights, strict=True):
        total = total + float(weight) * reconstruction_loss(recon, image)
    return total


def spring_loss(keypoints: Sequence[Tensor], weight: float = 1.0) -> Tensor:
    """Eq. 4: λ_s Σ_l Σ_n Σ_{m∈δ(n)} ||k_l^n − k_{l+1}^m||², B×N_l×2 per level (coarse to fine) → scalar.

    Children of parent n are {M·n, …, M·n + M − 1} with M = N_{l+1} / N_l.
    """
    if not keypoints:
        raise ValueError("spring_loss needs at least one level")
    total = keypoints[0].new_zeros(())
    for parents, children in zip(keypoints[:-1], keypoints[1:], strict=True):
        n_parent, n_child = parents.shape[1], children.shape[1]
        if n_child % n_parent:
            raise ValueError(f"{n_child} children cannot be split evenly among {n_parent} parents")
        m = n_child // n_parent
        anchors = torch.repeat_interleave(parents, m, dim=1)  # B×N_{l+1}×2, parent of each child
        total = total + (children - anchors).pow(2).sum(dim=(1, 2)).mean()
    return float(weight) * total
