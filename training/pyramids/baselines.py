"""Flat baselines of Table 1, on the same encoder (one level on the finest FPN map), any K.

- ``KeyNetMethod`` (Jakab et al. 2018): the K keypoints' Gaussian heatmaps are the
  bottleneck; with appearance features Φ(x_ref) a decoder must reconstruct x (Eq. 1, one level).
- ``TransporterMethod`` (Kulkarni et al. 2019): features Φ from the finest FPN map,
  transported keypoint by keypoint (f ← (1-a_k)(1-b_k)f + b_k Φ(x)) starting from
  Φ(x_ref) with a stop-gradient on the x_ref side; a decoder reconstructs x from them.

Both read ``model.keypoints_per_level: [K]`` and go through the same train/eval/export commands.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from kp_perception_training.pyramids.config import KeyNetConfig, TransporterConfig
from kp_perception_training.pyramids.decoders import (
    AppearanceEncoder,
    FeatureEncoder,
    ImageDecoder,
    resize_maps,
    sequential_transport,
)
from kp_perception_training.pyramids.losses import reconstruction_loss
from kp_perception_training.pyramids.method import KeypointMethodBase


class KeyNetMethod(KeypointMethodBase):
    """Keypoint bottleneck + reconstruction from [Ψ(x), Φ(x_ref)]."""

    kind: ClassVar[str] = "keynet"
    config_class = KeyNetConfig
    config: KeyNetConfig

    def __init__(self, config: KeyNetConfig) -> None:
        super().__init__(config)
        dec = config.decoder
        stride = self.encoder.fpn.finest_stride
        self.appearance = AppearanceEncoder(dec.appearance_channels, dec.appearance_width, stride)
        self.decoder = ImageDecoder(self.encoder.num_keypoints + dec.appearance_channels, dec.decoder_width, stride)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float], Any]:
        x, ref = batch["image"], batch["ref"]
        out = self.encoder(x)  # x_ref only feeds the appearance encoder
        kp = out["keypoints"][0]
        finest = out["features"][-1]
        app = resize_maps(self.appearance(ref), finest.shape[-2:])
        recon = self.decoder(torch.cat([self.heatmaps(kp, finest), app], dim=1))
        loss = reconstruction_loss(recon, x)
        self._last_images = {"reconstruction": recon.detach()}
        logs = {"loss/reconstruction": float(loss.detach()), "loss/total": float(loss.detach())}
        return loss, logs, {"keypoints": [kp.detach()]}


class TransporterMethod(KeypointMethodBase):
    """Per-keypoint sequential transport of Φ from x_ref to x, then reconstruction of x."""

    kind: ClassVar[str] = "transporter"
    config_class = TransporterConfig
    config: TransporterConfig

    def __init__(self, config: TransporterConfig) -> None:
        super().__init__(config)
        dec = config.decoder
        (channels,) = dec.transport_channels
        self.features = FeatureEncoder(self.encoder.fpn.out_channels, channels, dec.feature_hidden)
        self.decoder = ImageDecoder(channels, dec.decoder_width, self.encoder.fpn.finest_stride)
        self.stop_gradient_ref = config.loss.stop_gradient_ref

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float], Any]:
        x = batch["image"]
        out_x, out_ref = self.encode_pair(batch)
        phi_x = self.features(out_x["features"][-1])
        phi_ref = self.features(out_ref["features"][-1])
        kp_x, kp_ref = out_x["keypoints"][0], out_ref["keypoints"][0]
        moved = sequential_transport(
            phi_x, phi_ref, self.heatmaps(kp_x, phi_x), self.heatmaps(kp_ref, phi_x), self.stop_gradient_ref
        )
        recon = self.decoder(moved)
        loss = reconstruction_loss(recon, x)
        self._last_images = {"reconstruction": recon.detach()}
        logs = {"loss/transport": float(loss.detach()), "loss/total": float(loss.detach())}
        return loss, logs, {"keypoints": [kp_x.detach()]}
