"""TUSK losses, as pure functions (no state, no optimisers).

- :func:`reconstruction_loss`: MSE, weight 1 in the reference.
- :func:`perceptual_loss` / :class:`VGGPerceptual`: optional VGG16 feature loss; the
  weights must be a local file (nothing is downloaded), and a missing file is a
  clear ``ConfigError``.
- :func:`kmeans_loss`: -mean log soft-min probability of the nearest prototype
  (weight 0.01); the prototypes are detached, they only learn from the
  sliced-Wasserstein loss.
- :func:`kmeans_schedule`: optional warm-up and ramp of the k-means weight.
- :func:`uniformity_loss`: optional encoder-side term that keeps descriptors spread.
- :func:`ema_prototype_update`: optional mini-batch k-means prototype update (instead of SW).
- :func:`equivariance_loss`: MSE between warp(map(I)) and map(warp(I)) for a TPS
  warp (kornia), reflection padding; applied to H (weight 0.01) and F (weight 100).
- :func:`sliced_wasserstein_loss`: the GMM sliced-Wasserstein loss that moves the
  prototypes towards the descriptor distribution (descriptors detached).

Descriptors are B×K×C (or N×C) unit vectors; prototypes M×C unit vectors;
distances are the mean squared difference over channels.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kp_perception.errors import ConfigError
from kp_perception.models.tusk_encoder import prototype_distances
from kp_perception_training.tusk.tps import TpsWarp, apply_tps


def reconstruction_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between B×3×H×W images."""
    return F.mse_loss(reconstruction, target)


def kmeans_loss(
    descriptors: Tensor, prototypes: Tensor, sharpness: float = 20.0, weights: Tensor | None = None
) -> Tensor:
    """-mean log softmin(sharpness · distance) of each descriptor's nearest prototype.

    Args:
        descriptors: B×K×C (or N×C) unit vectors.
        prototypes: M×C unit vectors (detached here: only the descriptors move).
        sharpness: soft-min scale (20 in the reference).
        weights: optional B×K (or N) non-negative weights, e.g. detached keypoint
            scores so empty slots do not pull on the clusters.
    """
    desc = descriptors.reshape(-1, descriptors.shape[-1])
    dist = prototype_distances(desc.unsqueeze(0), prototypes.detach()).squeeze(0)  # N×M
    log_p = torch.log_softmax(-sharpness * dist, dim=-1)
    nll = -log_p.max(dim=-1).values
    if weights is None:
        return nll.mean()
    w = weights.reshape(-1).to(nll.dtype)
    return (nll * w).sum() / w.sum().clamp_min(1e-6)


def kmeans_schedule(step: int, warmup_steps: int = 0, ramp_steps: int = 0) -> float:
    """Factor (0..1) on the k-means weight at training step ``step``: 0 during warm-up, then a linear ramp.

    Why: the k-means pull on descriptors co-adapting with prototypes that have
    not yet spread over them collapses both onto a few prototypes
    (docs/tusk.md); holding it off until the descriptors carry the objects
    lets the prototypes find the clusters first.
    """
    if step < warmup_steps:
        return 0.0
    if ramp_steps <= 0:
        return 1.0
    return min(1.0, (step - warmup_steps + 1) / ramp_steps)


def uniformity_loss(descriptors: Tensor, temperature: float = 2.0, weights: Tensor | None = None) -> Tensor:
    """log of the mean over pairs i != j of exp(-t·|d_i - d_j|²) (Wang & Isola 2020): low when descriptors spread.

    Args:
        descriptors: B×K×C (or N×C) unit vectors.
        temperature: t (2 in the paper).
        weights: optional B×K (or N) non-negative weights (e.g. detached scores): pair
            (i, j) counts w_i·w_j, so empty slots neither push nor are pushed.
    """
    desc = descriptors.reshape(-1, descriptors.shape[-1])
    n = desc.shape[0]
    sq = torch.cdist(desc, desc).pow(2)
    w = desc.new_ones(n) if weights is None else weights.reshape(-1).to(desc.dtype)
    pair = (w[:, None] * w[None, :]) * (1.0 - torch.eye(n, dtype=desc.dtype, device=desc.device))
    return torch.log((pair * torch.exp(-temperature * sq)).sum() / pair.sum().clamp_min(1e-12) + 1e-12)


@torch.no_grad()
def ema_prototype_update(prototypes: Tensor, descriptors: Tensor, decay: float, reduce=None) -> Tensor:
    """Mini-batch k-means step on M×C prototypes (in place, left unit length); returns the M counts.

    Each prototype with at least one nearest descriptor in the batch moves to
    ``decay`` × itself + (1 - ``decay``) × the mean of those descriptors. ``reduce``
    (optional) sums the per-prototype sums and counts over ranks.
    """
    protos = F.normalize(prototypes, dim=1)
    ids = prototype_distances(descriptors.unsqueeze(0), protos).squeeze(0).argmin(dim=1)
    m = protos.shape[0]
    counts = torch.bincount(ids, minlength=m).to(descriptors.dtype)
    sums = torch.zeros_like(protos).index_add_(0, ids, descriptors.to(protos.dtype))
    if reduce is not None:
        sums, counts = reduce(sums, counts)
    hit = counts > 0
    mean = sums[hit] / counts[hit, None]
    protos[hit] = decay * protos[hit] + (1.0 - decay) * mean
    prototypes.copy_(F.normalize(protos, dim=1))
    return counts


