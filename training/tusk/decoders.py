"""TUSK decoders (training side only): how keypoints + descriptors explain the image.

Two forms, as in the reference:

- :class:`SplatDecoder` (landmarks, detection, e.g. MNIST-hard): every descriptor
  is splatted as a small normalised Gaussian at its keypoint, weighted by its
  confidence, the splats are summed into one B×C×H×W map and a U-Net renders
  the image. Low-confidence (empty) slots contribute nothing, so a varying
  number of objects is handled by the scores.
- :class:`RgbaDecoder` (object discovery, Tetrominoes/CLEVR/tabletop): each
  keypoint is decoded on its own to an RGBA sprite pasted at the keypoint, and
  the layers are composited with a softmax over keypoints of alpha + log score.
  The per-keypoint alpha maps are the masks (argmax) used for ARI.

Choice (docs/tusk.md): the reference decodes each keypoint's splatted feature
map with a U-Net. A sprite MLP computes the same kind of function (what a
large convolution paints around a delta), is translation-equivariant by
construction, and is much cheaper and quicker to learn on a CPU.
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

    def forward(self, keypoints: Tensor, scores: Tensor, descriptors: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        h, w = size
        splats = gaussian_splats(keypoints, h, w, self.sigma_px)  # B×K×H×W
        # Peak 1 instead of sum 1 (the reference's near-delta splat has peak ~1): a splat
        # carries its descriptor at the keypoint's confidence whatever sigma is.
        splats = splats / splats.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12) * scores[:, :, None, None]
        feature_map = torch.einsum("bkhw,bkc->bchw", splats, descriptors)
        return {"reconstruction": torch.sigmoid(self.out(self.unet(feature_map)))}


class RgbaDecoder(nn.Module):
    """Per-keypoint RGBA sprites placed at the keypoints, softmax-alpha composited.

    keypoints B×K×2 in [-1, 1], scores B×K, descriptors B×K×C ->
    {"reconstruction": B×3×H×W, "alpha": B×K×H×W (sums to 1 over the layers; B×(K+1)×H×W
    with the background layer first when ``background``), "rgb": B×K×3×H×W}.

    ``background``: a layer under the sprites with alpha logit 0, one learned colour,
    plus, with ``background_px``, a learned background_px² image (for a fixed camera
    over a textured table).

    Each descriptor is decoded by an MLP into an RGBA sprite of ``sprite_px`` ×
    ``sprite_px`` image pixels, which is pasted centred on its keypoint by bilinear
    sampling (sub-pixel, so the keypoint gets a gradient). Outside its sprite a layer
    is black with alpha logit ``outside_logit``: a keypoint can only explain pixels
    near it, which is what pulls keypoints onto their objects. Alpha logits get
    ``+ log(score)`` so low-confidence slots yield to confident ones.

    Why sprites (docs/tusk.md): every output pixel of the sprite has its own weights,
    so object shapes are learned as directly as colours; measured on Tetrominoes
    with keypoints fixed at the pieces, this reached a given reconstruction error in
    about half the steps of a spatial-broadcast MLP of Fourier offset features, at
    two thirds of its cost per step. Descriptors are unit vectors (entries ~C^-1/2);
    they are scaled by sqrt(C) before the MLP so their signal is not small
    against the bias terms.
    """

    def __init__(
        self,
        descriptor_dim: int = 32,
        hidden: int = 128,
        sprite_px: int = 21,
        outside_logit: float = -6.0,
        background: bool = False,
        envelope_px: float | None = None,
        background_px: int | None = None,
    ) -> None:
        super().__init__()
        if sprite_px < 3 or sprite_px % 2 == 0:
            raise ValueError(f"sprite_px must be an odd number of pixels >= 3, got {sprite_px}")
        self.sprite_px = int(sprite_px)
        self.outside_logit = float(outside_logit)
        self.envelope_px = float(envelope_px) if envelope_px else None
        self.descriptor_scale = math.sqrt(descriptor_dim)
        self.mlp = nn.Sequential(
            nn.Linear(descriptor_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 4 * self.sprite_px**2),
        )
        self.background = bool(background)
        if self.background:
            self.background_rgb = nn.Parameter(torch.zeros(3))
            if background_px:
                # A static camera sees the same table in every frame: learn it as an image
                # (logits added to the colour's, zero at the start, resized to the input).
                self.background_image = nn.Parameter(torch.zeros(3, int(background_px), int(background_px)))
            # False until ``init_background`` has seen data; in the state dict, so a resumed run keeps its start.
            self.register_buffer("background_ready", torch.zeros((), dtype=torch.bool))

    def background_logits(self, h: int, w: int) -> Tensor:
        """3×H×W logits of the background layer's colour (only with ``background``)."""
        logits = self.background_rgb.view(3, 1, 1)
        image = getattr(self, "background_image", None)
        if image is not None:
            if image.shape[-2:] != (h, w):
                image = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            logits = logits + image
        return logits.expand(3, h, w)

    def sprites(self, descriptors: Tensor) -> Tensor:
        """B×K×C descriptors -> B×K×4×S×S sprites: RGB in [0, 1] and the raw alpha logit."""
        b, k, _ = descriptors.shape
        s = self.sprite_px
        raw = self.mlp(descriptors * self.descriptor_scale).view(b, k, 4, s, s)
        return torch.cat([torch.sigmoid(raw[:, :, :3]), raw[:, :, 3:]], dim=2)

    @torch.no_grad()
    def init_background(self, images: Tensor) -> None:
        """Start the background at the per-pixel median of B×3×H×W images in [0, 1].

        Objects move and the table does not, so the median of a batch from several
        episodes is mostly table. Learned from zero at lr 1e-3..3e-3, the background
        stays grey for hundreds of steps and the keypoints are spent on the table.
        """
        median = images.float().median(dim=0).values.clamp(0.02, 0.98)  # 3×H×W
        image = getattr(self, "background_image", None)
        if image is None:
            self.background_rgb.copy_(torch.logit(median.mean(dim=(1, 2))))
        else:
            median = F.interpolate(median[None], size=image.shape[-2:], mode="area")[0]
            self.background_rgb.zero_()
            image.copy_(torch.logit(median))
        self.background_ready.fill_(True)

    def background_colours(self, h: int, w: int) -> Tensor:
        """1×3×H×W colours of the background layer (only with ``background``)."""
        return torch.sigmoid(self.background_logits(h, w))[None]

    def forward(
        self,
        keypoints: Tensor,
        scores: Tensor,
        descriptors: Tensor,
        size: tuple[int, int],
        background: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``background``: B×3×H×W colours to use instead of ``background_colours`` (e.g. warped with the image)."""
        h, w = size
        b, k, _ = descriptors.shape
        s = self.sprite_px
        sprites = self.sprites(descriptors)
        # Zero padding outside the sprite: black, and alpha logit ``outside_logit``.
        sprites = torch.cat([sprites[:, :, :3], sprites[:, :, 3:] - self.outside_logit], dim=2)
        half = keypoints.new_tensor([(w - 1) / 2.0, (h - 1) / 2.0])
        offsets_px = (pixel_grid(h, w, keypoints.device, keypoints.dtype)[None, None] - keypoints[:, :, None, None, :]) * half
        grid = (offsets_px / ((s - 1) / 2.0)).reshape(b * k, h, w, 2)
        layers = F.grid_sample(
            sprites.reshape(b * k, 4, s, s), grid, mode="bilinear", padding_mode="zeros", align_corners=True
        ).view(b, k, 4, h, w)
        rgb = layers[:, :, :3]
        logits = layers[:, :, 3] + self.outside_logit + torch.log(scores.clamp_min(1e-4))[:, :, None, None]
        if self.envelope_px is not None:
            logits = logits - offsets_px.pow(2).sum(-1) / (2.0 * self.envelope_px**2)
        if self.background:
            logits = torch.cat([logits.new_zeros(b, 1, h, w), logits], dim=1)
            bg = self.background_colours(h, w) if background is None else background
            bg = bg.unsqueeze(1).expand(b, 1, 3, h, w)
            alpha = torch.softmax(logits, dim=1)
            recon = (alpha.unsqueeze(2) * torch.cat([bg, rgb], dim=1)).sum(dim=1)
        else:
            alpha = torch.softmax(logits, dim=1)
            recon = (alpha.unsqueeze(2) * rgb).sum(dim=1)
        return {"reconstruction": recon, "alpha": alpha, "rgb": rgb}


def build_decoder(kind: str, descriptor_dim: int, **kwargs) -> nn.Module:
    """``"rgba"`` (object discovery) or ``"splat"`` (landmarks/detection)."""
    if kind == "rgba":
        return RgbaDecoder(descriptor_dim, **kwargs)
    if kind == "splat":
        return SplatDecoder(descriptor_dim, **kwargs)
    raise ValueError(f"unknown TUSK decoder {kind!r}, expected 'rgba' or 'splat'")

