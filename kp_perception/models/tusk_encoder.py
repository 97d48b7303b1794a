"""TUSK robot-side encoder: U-Net score map + features, multi-instance keypoint head, learned prototypes.

Why it looks like this (TUSK, Jin et al. NeurIPS 2022, official code facts in
``docs/tusk.md``):

- A U-Net (base width 32, three max-pool downsamplings, bilinear upsampling
  with skips, GroupNorm in every double conv) gives a 32-channel feature map F
  and a score map H in [0, 1] at full input resolution.
- Keypoints: NMS by max-pool with a window ``w``, a fixed top-K, then a
  soft-argmax of exp(H / 0.2) inside the ``w×w`` window around each maximum
  (sub-pixel, differentiable w.r.t. H). Confidence = H bilinearly sampled at
  the keypoint; descriptor = F bilinearly sampled there, L2-normalised.
- Prototypes (M×C, L2-normalised when used) live here because the robot needs
  them to name what it sees: each keypoint gets its nearest prototype under
  the mean squared difference over channels.

Everything in :meth:`TuskEncoder.infer` is static-shape tensor code (max_pool2d,
avg_pool2d, topk, gather, grid_sample, argmin) so it exports to ONNX opset 17
and TensorRT 10. Non-square inputs are handled: x and y use their own extents,
nothing assumes H == W (the reference clamps did).

Coordinates are (x, y) in [-1, 1] with ``align_corners=True`` (±1 = outer pixel
centres), as everywhere in ``kp_perception.models``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 channels per group where possible (32 ch -> 4 groups)."""
    for g in (8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 4:
            return g
    return 1


class DoubleConv(nn.Module):
    """(conv3x3 -> GroupNorm -> ReLU) × 2, the U-Net building block."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(out_ch), out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(out_ch), out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class UNet(nn.Module):
    """U-Net: widths (w, 2w, 4w, 8w), three max-pool downsamplings, bilinear up + skip concat.

    Input B×3×H×W, output B×w×H×W. Upsampling targets the skip's exact size, so
    any H, W (odd, non-square, e.g. 35×35 Tetrominoes) works.
    """

    def __init__(self, in_ch: int = 3, width: int = 32) -> None:
        super().__init__()
        w = width
        self.inc = DoubleConv(in_ch, w)
        self.down1 = DoubleConv(w, 2 * w)
        self.down2 = DoubleConv(2 * w, 4 * w)
        self.down3 = DoubleConv(4 * w, 8 * w)
        self.up1 = DoubleConv(8 * w + 4 * w, 4 * w)
        self.up2 = DoubleConv(4 * w + 2 * w, 2 * w)
        self.up3 = DoubleConv(2 * w + w, w)

    def _up(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([skip, x], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.inc(x)
        x2 = self.down1(F.max_pool2d(x1, 2))
        x3 = self.down2(F.max_pool2d(x2, 2))
        x4 = self.down3(F.max_pool2d(x3, 2))
        y = self.up1(self._up(x4, x3))
        y = self.up2(self._up(y, x2))
        return self.up3(self._up(y, x1))


def pixel_to_normalized(px: Tensor, size: int) -> Tensor:
    """Pixel index/coordinate along an axis of ``size`` pixels -> [-1, 1] (align_corners)."""
    return px * (2.0 / max(size - 1, 1)) - 1.0


def sample_at(maps: Tensor, keypoints: Tensor) -> Tensor:
    """Bilinearly sample B×C×H×W ``maps`` at B×K×2 keypoints in [-1, 1] -> B×K×C."""
    grid = keypoints.unsqueeze(2)  # B×K×1×2
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.squeeze(3).transpose(1, 2)


def detect_keypoints(
    heatmap: Tensor, num_keypoints: int, window: int, temperature: float = 0.2, selection: Tensor | None = None
) -> Tensor:
    """Multi-instance keypoints from a score map: NMS by max-pool, top-K, windowed soft-argmax.

    Args:
        heatmap: B×1×H×W scores in [0, 1].
        num_keypoints: K, fixed (empty slots get low scores; thresholds belong to nodes/eval).
        window: odd NMS / refinement window in pixels.
        temperature: soft-argmax temperature on H (0.2 in the reference).
        selection: optional B×1×H×W map used instead of ``heatmap`` to choose the maxima
            (training-time exploration noise); refinement always uses ``heatmap``.

    Returns:
        B×K×2 keypoints (x, y) in [-1, 1], differentiable w.r.t. ``heatmap`` through
        the soft-argmax (the top-K choice itself is not).

    The refinement is computed for every pixel at once as a ratio of two box
    filters (sum of w·x over the window / sum of w), then gathered at the
    maxima: no data-dependent indexing of windows, so it traces to ONNX.
    Zero padding adds nothing to either sum, so windows at the border are exact.
    """
    b, _, h, w = heatmap.shape
    pad = window // 2
    select = heatmap if selection is None else selection
    # Max and box filters are separable: two 1-D passes cost 2w per pixel instead of w².
    pooled = F.max_pool2d(F.max_pool2d(select, (1, window), 1, (0, pad)), (window, 1), 1, (pad, 0))
    peaks = select * (select >= pooled).to(select.dtype)
    _, idx = torch.topk(peaks.reshape(b, h * w), num_keypoints, dim=1)  # B×K

    weight = torch.exp((heatmap - 1.0) / temperature)  # shifted: same softmax, no overflow
    xs = torch.arange(w, dtype=heatmap.dtype, device=heatmap.device).reshape(1, 1, 1, w).expand(1, 1, h, w)
    ys = torch.arange(h, dtype=heatmap.dtype, device=heatmap.device).reshape(1, 1, h, 1).expand(1, 1, h, w)
    stacked = torch.cat([weight, weight * xs, weight * ys], dim=1)  # B×3×H×W
    sums = F.avg_pool2d(F.avg_pool2d(stacked, (1, window), 1, (0, pad)), (window, 1), 1, (pad, 0))
    den = sums[:, 0:1].clamp_min(1e-12)
    ref_x = (sums[:, 1:2] / den).reshape(b, h * w)
    ref_y = (sums[:, 2:3] / den).reshape(b, h * w)
    px = torch.gather(ref_x, 1, idx)
    py = torch.gather(ref_y, 1, idx)
    return torch.stack([pixel_to_normalized(px, w), pixel_to_normalized(py, h)], dim=-1)


def prototype_distances(descriptors: Tensor, prototypes: Tensor) -> Tensor:
    """Mean squared difference over channels between B×K×C descriptors and M×C prototypes -> B×K×M."""
    diff = descriptors.unsqueeze(-2) - prototypes.reshape(1, 1, *prototypes.shape)
    return diff.pow(2).mean(dim=-1)


class TuskEncoder(nn.Module):
    """TUSK encoder: image B×3×H×W in [0, 1] -> score map, features, K keypoints, descriptors, prototypes.

    Args:
        num_keypoints: K, top-K after NMS (Tetrominoes 3, MNIST-hard 9).
        num_prototypes: M learned prototypes.
        nms_window: odd NMS / refinement window in pixels at the model's input size.
        width: U-Net base width (32 in the reference); F has ``width`` channels.
        descriptor_dim: C; a 1×1 projection is added when it differs from ``width``.
        temperature: soft-argmax temperature.
        selection_noise: training only: uniform noise of this amplitude added to H when
            choosing the top-K maxima, so keypoints explore the image until H has learned
            where objects are (0 = off; never used in eval/``infer``).
        detach_descriptor_position: sample descriptors bilinearly at the keypoints (the paper)
            but pass no gradient to the keypoints' positions, as the reference code does by
            sampling the integer pixel. The k-means pull on descriptors then shapes the features
            only and cannot move a keypoint onto another object; the decoder and the scores still
            place the keypoints. No effect on inference or export.
    """

    def __init__(
        self,
        num_keypoints: int = 3,
        num_prototypes: int = 16,
        nms_window: int = 9,
        width: int = 32,
        descriptor_dim: int = 32,
        temperature: float = 0.2,
        selection_noise: float = 0.0,
        detach_descriptor_position: bool = False,
    ) -> None:
        super().__init__()
        if nms_window < 1 or nms_window % 2 == 0:
            raise ValueError(f"nms_window must be a positive odd number of pixels, got {nms_window}")
        self.num_keypoints = int(num_keypoints)
        self.num_prototypes = int(num_prototypes)
        self.nms_window = int(nms_window)
        self.descriptor_dim = int(descriptor_dim)
        self.temperature = float(temperature)
        self.selection_noise = float(selection_noise)
        self.detach_descriptor_position = bool(detach_descriptor_position)
        self.unet = UNet(3, width)
        self.feature_head = (
            nn.Identity() if descriptor_dim == width else nn.Conv2d(width, descriptor_dim, 1)
        )
        self.score_head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(width), width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 3, padding=1),
            nn.GroupNorm(1, 1),
            nn.Sigmoid(),
        )
        self.prototypes = nn.Parameter(F.normalize(torch.randn(self.num_prototypes, descriptor_dim), dim=1))

    def maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Dense outputs: score map B×1×H×W in [0, 1] and feature map B×C×H×W (not normalised), float32.

        Under reduced-precision autocast only the convolutions run in it: keypoint
        refinement, descriptors and prototype distances need float32's mantissa
        (bfloat16 has 8 bits; prototype distances are compared at sharpness 20).
        """
        feats = self.unet(images)
        return self.score_head(feats).float(), self.feature_head(feats).float()

    def normalized_prototypes(self) -> Tensor:
        """M×C, unit length: the prototypes as used everywhere."""
        return F.normalize(self.prototypes, dim=1)

    def head(self, heatmap: Tensor, features: Tensor) -> dict[str, Tensor]:
        """Keypoint head on dense maps -> keypoints B×K×2, scores B×K, descriptors B×K×C."""
        selection = None
        if self.training and self.selection_noise > 0:
            selection = heatmap.detach() + self.selection_noise * torch.rand_like(heatmap)
        keypoints = detect_keypoints(heatmap, self.num_keypoints, self.nms_window, self.temperature, selection)
        scores = sample_at(heatmap, keypoints).squeeze(-1).clamp(0.0, 1.0)
        at = keypoints.detach() if self.detach_descriptor_position else keypoints
        descriptors = F.normalize(sample_at(features, at), dim=-1)
        return {"keypoints": keypoints, "scores": scores, "descriptors": descriptors}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Training outputs: the head's keys plus "heatmap" B×1×H×W and "features" B×C×H×W."""
        heatmap, features = self.maps(images)
        out = self.head(heatmap, features)
        out["heatmap"] = heatmap
        out["features"] = features
        return out

    def infer(self, images: Tensor) -> dict[str, Tensor]:
        """Robot-side outputs (contract A): keypoints, scores, descriptors, prototype_ids, distances.

        keypoints B×K×2 in [-1, 1]; scores B×K in [0, 1]; descriptors B×K×C unit length;
        prototype_ids B×K int64 (nearest prototype); distances B×K (mean squared difference).
        """
        heatmap, features = self.maps(images)
        out = self.head(heatmap, features)
        dist = prototype_distances(out["descriptors"], self.normalized_prototypes())
        distances, ids = torch.min(dist, dim=-1)
        out["prototype_ids"] = ids.to(torch.int64)
        out["distances"] = distances
        return out
