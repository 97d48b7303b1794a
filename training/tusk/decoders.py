"""TUSK decoders (training side only): how keypoints + descriptors explain the image.

Two forms, as in the reference:

- :class:`SplatDecoder` (landmarks, detection, e.g. MNIST-hard): every descriptor
  is splatted as a small normalised Gaussian at its keypoint, weighted by its
  confidence, the splats are summed into one B×C×H×W map and a U-Net renders
  the image. Low-confidence (empty) slots contribute nothing, so a varying
  number of objects is handled by the scores.
- :class:`RgbaDecoder` (object discovery, Tetrominoes/CLEVR/tabletop): each
  keypoint is decoded on its own to RGBA, and the layers are composited with a
  softmax over keypoints (plus a learned background layer) of alpha + log
  score. The per-keypoint alpha maps are the masks (argmax) used for ARI.

Choice (docs/tusk.md): the per-keypoint decoder is a spatial-broadcast MLP of
the descriptor and the pixel's offset from the keypoint (Fourier features),
i.e. translation-equivariant by construction. It is the same function a
delta splat followed by a large convolution computes, but cheap at any image
size and quick to learn object shapes on a CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kp_perception.models.tusk_encoder import UNet


def pixel_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """H×W×2 grid of pixel-centre coordinates (x, y) in [-1, 1] (align_corners)."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def gaussian_splats(keypoints: Tensor, height: int, width: int, sigma_px: float) -> Tensor:
    """Normalised Gaussians (each sums to 1) at B×K×2 keypoints in [-1, 1] -> B×K×H×W.

    ``sigma_px`` is in pixels along each axis, so non-square images get round blobs.
    """
    grid = pixel_grid(height, width, keypoints.device, keypoints.dtype)  # H×W×2
    half = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], device=keypoints.device, dtype=keypoints.dtype)
    d = (grid[None, None] - keypoints[:, :, None, None, :]) * half  # pixels
    g = torch.exp(-(d.pow(2).sum(-1)) / (2.0 * sigma_px**2))
    return g / g.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


class SplatDecoder(nn.Module):
    """Confidence-weighted sum of descriptor splats -> U-Net -> RGB in [0, 1].

    keypoints B×K×2, scores B×K, descriptors B×K×C -> B×3×H×W.
    """

    def __init__(self, descriptor_dim: int = 32, width: int = 32, sigma_px: float = 1.0) -> None:
        super().__init__()
        self.sigma_px = float(sigma_px)
        self.unet = UNet(descriptor_dim, width)
        self.out = nn.Conv2d(width, 3, 1)

    def _mlp(self, descriptors: Tensor, pos: Tensor) -> Tensor:
        """``self.mlp`` on cat(descriptor, pos) per pixel, without materialising the concatenation.

        The first layer is split: its descriptor half is computed once per keypoint and
        broadcast over the pixels, which saves the B×K×H×W×C expand and its matmul.
        ReLUs are out of place: in place on the views Linear returns for N-d inputs,
        autograd records CopySlices, which cost ~15 % of a 112 px training step.
        """
        first, *rest = [m for m in self.mlp if isinstance(m, nn.Linear)]
        c = descriptors.shape[-1]
        x = F.linear(pos, first.weight[:, c:], first.bias)
        x = F.relu(x + F.linear(descriptors, first.weight[:, :c])[:, :, None, None, :])
        for i, layer in enumerate(rest):
            x = layer(x)
            if i < len(rest) - 1:
                x = F.relu(x)
        return x

    def forward(self, keypoints: Tensor, scores: Tensor, descriptors: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        h, w = size
        splats = gaussian_splats(keypoints, h, w, self.sigma_px)  # B×K×H×W
        # Peak 1 instead of sum 1 (the reference's near-delta splat has peak ~1): a splat
        # carries its descriptor at the keypoint's confidence whatever sigma is.
        splats = splats / splats.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12) * scores[:, :, None, None]
        feature_map = torch.einsum("bkhw,bkc->bchw", splats, descriptors)
        return {"reconstruction": torch.sigmoid(self.out(self.unet(feature_map)))}


