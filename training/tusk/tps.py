"""Random thin-plate-spline warps for TUSK's equivariance pairs.

The reference draws, per image, a random similarity (scale, rotation, offset)
plus a TPS jitter of 8 inner control points, with 8 border points that follow
the similarity only (so the frame edge does not fold). Settings (reference):

- multi-object data: scale 0.95, scale_var 0.02, tps_scale 0.02, offset 0.05, rotation 0.1
- MNIST:             scale 0.95, scale_var 0.05, tps_scale 0.1,  offset 0.01, rotation 0.25

All control points are in the ``grid_sample`` frame with ``align_corners=True``
([-1, 1], ±1 = outer pixel centres), x and y independent, so non-square
images warp correctly. The warp is applied with kornia's ``warp_image_tps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kornia.geometry.transform import get_tps_transform, warp_image_tps
from torch import Tensor

# 8 inner control points (a 3×3 grid without its centre, at ±0.5) and 8 border points.
_INNER = [(-0.5, -0.5), (0.0, -0.5), (0.5, -0.5), (-0.5, 0.0), (0.5, 0.0), (-0.5, 0.5), (0.0, 0.5), (0.5, 0.5)]
_BORDER = [(-1.0, -1.0), (0.0, -1.0), (1.0, -1.0), (-1.0, 0.0), (1.0, 0.0), (-1.0, 1.0), (0.0, 1.0), (1.0, 1.0)]

TPS_PRESETS: dict[str, dict[str, float]] = {
    "multi_object": {"scale": 0.95, "scale_var": 0.02, "tps_scale": 0.02, "offset": 0.05, "rotation": 0.1},
    "mnist": {"scale": 0.95, "scale_var": 0.05, "tps_scale": 0.1, "offset": 0.01, "rotation": 0.25},
}


@dataclass(frozen=True)
class TpsWarp:
    """One batch of TPS warps, ready for :func:`apply_tps` (output -> input sampling)."""

    centers: Tensor  # B×16×2
    kernel_weights: Tensor  # B×16×2
    affine_weights: Tensor  # B×3×2


def random_tps(
    batch: int,
    scale: float = 0.95,
    scale_var: float = 0.02,
    tps_scale: float = 0.02,
    offset: float = 0.05,
    rotation: float = 0.1,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> TpsWarp:
    """Draw ``batch`` random warps: similarity ~ N(scale, scale_var), N(0, rotation) rad, N(0, offset), TPS jitter N(0, tps_scale)."""

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator).to(device)

    src = torch.tensor(_INNER + _BORDER, dtype=torch.float32, device=device).expand(batch, 16, 2)
    s = (scale + scale_var * randn(batch, 1, 1))
    a = rotation * randn(batch, 1, 1)
    cos, sin = torch.cos(a), torch.sin(a)
    x, y = src[..., :1], src[..., 1:]
    rotated = torch.cat([cos * x - sin * y, sin * x + cos * y], dim=-1) * s
    dst = rotated + offset * randn(batch, 1, 2)
    jitter = tps_scale * randn(batch, 16, 2)
    jitter[:, 8:] = 0.0
    dst = dst + jitter
    # warp_image_tps samples output -> input: the TPS maps output points (src) to input points (dst).
    kernel_weights, affine_weights = get_tps_transform(src, dst)
    # kornia: the second argument of get_tps_transform is the kernel centres of the warp.
    return TpsWarp(dst.contiguous(), kernel_weights, affine_weights)


def apply_tps(maps: Tensor, warp: TpsWarp, padding_mode: str = "reflection") -> Tensor:
    """Warp B×C×H×W ``maps`` (images, score maps or features) with ``warp``; reflection padding by default."""
    return warp_image_tps(
        maps, warp.centers, warp.kernel_weights, warp.affine_weights, align_corners=True, padding_mode=padding_mode
    )


def identity_tps(batch: int, device: torch.device | str = "cpu") -> TpsWarp:
    """The identity warp (for tests and for disabling augmentation)."""
    return random_tps(batch, 1.0, 0.0, 0.0, 0.0, 0.0, device=device)