def equivariance_loss(maps: Tensor, maps_of_warped: Tensor, warp: TpsWarp) -> Tensor:
    """MSE between ``warp(maps)`` and ``maps_of_warped`` (the maps of the warped image).

    maps, maps_of_warped: B×C×H×W (score map H or feature map F). Reflection
    padding stands in for the reference's reflection pad by H/5 before warping:
    both keep border content from being compared with zeros.
    """
    return F.mse_loss(apply_tps(maps, warp, padding_mode="reflection"), maps_of_warped)


def _prototype_sample(descriptors: Tensor, prototypes: Tensor, generator: torch.Generator | None) -> Tensor:
    """Draw N prototypes (N = number of descriptors) in proportion to smoothed cluster counts.

    Smoothing (reference): count_m + N · (0.01 + variance over clusters of the
    per-cluster descriptor variance), so unused prototypes still get samples
    and are pulled towards the data.
    """
    n, m = descriptors.shape[0], prototypes.shape[0]
    with torch.no_grad():
        nearest = prototype_distances(descriptors.unsqueeze(0), prototypes).squeeze(0).argmin(dim=-1)
        counts = torch.bincount(nearest, minlength=m).to(descriptors.dtype)
        one_hot = F.one_hot(nearest, m).to(descriptors.dtype)  # N×M
        safe = counts.clamp_min(1.0)
        mean = one_hot.t() @ descriptors / safe[:, None]
        sq = one_hot.t() @ descriptors.pow(2) / safe[:, None]
        cluster_var = (sq - mean.pow(2)).mean(dim=1)
        used = counts > 1
        spread = cluster_var[used].var(unbiased=False) if int(used.sum()) > 1 else cluster_var.new_zeros(())
        smoothed = counts + n * (0.01 + spread)
        picks = torch.multinomial(smoothed, n, replacement=True, generator=generator)
    return prototypes[picks]


def sliced_wasserstein_loss(
    descriptors: Tensor,
    prototypes: Tensor,
    num_projections: int = 100,
    noise_std: float = 0.02,
    generator: torch.Generator | None = None,
) -> Tensor:
    """GMM sliced-Wasserstein distance between descriptors and a prototype mixture sample.

    Args:
        descriptors: N×C (or B×K×C) unit vectors; detached (only prototypes learn here).
        prototypes: M×C raw prototype parameters; normalised here, gradients flow to them.
        num_projections: random unit directions (100 in the reference).
        noise_std: std of the Gaussian noise added to each drawn prototype before
            re-normalising (the reference's N(0, 1/50): we read 1/50 as the std,
            see docs/tusk.md).
    Returns:
        mean squared difference of the sorted projections (scalar).
    """
    desc = descriptors.detach().reshape(-1, descriptors.shape[-1])
    protos = F.normalize(prototypes, dim=-1)
    sample = _prototype_sample(desc, protos, generator)
    noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
    sample = F.normalize(sample + noise_std * noise, dim=-1)
    dirs = F.normalize(
        torch.randn(desc.shape[1], num_projections, generator=generator, device=desc.device, dtype=desc.dtype),
        dim=0,
    )
    proj_d = torch.sort(desc @ dirs, dim=0).values
    proj_p = torch.sort(sample @ dirs, dim=0).values
    return (proj_d - proj_p).pow(2).mean()


class VGGPerceptual(nn.Module):
    """VGG16 feature extractor (conv1_2, conv2_2, conv3_3) for the optional perceptual loss.

    Built without torchvision (which does not import beside our torch); the
    weights come from a local file holding a torchvision-style VGG16 state dict
    (keys ``features.N.weight``/``bias``). Nothing is downloaded.
    """

    _CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256)
    _TAPS = (3, 8, 15)  # ReLU outputs after conv1_2, conv2_2, conv3_3 in torchvision's indexing

    def __init__(self, weights_path: str | Path | None) -> None:
        super().__init__()
        if not weights_path:
            raise ConfigError("loss.perceptual_weight > 0 needs loss.vgg16_weights: a local VGG16 state-dict file")
        path = Path(weights_path)
        if not path.is_file():
            raise ConfigError(f"{path}: VGG16 weights file not found (perceptual loss needs a local copy)")
        layers: list[nn.Module] = []
        in_ch = 3
        for v in self._CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = int(v)
        self.features = nn.Sequential(*layers)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or foreign file
            raise ConfigError(f"{path}: not a readable VGG16 state dict ({type(exc).__name__})") from None
        wanted = {k: v for k, v in state.items() if k.startswith("features.")}
        missing = self.load_state_dict(wanted, strict=False).missing_keys
        if missing:
            raise ConfigError(f"{path}: VGG16 state dict lacks {missing[0]} (expected torchvision layout)")
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> list[Tensor]:
        x = (images - self.mean) / self.std
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._TAPS:
                taps.append(x)
        return taps


def perceptual_loss(vgg: VGGPerceptual, reconstruction: Tensor, target: Tensor) -> Tensor:
    """Sum over VGG16 taps of the feature MSE between reconstruction and target (B×3×H×W)."""
    return sum(F.mse_loss(a, b) for a, b in zip(vgg(reconstruction), vgg(target), strict=True))
