"""A small feature pyramid network (Lin et al. 2017) producing L maps, coarse to fine.

Level l (1 = coarsest) has stride ``finest_stride · 2^(L-l)``: with the paper's
128×128 input, L = 2 and finest_stride = 4 that is 16×16 and 32×32.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kp_perception.errors import ConfigError


def conv_block(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """conv → BatchNorm → ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class FPN(nn.Module):
    """Bottom-up conv stages, top-down pathway with lateral 1×1 convs and 3×3 smoothing.

    Input B×3×H×W in [0, 1]; output list of L maps B×C×(H/s_l)×(W/s_l), coarse to fine.
    H and W must be divisible by the coarsest stride.
    """

    def __init__(self, levels: int = 2, channels: int = 64, width: int = 32, finest_stride: int = 4) -> None:
        super().__init__()
        if levels < 1:
            raise ConfigError(f"FPN needs at least one level, got {levels}")
        if finest_stride < 1 or finest_stride & (finest_stride - 1):
            raise ConfigError(f"finest_stride must be a power of two, got {finest_stride}")
        self.levels = levels
        self.finest_stride = finest_stride
        # Stem at full resolution (KeyNet: 7×7 first kernel), then halving stages.
        self.stem = conv_block(3, width, kernel=7)
        stages = []
        in_ch = width
        self.stage_channels = []
        n_down = (finest_stride.bit_length() - 1) + levels - 1
        for i in range(n_down):
            out_ch = min(width * 2 ** (i + 1), 8 * width)
            stages.append(nn.Sequential(conv_block(in_ch, out_ch, stride=2), conv_block(out_ch, out_ch)))
            self.stage_channels.append(out_ch)
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        # Outputs come from the last `levels` stages (finest output = stage at finest_stride).
        self.out_stages = list(range(n_down - levels, n_down)) if n_down else [-1]
        lateral_in = [self.stage_channels[i] if i >= 0 else width for i in self.out_stages]
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in lateral_in)
        self.smooth = nn.ModuleList(conv_block(channels, channels) for _ in lateral_in)
        self.out_channels = channels

    @property
    def coarsest_stride(self) -> int:
        return self.finest_stride * 2 ** (self.levels - 1)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        bottom_up = [feats[i] if i >= 0 else x for i in self.out_stages]  # fine ... coarse order reversed
        bottom_up = bottom_up[::-1]  # coarse to fine
        laterals = self.lateral[::-1]
        smooths = self.smooth[::-1]
        outs = []
        top = None
        for feat, lateral, smooth in zip(bottom_up, laterals, smooths, strict=True):
            lat = lateral(feat)
            if top is not None:
                lat = lat + F.interpolate(top, size=lat.shape[-2:], mode="nearest")
            top = lat
            outs.append(smooth(lat))
        return outs
