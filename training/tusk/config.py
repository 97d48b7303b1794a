"""The typed config of TUSK (``kp-perception train tusk``).

Defaults are the reference implementation's where it has one (losses,
prototype steps, Adam 1e-3); the presets in ``config/training/tusk_*.yaml``
list where a CPU run departs from them, and why. The ``model`` section is
``TuskEncoder``'s keyword arguments and ``decoder.rgba`` / ``decoder.splat``
are ``RgbaDecoder`` / ``SplatDecoder``'s: their signatures hold those defaults.
Adding a key to a section is adding a field here (with its default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kp_perception.models import model_section
from kp_perception.typed_config import ConfigKeyError, section_from_signature
from kp_perception_training.config import Optim, TrainingConfig, TrainSettings
from kp_perception_training.tusk.decoders import RgbaDecoder, SplatDecoder
from kp_perception_training.tusk.tps import TPS_PRESETS, random_tps

TuskModel = model_section("tusk")
RgbaDecoderConfig = section_from_signature(RgbaDecoder, "RgbaDecoderConfig", ("descriptor_dim",))
SplatDecoderConfig = section_from_signature(SplatDecoder, "SplatDecoderConfig", ("descriptor_dim",))
TpsParams = section_from_signature(random_tps, "TpsParams", ("batch", "generator", "device"))


@dataclass(frozen=True)
class TuskData:
    """The ``data`` section: image size, validation split and the random TPS warps of the equivariance pairs."""

    image_size: int | tuple[int, int] = 35  # square side, or [width, height]
    val_fraction: float = 0.0  # the last fraction of the items (by index) is the validation split
    tps: str | TpsParams = "multi_object"  # a preset of TPS_PRESETS, or the warp's parameters
    tps_padding: Literal["zeros", "border", "reflection"] = "zeros"  # grid_sample padding of the warped copy
    image_topic: str | None = None  # bags with several image topics: which one

    @property
    def size_wh(self) -> tuple[int, int]:
        """``image_size`` as (width, height)."""
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size

    @property
    def tps_params(self) -> dict[str, float]:
        """The warp parameters (the preset's, or the section's own)."""
        if isinstance(self.tps, str):
            return dict(TPS_PRESETS[self.tps])
        return {name: getattr(self.tps, name) for name in self.tps.__dataclass_fields__}

    def check(self) -> None:
        if isinstance(self.tps, str) and self.tps not in TPS_PRESETS:
            raise ConfigKeyError("tps", f"tps must be one of {', '.join(map(repr, TPS_PRESETS))} or a mapping of "
                                        f"warp parameters, got {self.tps!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigKeyError("val_fraction", f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class TuskDecoder:
    """The ``decoder`` section: which decoder, and each decoder's keyword arguments."""

    kind: Literal["rgba", "splat"] = "rgba"  # rgba: sprites + alpha masks (discovery); splat: landmarks/detection
    rgba: RgbaDecoderConfig = field(default_factory=RgbaDecoderConfig)
    splat: SplatDecoderConfig = field(default_factory=SplatDecoderConfig)


@dataclass(frozen=True)
class TuskLoss:
    """The ``loss`` section (reference weights)."""

    reconstruction: float = 1.0
    kmeans: float = 0.01
    kmeans_sharpness: float = 20.0
    kmeans_score_weighted: bool = False  # weight each descriptor's k-means pull by its detached score
    equivariance_heatmap: float = 0.01
    equivariance_features: float = 100.0
    perceptual_weight: float = 0.0  # VGG16 perceptual loss; needs vgg16_weights (no download here)
    vgg16_weights: str | None = None
    sw_projections: int = 100  # sliced-Wasserstein projections of the prototype steps
    sw_noise_std: float = 0.02
    sw_min_score: float = 0.0  # descriptors below this score are left out of the prototype steps
    # k-means weight schedule: 0 for the first warmup steps, then a linear ramp to ``kmeans`` (0, 0 = always on)
    kmeans_warmup_steps: int = 0
    kmeans_ramp_steps: int = 0
    # uniformity of the descriptors (Wang & Isola 2020: log mean exp(-t·|di - dj|²)), keeps them spread; 0 = off
    uniformity: float = 0.0
    uniformity_temperature: float = 2.0

    def check(self) -> None:
        if self.perceptual_weight > 0 and not self.vgg16_weights:
            raise ConfigKeyError("vgg16_weights", "perceptual_weight > 0 needs vgg16_weights (a local VGG16 file)")


@dataclass(frozen=True)
class TuskPrototypes:
    """The ``prototypes`` section: the prototype-only steps after each main step.

    ``update``: ``sw`` (the reference: ``steps`` Adam steps on the sliced-Wasserstein
    loss) or ``ema`` (mini-batch k-means: each prototype moves to
    ``ema_decay`` × itself + (1 - ``ema_decay``) × the mean of the batch's
    descriptors nearest to it, then back onto the unit sphere; no optimiser steps).

    ``restart_every``: every this many batches, prototypes chosen by fewer than
    ``restart_below`` × an even share of the descriptors since the last restart
    are re-seeded on the data (training/tusk/prototype_restart.py); 0 = never.

    ``refit_bank``: keep the latest this many descriptors (0 = off); each saved
    checkpoint's ``encoder`` (what eval, export and the nodes use) then holds the
    k-means centres of that bank as its prototypes, while training goes on with
    its own. The names come from the descriptors, whatever the training-time
    prototypes did (docs/tusk.md, round 7). ``refit_method`` is how the bank is
    clustered (training/tusk/refit.py): ``kmeans`` on the descriptors, ``whitened``
    (k-means on the PCA-whitened bank, so weak directions such as colour count;
    round 8) or ``over_ward`` (twice the clusters, merged by Ward's rule).
    ``refit_track``: each refit starts from the previous one's centres (kept in
    the method's state) instead of k-means++, so that it follows one partition
    through training (round 9; not with ``over_ward``).
    """

    steps: int = 8
    lr: float = 0.1
    betas: tuple[float, float] = (0.5, 0.999)
    update: Literal["sw", "ema"] = "sw"
    ema_decay: float = 0.9
    restart_every: int = 25
    restart_below: float = 0.1
    refit_bank: int = 0
    refit_method: Literal["kmeans", "whitened", "over_ward"] = "kmeans"
    refit_track: bool = False

    def check(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigKeyError("ema_decay", f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.refit_bank < 0:
            raise ConfigKeyError("refit_bank", f"refit_bank must be >= 0 descriptors, got {self.refit_bank}")
        if self.refit_track and self.refit_method == "over_ward":
            raise ConfigKeyError("refit_track", "refit_track needs refit_method kmeans or whitened, not over_ward")


@dataclass(frozen=True)
class TuskOptim(Optim):
    """The main optimiser (the reference's Adam 1e-3)."""

    lr: float = 1e-3


@dataclass(frozen=True)
class TuskConfig(TrainingConfig):
    """``kp-perception train tusk``."""

    model: TuskModel = field(default_factory=TuskModel)
    data: TuskData = field(default_factory=TuskData)
    decoder: TuskDecoder = field(default_factory=TuskDecoder)
    loss: TuskLoss = field(default_factory=TuskLoss)
    prototypes: TuskPrototypes = field(default_factory=TuskPrototypes)
    optim: TuskOptim = field(default_factory=TuskOptim)
    train: TrainSettings = field(default_factory=TrainSettings)
