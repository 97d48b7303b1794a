"""Training-only networks of Keypoint Pyramids and the flat baselines (never exported).

- ``AppearanceEncoder``: Φ(x_ref), the appearance features fed to the combined decoder (Eq. 1).
- ``FeatureEncoder``: Φ_l(x), per-level features from FPN map f_l for feature-augmented keypoints
  (more channels at coarser levels, C_1 > C_2).
- ``ImageDecoder``: conv + ×2 bilinear upsampling stages from a feature-map resolution to the image.
- ``transport_features`` (Eq. 2) and ``sequential_transport`` (Transporter, per keypoint in turn).

Shapes: images B×3×H×W in [0, 1]; heatmaps B×N×h×w in [0, 1]; features B×C×h×w.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kp_perception.models.fpn import conv_block


def _log2(factor: int) -> int:
    steps = int(round(math.log2(factor))) if factor >= 1 else -1
    if steps < 0 or 2**steps != factor:
        raise ValueError(f"resolution factor must be a power of two, got {factor}")
    return steps


class AppearanceEncoder(nn.Module):
    """Φ(x_ref): B×3×H×W → B×C×(H/stride)×(W/stride) (KeyNet/IMM-style strided conv stack)."""

    def __init__(self, out_channels: int, width: int, stride: int) -> None:
        super().__init__()
        layers = [conv_block(3, width, kernel=7)]
        ch = width
        for _ in range(_log2(stride)):
            layers += [conv_block(ch, ch * 2, stride=2), conv_block(ch * 2, ch * 2)]
            ch *= 2
        layers.append(nn.Conv2d(ch, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class FeatureEncoder(nn.Module):
    """Φ_l: FPN map f_l (B×C_in×h×w) → B×C_l×h×w features that keypoints carry in transport."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(conv_block(in_channels, hidden), nn.Conv2d(hidden, out_channels, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


class ImageDecoder(nn.Module):
    """B×C×h×w → B×3×(h·factor)×(w·factor) in [0, 1]; halves channels at each ×2 upsampling."""

    def __init__(self, in_channels: int, width: int, factor: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_block(in_channels, width), conv_block(width, width)]
        ch = width
        for _ in range(_log2(factor)):
            out = max(ch // 2, 16)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), conv_block(ch, out)]
            ch = out
        layers += [nn.Conv2d(ch, 3, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def transport_features(
    feat_x: Tensor, feat_ref: Tensor, mask_x: Tensor, mask_ref: Tensor, stop_gradient_ref: bool = True
) -> Tensor:
    """Eq. 2: Φ' = Φ(x_ref)(1-Ψ_ref)(1-Ψ_x) + Φ(x)(1-(1-Ψ_ref)(1-Ψ_x)).

    Args:
        feat_x, feat_ref: B×C×h×w features of x and x_ref.
        mask_x, mask_ref: B×1×h×w (or B×C×h×w) keypoint masks in [0, 1], e.g. the max over a level's
            Gaussian heatmaps (``collapse_heatmaps``).
        stop_gradient_ref: detach the reference side, as Transporter does for its source image.
    """
    if stop_gradient_ref:
        feat_ref, mask_ref = feat_ref.detach(), mask_ref.detach()
    keep = (1.0 - mask_ref) * (1.0 - mask_x)
    return feat_ref * keep + feat_x * (1.0 - keep)


def sequential_transport(
    feat_x: Tensor, feat_ref: Tensor, heat_x: Tensor, heat_ref: Tensor, stop_gradient_ref: bool = True
) -> Tensor:
    """Transporter's transport, one keypoint at a time: f ← (1-a_k)(1-b_k)·f + b_k·Φ(x).

    Starts from f = Φ(x_ref); a_k = heat_ref[:, k], b_k = heat_x[:, k] (B×K×h×w each).
    """
    if stop_gradient_ref:
        feat_ref, heat_ref = feat_ref.detach(), heat_ref.detach()
    out = feat_ref
    for k in range(heat_x.shape[1]):
        a = heat_ref[:, k : k + 1]
        b = heat_x[:, k : k + 1]
        out = (1.0 - a) * (1.0 - b) * out + b * feat_x
    return out


def resize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of B×C×h×w maps to ``size`` (h, w); no-op when already there."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def stack_levels(maps: list[Tensor]) -> Tensor:
    """Concatenate per-level B×N_l×h×w maps along channels."""
    return torch.cat(maps, dim=1)
