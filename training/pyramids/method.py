"""Keypoint Pyramids as a ``TrainingMethod``: Eq. 5 = reconstruction + transport + spring.

One encoder pass over [x; x_ref] (2B images) gives both keypoint hierarchies.

- Reconstruction (Eq. 1): Gaussian heatmaps of every level, rendered at the finest
  FPN resolution, concatenated with appearance features Φ(x_ref), decoded to x.
- Transport (Eq. 2-3): per level, Φ_l = FeatureEncoder_l(f_l) (C_1 > C_2 …);
  Φ'_l from Eq. 2 with the level's keypoint mask (max over its heatmaps) and
  a stop-gradient on the x_ref side (Transporter's convention); the level's
  decoder reads [Φ'_l, Ψ_l(x)] — the feature-augmented keypoints — and must produce x.
- Spring (Eq. 4) ties each child to its parent.

Ablations (``ablation.*`` switches; "Unconditioned" is ``model.conditioned: false``
because it changes the robot-side encoder):
  no_reconstruction, no_transport, no_spring: drop that term;
  all_transport: the flattened term is a transport over all levels' keypoints
    (features Φ_flat from the finest FPN map) instead of Eq. 1;
  all_reconstruction: each level's term is a keypoint-only reconstruction from
    [Ψ_l(x), Φ(x_ref)] instead of a transport.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from kp_perception.errors import ConfigError
from kp_perception.models import build_encoder
from kp_perception.models.keypoint_ops import collapse_heatmaps, gaussian_heatmaps
from kp_perception_training.methods import TrainingMethod
from kp_perception_training.pyramids.config import PyramidsConfig
from kp_perception_training.pyramids.decoders import (
    AppearanceEncoder,
    FeatureEncoder,
    ImageDecoder,
    resize_maps,
    transport_features,
)
from kp_perception_training.pyramids.losses import reconstruction_loss, spring_loss, transport_loss


def build_pair_datasets(config: PyramidsConfig, data_paths: list[str]) -> tuple[Dataset, Dataset | None]:
    """(x, x_ref) pair datasets over the frame cache, split by sequence (train, val)."""
    from kp_perception_training.data.datasets import FramePairDataset, load_cached_sequences
    from kp_perception_training.data.splits import split_sequences

    data, seed = config.data, config.train.seed
    caches = load_cached_sequences(data_paths, data.size_wh, image_topic=data.image_topic, cache_dir=data.cache_dir)
    train_caches, val_caches = caches, []
    if data.val_fraction > 0 and len(caches) > 1:
        fractions = (1.0 - data.val_fraction, data.val_fraction)
        splits = split_sequences([seq.name for seq, _ in caches], fractions=fractions, seed=seed)
        train_names = set(splits["train"])
        train_caches = [c for c in caches if c[0].name in train_names]
        val_caches = [c for c in caches if c[0].name not in train_names]
    train = FramePairDataset(train_caches, max_ref_gap=data.max_ref_gap, seed=seed)
    val = FramePairDataset(val_caches, max_ref_gap=data.max_ref_gap, seed=seed + 1) if val_caches else None
    return train, val


class KeypointMethodBase(TrainingMethod):
    """What Pyramids, KeyNet and Transporter share: the encoder, pair datasets, image logging."""

    kind: ClassVar[str] = "pyramids"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.encoder = build_encoder(self.kind, config.model)
        self.image_wh = config.data.size_wh
        stride = self.encoder.fpn.coarsest_stride
        w, h = self.image_wh
        if w % stride or h % stride:
            raise ConfigError(f"data.image_size {w}x{h} must be divisible by the coarsest FPN stride {stride}")
        self.sigma = self.encoder.sigma
        self._last_images: dict[str, Tensor] = {}

    @classmethod
    def build_datasets(cls, config, data_paths: list[str]) -> tuple[Dataset, Dataset | None]:
        return build_pair_datasets(config, data_paths)

    def encode_pair(self, batch: dict[str, Tensor]) -> tuple[dict, dict]:
        """One encoder pass over [x; x_ref]; returns the per-level outputs of x and of x_ref."""
        x, ref = batch["image"], batch["ref"]
        out = self.encoder(torch.cat([x, ref], dim=0))
        b = x.shape[0]
        split = [{k: [t[:b] for t in v] for k, v in out.items()}, {k: [t[b:] for t in v] for k, v in out.items()}]
        return split[0], split[1]

    def heatmaps(self, keypoints: Tensor, like: Tensor) -> Tensor:
        """Gaussian heatmaps B×N×h×w of ``keypoints`` at the resolution of the map ``like``."""
        return gaussian_heatmaps(keypoints, like.shape[-2], like.shape[-1], self.sigma)

    @torch.no_grad()
    def log_images(self, writer: Any, batch: dict[str, Tensor], step: int) -> None:
        """Keypoints drawn over frames (parents and children one colour, linked, as Fig. 6) and reconstructions."""
        from kp_perception.drawing import draw_pyramid
        from kp_perception.preprocessing import normalized_to_model_pixels
        from kp_perception.results import KeypointPyramidResult

        was_training = self.training
        self.eval()
        images = batch["image"][:4]
        out = self.encoder.infer(images)
        self.train(was_training)
        h, w = images.shape[-2:]
        sizes = self.encoder.level_sizes
        levels = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
        drawn = []
        for i in range(images.shape[0]):
            frame = (images[i].permute(1, 2, 0).cpu().numpy() * 255).clip(0, 255).astype(np.uint8)
            result = KeypointPyramidResult(
                xy=normalized_to_model_pixels(out["keypoints"][i].cpu().numpy(), w, h),
                scores=out["scores"][i].cpu().numpy(),
                levels=levels,
                parents=np.asarray(self.encoder.parents, dtype=np.int32),
                level_sizes=tuple(sizes),
                image_width=w,
                image_height=h,
            )
            drawn.append(draw_pyramid(np.ascontiguousarray(frame), result))
        writer.add_images("keypoints", np.stack(drawn), step, dataformats="NHWC")
        for name, recon in self._last_images.items():
            writer.add_images(name, recon[:4].clamp(0, 1), step)


class PyramidsMethod(KeypointMethodBase):
    """Keypoint Pyramids training (Qian et al. 2022, Sec. 3)."""

    kind: ClassVar[str] = "pyramids"
    config_class = PyramidsConfig
    config: PyramidsConfig

    def __init__(self, config: PyramidsConfig) -> None:
        super().__init__(config)
        dec, loss = config.decoder, config.loss
        self.ablation = dataclasses.asdict(config.ablation)
        sizes = self.encoder.level_sizes
        n_levels = len(sizes)
        self.level_weights = list(loss.transport_weights)
        self.reconstruction_weight = loss.reconstruction
        self.spring_weight = loss.spring
        self.stop_gradient_ref = loss.stop_gradient_ref
        channels = list(dec.transport_channels)
        fpn = self.encoder.fpn
        fpn_ch = fpn.out_channels
        finest = fpn.finest_stride
        strides = [finest * 2 ** (n_levels - 1 - level) for level in range(n_levels)]
        app_ch, width, hidden = dec.appearance_channels, dec.decoder_width, dec.feature_hidden
        self.appearance = AppearanceEncoder(app_ch, dec.appearance_width, finest)
        n_total = sum(sizes)
        if self.ablation["all_transport"]:
            # The flattened term as a transport over all levels' keypoints on the finest map.
            self.flat_features = FeatureEncoder(fpn_ch, channels[-1], hidden)
            self.combined_decoder = ImageDecoder(channels[-1] + n_total, width, finest)
        else:
            self.combined_decoder = ImageDecoder(n_total + app_ch, width, finest)
        if self.ablation["all_reconstruction"]:
            self.level_decoders = nn.ModuleList(
                ImageDecoder(n + app_ch, width, s) for n, s in zip(sizes, strides, strict=True)
            )
        else:
            self.level_features = nn.ModuleList(FeatureEncoder(fpn_ch, c, hidden) for c in channels)
            self.level_decoders = nn.ModuleList(
                ImageDecoder(c + n, width, s) for c, n, s in zip(channels, sizes, strides, strict=True)
            )

    def _transport(self, phi: nn.Module, feat_x, feat_ref, kp_x, kp_ref) -> tuple[Tensor, Tensor]:
        """Eq. 2 on one keypoint set: returns ([Φ', Ψ(x)] decoder input, Ψ(x))."""
        phi_x, phi_ref = phi(feat_x), phi(feat_ref)
        heat_x = self.heatmaps(kp_x, phi_x)
        heat_ref = self.heatmaps(kp_ref, phi_x)
        moved = transport_features(
            phi_x, phi_ref, collapse_heatmaps(heat_x), collapse_heatmaps(heat_ref), self.stop_gradient_ref
        )
        return torch.cat([moved, heat_x], dim=1), heat_x

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float], Any]:
        x, ref = batch["image"], batch["ref"]
        out_x, out_ref = self.encode_pair(batch)
        kp_x, kp_ref = out_x["keypoints"], out_ref["keypoints"]
        feats_x, feats_ref = out_x["features"], out_ref["features"]
        finest = feats_x[-1]
        total = x.new_zeros(())
        logs: dict[str, float] = {}
        app = None
        if not self.ablation["all_transport"] or self.ablation["all_reconstruction"]:
            app = self.appearance(ref)
        images: dict[str, Tensor] = {}
        if not self.ablation["no_reconstruction"]:
            if self.ablation["all_transport"]:
                dec_in, _ = self._transport(
                    self.flat_features, finest, feats_ref[-1], torch.cat(kp_x, 1), torch.cat(kp_ref, 1)
                )
            else:
                heat = torch.cat([self.heatmaps(k, finest) for k in kp_x], dim=1)
                dec_in = torch.cat([heat, resize_maps(app, finest.shape[-2:])], dim=1)
            recon = self.combined_decoder(dec_in)
            rec = reconstruction_loss(recon, x)
            total = total + self.reconstruction_weight * rec
            logs["loss/reconstruction"] = float(rec.detach())
            images["reconstruction"] = recon.detach()
        if not self.ablation["no_transport"]:
            level_recons = []
            for level, decoder in enumerate(self.level_decoders):
                if self.ablation["all_reconstruction"]:
                    f = feats_x[level]
                    dec_in = torch.cat([self.heatmaps(kp_x[level], f), resize_maps(app, f.shape[-2:])], dim=1)
                else:
                    dec_in, _ = self._transport(
                        self.level_features[level], feats_x[level], feats_ref[level], kp_x[level], kp_ref[level]
                    )
                level_recons.append(decoder(dec_in))
            tr = transport_loss(level_recons, x, self.level_weights)
            total = total + tr
            logs["loss/transport"] = float(tr.detach())
            for level, r in enumerate(level_recons):
                images[f"level_{level + 1}_reconstruction"] = r.detach()
        if not self.ablation["no_spring"] and len(kp_x) > 1:
            sp = spring_loss(kp_x, self.spring_weight)
            total = total + sp
            logs["loss/spring"] = float(sp.detach())
        logs["loss/total"] = float(total.detach())
        self._last_images = images
        return total, logs, {"keypoints": [k.detach() for k in kp_x]}