class RgbaDecoder(nn.Module):
    """Per-keypoint RGBA from (descriptor, offset to the pixel), softmax-alpha composited.

    keypoints B×K×2 in [-1, 1], scores B×K, descriptors B×K×C ->
    {"reconstruction": B×3×H×W, "alpha": B×K×H×W, or B×(K+1)×H×W with the background
    layer first when ``background=True``, "rgb": B×K×3×H×W}.
    """

    def __init__(
        self,
        descriptor_dim: int = 32,
        hidden: int = 64,
        num_frequencies: int = 4,
        extent: float = 0.6,
        envelope: float | None = None,
        background: bool = False,
    ) -> None:
        super().__init__()
        self.num_frequencies = int(num_frequencies)
        self.extent = float(extent)
        # Optional Gaussian prior on each layer's alpha (std in [-1, 1] units): a keypoint
        # mostly paints its neighbourhood, which pulls keypoints onto their object's centre.
        self.envelope = float(envelope) if envelope else None
        pos_dim = 2 + 4 * self.num_frequencies
        self.mlp = nn.Sequential(
            nn.Linear(descriptor_dim + pos_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 4),
        )
        # Optional learned constant background layer. Off by default: with it, the easy
        # minimum "background everywhere" starves the keypoint layers of gradient.
        self.background = bool(background)
        if self.background:
            self.background_rgb = nn.Parameter(torch.zeros(3))
            self.background_logit = nn.Parameter(torch.zeros(()))

    def _encode_offsets(self, offsets: Tensor) -> Tensor:
        """Offsets (…×2, in [-1, 1] units) -> raw + Fourier features, scaled by ``extent``."""
        x = offsets / self.extent
        feats = [x]
        for i in range(self.num_frequencies):
            f = (2.0**i) * math.pi * x
            feats += [torch.sin(f), torch.cos(f)]
        return torch.cat(feats, dim=-1)

    def _mlp(self, descriptors: Tensor, pos: Tensor) -> Tensor:
        """``self.mlp`` on cat(descriptor, pos) per pixel, without materialising the concatenation.

        The first layer is split: its descriptor half is computed once per keypoint and
        broadcast over the pixels, which saves the B×K×H×W×C expand and its matmul.
        ReLUs are out of place: in place on the views Linear returns for N-d inputs,
        autograd records CopySlices, which cost ~15 % of a 112 px training step.
        """
        first, *rest = [m for m in self.mlp if isinstance(m, nn.Linear)]
        c = descriptors.shape[-1]
        x = F.linear(pos, first.weight[:, c:], first.bias)
        x = F.relu(x + F.linear(descriptors, first.weight[:, :c])[:, :, None, None, :])
        for i, layer in enumerate(rest):
            x = layer(x)
            if i < len(rest) - 1:
                x = F.relu(x)
        return x

    def forward(self, keypoints: Tensor, scores: Tensor, descriptors: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        h, w = size
        b, k, c = descriptors.shape
        grid = pixel_grid(h, w, keypoints.device, keypoints.dtype)
        offsets = grid[None, None] - keypoints[:, :, None, None, :]  # B×K×H×W×2
        out = self._mlp(descriptors, self._encode_offsets(offsets))  # B×K×H×W×4
        rgb = torch.sigmoid(out[..., :3]).permute(0, 1, 4, 2, 3)  # B×K×3×H×W
        logits = out[..., 3] + torch.log(scores.clamp_min(1e-4))[:, :, None, None]
        if self.envelope is not None:
            logits = logits - offsets.pow(2).sum(-1) / (2.0 * self.envelope**2)
        if self.background:
            bg = self.background_logit.expand(b, 1, h, w)
            alpha = torch.softmax(torch.cat([bg, logits], dim=1), dim=1)  # B×(K+1)×H×W
            bg_rgb = torch.sigmoid(self.background_rgb).view(1, 3, 1, 1).expand(b, 3, h, w)
            layers = torch.cat([bg_rgb.unsqueeze(1), rgb], dim=1)  # B×(K+1)×3×H×W
        else:
            alpha = torch.softmax(logits, dim=1)  # B×K×H×W
            layers = rgb
        recon = (alpha.unsqueeze(2) * layers).sum(dim=1)
        return {"reconstruction": recon, "alpha": alpha, "rgb": rgb}


def build_decoder(kind: str, descriptor_dim: int, **kwargs) -> nn.Module:
    """``"rgba"`` (object discovery) or ``"splat"`` (landmarks/detection)."""
    if kind == "rgba":
        return RgbaDecoder(descriptor_dim, **kwargs)
    if kind == "splat":
        return SplatDecoder(descriptor_dim, **kwargs)
    raise ValueError(f"unknown TUSK decoder {kind!r}, expected 'rgba' or 'splat'")

