"""The Keypoint Pyramids encoder (Qian et al., ECCV 2022, Sec. 3.1) and its flat KeyNet/Transporter mode.

An FPN gives maps f_1 (coarsest) … f_L (finest). Level 1's keypoint head reads
f_1; level l > 1 reads [Ψ_{l-1}, f_l], the Gaussian heatmaps of the previous
level's keypoints rendered at f_l's resolution (the "Unconditioned" ablation
drops Ψ_{l-1}). Each head is KeyNet-style: convs → N_l logit maps → spatial
softmax → expected coordinates.

Hierarchy: M_l = N_{l+1} / N_l children per parent; parent n of level l owns
children {M_l·n, …, M_l·n + M_l - 1} of level l+1. ``parents`` holds global
indices into the concatenated (coarse to fine) keypoint list, -1 for level-1 roots.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kp_perception.errors import ConfigError
from kp_perception.models.fpn import FPN, conv_block
from kp_perception.models.keypoint_ops import (
    DEFAULT_SIGMA,
    expected_coordinates,
    gaussian_heatmaps,
    keypoint_distribution,
    keypoint_scores,
)


def hierarchy_parents(level_sizes: Sequence[int]) -> tuple[int, ...]:
    """Global parent index of every keypoint (length ΣN_l), -1 for the first level."""
    parents = [-1] * level_sizes[0]
    offset = 0
    for n_parent, n_child in zip(level_sizes[:-1], level_sizes[1:], strict=True):
        m = n_child // n_parent
        parents += [offset + j // m for j in range(n_child)]
        offset += n_parent
    return tuple(parents)


class KeypointHead(nn.Module):
    """KeyNet-style head: two 3×3 conv blocks and a 1×1 conv to N logit maps."""

    def __init__(self, in_ch: int, hidden: int, num_keypoints: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv_block(in_ch, hidden), conv_block(hidden, hidden), nn.Conv2d(hidden, num_keypoints, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PyramidsEncoder(nn.Module):
    """Images B×3×H×W in [0, 1] → a keypoint hierarchy (or one flat level).

    Args:
        keypoints_per_level: N_l, coarse to fine, each a multiple of the previous (paper: (10, 20)).
            In flat mode a single count, e.g. [30] (an int is accepted).
        fpn_levels: FPN maps to build; default len(keypoints_per_level), and 2 in flat mode so the
            baselines see the same FPN as the paper's L = 2 model and read its finest map.
        fpn_channels, width: FPN output channels and the stem width (stages double it).
        head_channels: hidden channels of each keypoint head.
        finest_stride: image pixels per finest-map pixel (paper: 4, i.e. 32×32 at 128×128).
        sigma: Gaussian width of the conditioning heatmaps, in [-1, 1] units.
        conditioned: False = the paper's "Unconditioned" ablation.
        detach_conditioning: render the conditioning heatmaps from detached parent keypoints, so
            the finer level's loss does not move the coarser level (docs/results.md, Pyramids).
        flat: one level on the finest FPN map (KeyNet / Transporter baselines).
    """

    def __init__(
        self,
        keypoints_per_level: Sequence[int] | int = (10, 20),
        fpn_levels: int | None = None,
        fpn_channels: int = 64,
        width: int = 32,
        head_channels: int = 64,
        finest_stride: int = 4,
        sigma: float = DEFAULT_SIGMA,
        conditioned: bool = True,
        detach_conditioning: bool = False,
        flat: bool = False,
    ) -> None:
        super().__init__()
        sizes = [int(keypoints_per_level)] if isinstance(keypoints_per_level, int) else list(keypoints_per_level)
        if not sizes or any(n < 1 for n in sizes):
            raise ConfigError(f"keypoints_per_level must be positive counts, got {keypoints_per_level}")
        if flat and len(sizes) != 1:
            raise ConfigError(f"flat mode takes one keypoint count, got {sizes}")
        for n_parent, n_child in zip(sizes[:-1], sizes[1:], strict=True):
            if n_child % n_parent:
                raise ConfigError(f"each level must have a multiple of the previous level's keypoints, got {sizes}")
        if fpn_levels is None:
            fpn_levels = 2 if flat else len(sizes)
        if not flat and fpn_levels != len(sizes):
            raise ConfigError(f"fpn_levels ({fpn_levels}) must equal the number of keypoint levels ({len(sizes)})")
        self.level_sizes: tuple[int, ...] = tuple(sizes)
        self.parents: tuple[int, ...] = hierarchy_parents(sizes)
        self.children_per_parent: tuple[int, ...] = tuple(c // p for p, c in zip(sizes[:-1], sizes[1:], strict=True))
        self.sigma = float(sigma)
        self.conditioned = bool(conditioned)
        self.detach_conditioning = bool(detach_conditioning)
        self.flat = bool(flat)
        self.fpn = FPN(levels=fpn_levels, channels=fpn_channels, width=width, finest_stride=finest_stride)
        heads = []
        for level, n in enumerate(sizes):
            extra = sizes[level - 1] if (level > 0 and conditioned) else 0
            heads.append(KeypointHead(fpn_channels + extra, head_channels, n))
        self.heads = nn.ModuleList(heads)

    @property
    def num_keypoints(self) -> int:
        return sum(self.level_sizes)

    def level_features(self, images: Tensor) -> list[Tensor]:
        """FPN maps used by the keypoint levels, coarse to fine (flat mode: the finest only)."""
        feats = self.fpn(images)
        return feats[-1:] if self.flat else feats

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        """Training outputs, one list entry per level (coarse to fine).

        Returns:
            keypoints: B×N_l×2 in [-1, 1]; probs: B×N_l×h_l×w_l spatial softmax;
            features: FPN map f_l, B×C×h_l×w_l (the transport feature encoders Φ_l read it).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected B×3×H×W, got shape {tuple(images.shape)}")
        feats = self.level_features(images)
        keypoints, probs = [], []
        for level, (head, feat) in enumerate(zip(self.heads, feats, strict=True)):
            x = feat
            if level > 0 and self.conditioned:
                parents = keypoints[-1].detach() if self.detach_conditioning else keypoints[-1]
                cond = gaussian_heatmaps(parents, feat.shape[-2], feat.shape[-1], self.sigma)
                x = torch.cat([cond, feat], dim=1)
            p = keypoint_distribution(head(x))
            probs.append(p)
            keypoints.append(expected_coordinates(p))
        return {"keypoints": keypoints, "probs": probs, "features": feats}

    def infer(self, images: Tensor) -> dict[str, Tensor]:
        """Robot-side outputs: keypoints B×N×2 in [-1, 1] (all levels, coarse to fine), scores B×N in [0, 1]."""
        out = self.forward(images)
        scores = [keypoint_scores(p, k, self.sigma) for p, k in zip(out["probs"], out["keypoints"], strict=True)]
        return {"keypoints": torch.cat(out["keypoints"], dim=1), "scores": torch.cat(scores, dim=1)}
