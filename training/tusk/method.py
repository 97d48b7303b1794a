"""TUSK as a ``TrainingMethod``: encoder/decoder step, then prototype-only steps on detached descriptors.

Per batch (reference schedule, docs/tusk.md):

1. Main step (the trainer's ``optimizers["main"]``, Adam lr 1e-3, everything but
   the prototypes): each image and a random TPS warp of it go through the
   encoder; loss = reconstruction (both) + k-means (descriptors towards detached
   prototypes) + equivariance of H and F under the warp.
2. ``after_main_step``: ``prototypes.steps`` Adam steps (lr 0.1, betas (0.5, 0.999))
   on the sliced-Wasserstein loss, using the descriptors of step 1, DETACHED.
   The reference re-ran the encoder forward and backward in each of these steps
   for gradients it threw away: the prototypes' loss does not depend on the
   encoder once the descriptors are fixed, so we do not.

Batches are dicts with "image" B×3×H×W in [0, 1] (plus "mask"/"index" for
multi-object folders, ignored here).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from kp_perception.errors import ConfigError, DataError
from kp_perception.models import build_encoder
from kp_perception.models.tusk_encoder import prototype_distances
from kp_perception_training.distributed import all_reduce_grads, all_reduce_sum, any_rank, broadcast_
from kp_perception_training.methods import TrainingMethod
from kp_perception_training.tusk.config import TuskConfig
from kp_perception_training.tusk.decoders import build_decoder
from kp_perception_training.tusk.losses import (
    VGGPerceptual,
    ema_prototype_update,
    equivariance_loss,
    kmeans_loss,
    kmeans_schedule,
    perceptual_loss,
    reconstruction_loss,
    sliced_wasserstein_loss,
    uniformity_loss,
)
from kp_perception_training.tusk.prototype_restart import reseed_unused_prototypes
from kp_perception_training.tusk.tps import apply_tps, random_tps


class TuskMethod(TrainingMethod):
    """TUSK: encoder (robot side) + decoder + losses + alternating prototype steps."""

    kind = "tusk"
    config_class = TuskConfig
    config: TuskConfig

    def __init__(self, config: TuskConfig) -> None:
        super().__init__(config)
        self.encoder = build_encoder("tusk", config.model)
        self.decoder_kind = config.decoder.kind
        kwargs = dataclasses.asdict(getattr(config.decoder, self.decoder_kind))
        try:
            self.decoder = build_decoder(self.decoder_kind, self.encoder.descriptor_dim, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"decoder.{self.decoder_kind}: {exc}") from None
        self.loss_cfg = config.loss
        self.proto_cfg = config.prototypes
        # Assignments per prototype and batches since the last restart: in the state dict, so resume is exact.
        self.register_buffer("prototype_counts", torch.zeros(self.encoder.num_prototypes, dtype=torch.float64))
        self.register_buffer("batches_since_restart", torch.zeros((), dtype=torch.int64))
        # Main steps taken (the k-means weight schedule reads it; in the state dict, so resume keeps it).
        self.register_buffer("main_steps", torch.zeros((), dtype=torch.int64))
        # The latest descriptors, for the k-means refit of the saved prototypes (prototypes.refit_bank).
        # Saved only when on, so runs from before the option still resume.
        bank = config.prototypes.refit_bank
        self.register_buffer("descriptor_bank", torch.zeros(bank, self.encoder.descriptor_dim), persistent=bank > 0)
        self.register_buffer("bank_seen", torch.zeros((), dtype=torch.int64), persistent=bank > 0)
        # The last refit's centres, where the next one starts (prototypes.refit_track); saved only when on.
        track = bank > 0 and config.prototypes.refit_track
        self.register_buffer("refit_centres", torch.zeros(self.encoder.num_prototypes, self.encoder.descriptor_dim),
                             persistent=track)
        self.register_buffer("refit_centres_set", torch.zeros((), dtype=torch.bool), persistent=track)
        self._refit: tuple[int, Tensor | None] | None = None  # (bank_seen, centres) of the last refit
        self.tps_cfg = config.data.tps_params
        self.image_padding = config.data.tps_padding
        self.vgg = VGGPerceptual(config.loss.vgg16_weights) if config.loss.perceptual_weight > 0 else None
        # Memory format for CPU convolutions (docs/tusk.md, measured per step): in float32,
        # channels_last took ~1.4x less CPU time at 112 px; under bfloat16 autocast
        # (train.cpu_bf16) the default layout is faster (GroupNorm's channels_last
        # bfloat16 backward is slow). Weights keep their values either way.
        self.memory_format = torch.contiguous_format if config.train.cpu_bf16 else torch.channels_last
        self.to(memory_format=self.memory_format)

    # ----------------------------------------------------------------- data
    @classmethod
    def build_datasets(cls, config: TuskConfig, data_paths: list[str]) -> tuple[Dataset, Dataset | None]:
        """Multi-object folders (images/, masks/, objects.csv) or any frame source (bags, videos, folders).

        The last ``data.val_fraction`` of the items (by index, fixed) is the validation split.
        """
        if not data_paths:
            raise DataError("tusk: no --data paths given")
        width, height = config.data.size_wh
        datasets = []
        for p in data_paths:
            path = Path(p)
            if (path / "images").is_dir() and (path / "masks").is_dir():
                from kp_perception_training.data.multi_object import MultiObjectDataset

                datasets.append(MultiObjectDataset(path, size=(width, height)))
            else:
                from kp_perception_training.data.datasets import FrameDataset, load_cached_sequences

                cached = load_cached_sequences([path], (width, height), image_topic=config.data.image_topic)
                datasets.append(FrameDataset([c for _, c in cached]))
        full = datasets[0] if len(datasets) == 1 else torch.utils.data.ConcatDataset(datasets)
        n = len(full)
        n_val = int(round(n * config.data.val_fraction))
        if n_val <= 0 or n - n_val <= 0:
            return full, None
        return Subset(full, range(n - n_val)), Subset(full, range(n - n_val, n))

    def images_in_batch(self, batch: dict[str, Tensor]) -> int:
        return int(batch["image"].shape[0])

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """"main": Adam over encoder (without prototypes) + decoder; "prototypes": Adam over the prototypes."""
        optim = self.config.optim
        main_params = [p for n, p in self.named_parameters() if n != "encoder.prototypes" and p.requires_grad]
        return {
            "main": torch.optim.Adam(main_params, lr=optim.lr, weight_decay=optim.weight_decay),
            "prototypes": torch.optim.Adam(
                [self.encoder.prototypes], lr=self.proto_cfg.lr, betas=self.proto_cfg.betas
            ),
        }

    def encode_and_decode(self, images: Tensor, background: Tensor | None = None) -> dict[str, Tensor]:
        """Encoder then decoder on B×3×H×W images: the encoder's outputs plus "reconstruction" (and "alpha").

        ``background``: B×3×H×W colours for an RGBA decoder's background layer (default: its own).
        """
        enc = self.encoder(images)
        extra = {} if background is None else {"background": background}
        dec = self.decoder(enc["keypoints"], enc["scores"], enc["descriptors"], tuple(images.shape[-2:]), **extra)
        return {**enc, **dec}

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float], Any]:
        images = batch["image"].contiguous(memory_format=self.memory_format)
        b = images.shape[0]
        warp = random_tps(b, **self.tps_cfg, device=images.device)
        warped = apply_tps(images, warp, padding_mode=self.image_padding)
        background = None
        if getattr(self.decoder, "background", False):
            if self.training and not bool(self.decoder.background_ready):
                self.decoder.init_background(images)
                for tensor in (self.decoder.background_rgb, getattr(self.decoder, "background_image", None)):
                    if tensor is not None:
                        broadcast_(tensor.data)  # every rank starts from rank 0's batch
            # The warped copy shows a warped table: its background layer is warped with it.
            bg = self.decoder.background_colours(*images.shape[-2:]).expand(b, -1, -1, -1)
            background = torch.cat([bg, apply_tps(bg, warp, padding_mode=self.image_padding)])
        out = self.encode_and_decode(torch.cat([images, warped], dim=0), background)
        target = torch.cat([images, warped], dim=0)
        cfg = self.loss_cfg

        rec = reconstruction_loss(out["reconstruction"], target)
        loss = cfg.reconstruction * rec
        logs = {"loss/reconstruction": rec.item()}
        if self.vgg is not None:
            per = perceptual_loss(self.vgg, out["reconstruction"], target)
            loss = loss + cfg.perceptual_weight * per
            logs["loss/perceptual"] = per.item()
        weights = out["scores"].detach() if cfg.kmeans_score_weighted else None
        km_weight = cfg.kmeans * kmeans_schedule(int(self.main_steps), cfg.kmeans_warmup_steps, cfg.kmeans_ramp_steps)
        with torch.set_grad_enabled(torch.is_grad_enabled() and km_weight != 0.0):
            km = kmeans_loss(out["descriptors"], self.encoder.normalized_prototypes(), cfg.kmeans_sharpness, weights)
        if km_weight != 0.0:
            loss = loss + km_weight * km
        logs["loss/kmeans_weight"] = km_weight
        if cfg.uniformity != 0.0:
            uni = uniformity_loss(out["descriptors"], cfg.uniformity_temperature, weights)
            loss = loss + cfg.uniformity * uni
            logs["loss/uniformity"] = uni.item()
        eq = {}
        for name in ("heatmap", "features"):
            weight = getattr(cfg, f"equivariance_{name}")
            # A term with weight 0 is still logged, but without a graph: its backward is not free.
            with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0.0):
                eq[name] = equivariance_loss(out[name][:b], out[name][b:], warp)
            if weight != 0.0:
                loss = loss + weight * eq[name]
        eq_h, eq_f = eq["heatmap"], eq["features"]
        logs.update(
            {
                "loss/kmeans": km.item(),
                "loss/equivariance_heatmap": eq_h.item(),
                "loss/equivariance_features": eq_f.item(),
                "keypoints/mean_score": out["scores"].mean().item(),
            }
        )
        extra = {"descriptors": out["descriptors"].detach(), "scores": out["scores"].detach()}
        return loss, logs, extra

    def after_main_step(self, batch: dict[str, Tensor], extra: Any, optimizers: dict) -> dict[str, float]:
        """``prototypes.steps`` sliced-Wasserstein steps on the detached descriptors of the main step."""
        desc = extra["descriptors"].reshape(-1, extra["descriptors"].shape[-1])
        keep = extra["scores"].reshape(-1) >= self.loss_cfg.sw_min_score
        desc = desc[keep]
        self.main_steps += 1
        self._remember(desc)
        # Every rank must make the same number of gradient all-reduces, so all skip together.
        if any_rank(desc.shape[0] < 2, device=desc.device):
            return {}
        opt = optimizers["prototypes"]
        protos = self.encoder.prototypes
        if self.proto_cfg.update == "ema":
            ema_prototype_update(protos.data, desc, self.proto_cfg.ema_decay, _sum_over_ranks)
            logs = {}
            restarted = self._restart_unused_prototypes(desc, opt)
            if restarted is not None:
                logs["prototypes/restarted"] = float(restarted)
            return logs
        value = 0.0
        for _ in range(self.proto_cfg.steps):
            opt.zero_grad(set_to_none=True)
            sw = sliced_wasserstein_loss(desc, protos, self.loss_cfg.sw_projections, self.loss_cfg.sw_noise_std)
            sw.backward()
            all_reduce_grads([protos])
            opt.step()
            value = sw.item()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # keep the stored parameter on the unit sphere, as it is used
            protos.copy_(torch.nn.functional.normalize(protos, dim=1))
        logs = {"loss/sliced_wasserstein": value}
        restarted = self._restart_unused_prototypes(desc, opt)
        if restarted is not None:
            logs["prototypes/restarted"] = float(restarted)
        return logs

    @torch.no_grad()
    def _remember(self, desc: Tensor) -> None:
        """Write N×C descriptors into the ring buffer ``descriptor_bank`` (no-op when it has no rows)."""
        size = self.descriptor_bank.shape[0]
        if size == 0 or desc.shape[0] == 0:
            return
        desc = desc[-size:]
        rows = (int(self.bank_seen) + torch.arange(desc.shape[0], device=desc.device)) % size
        self.descriptor_bank[rows] = desc.to(self.descriptor_bank.dtype)
        self.bank_seen += desc.shape[0]

    def refit_prototypes(self) -> Tensor | None:
        """M×C unit centres of the descriptor bank (``prototypes.refit_method``), or None.

        None: the bank is off or holds fewer than M distinct rows. last.pt and
        best.pt saved at one step share one fit. With ``prototypes.refit_track``
        the fit starts from the previous fit's centres, which it then replaces
        in place (so the checkpoint being written holds them).
        """
        from kp_perception_training.tusk.refit import REFIT_METHODS

        seen, m = int(self.bank_seen), self.encoder.num_prototypes
        if self._refit is not None and self._refit[0] == seen:
            return self._refit[1]
        filled = min(seen, self.descriptor_bank.shape[0])
        centres = None
        bank = self.descriptor_bank[:filled].detach().cpu().double().numpy()
        if filled >= m and len(np.unique(bank, axis=0)) >= m:
            track = self.proto_cfg.refit_track and bool(self.refit_centres_set)
            init = self.refit_centres.detach().cpu().double().numpy() if track else None
            fitted = REFIT_METHODS[self.proto_cfg.refit_method](bank, m, n_init=3, init=init)
            if len(fitted) == m:
                centres = torch.from_numpy(fitted).to(self.encoder.prototypes.dtype)
                self.refit_centres.copy_(centres)
                self.refit_centres_set.fill_(True)
        self._refit = (seen, centres)
        return centres

    def encoder_state_for_use(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """With ``prototypes.refit_bank``: the bank's k-means centres in place of the trained prototypes."""
        centres = self.refit_prototypes()
        if centres is None:
            return state
        return {**state, "prototypes": centres.to(state["prototypes"].device)}

    @torch.no_grad()
    def _restart_unused_prototypes(self, desc: Tensor, opt: torch.optim.Optimizer) -> int | None:
        """Count assignments; every ``restart_every`` batches re-seed the unused prototypes (rank 0's choice)."""
        every = self.proto_cfg.restart_every
        if every <= 0:
            return None
        protos = self.encoder.prototypes
        ids = prototype_distances(desc.unsqueeze(0), self.encoder.normalized_prototypes()).squeeze(0).argmin(dim=1)
        self.prototype_counts += torch.bincount(ids, minlength=protos.shape[0]).to(self.prototype_counts.dtype)
        self.batches_since_restart += 1
        if int(self.batches_since_restart) < every:
            return None
        counts = torch.tensor(all_reduce_sum(self.prototype_counts.tolist(), desc.device), device=desc.device)
        dead = reseed_unused_prototypes(protos.data, desc, counts, self.proto_cfg.restart_below)
        broadcast_(protos.data)
        state = opt.state.get(protos, {})
        for key in ("exp_avg", "exp_avg_sq"):  # a restarted prototype starts with fresh moments
            if key in state:
                state[key][dead] = 0
        self.prototype_counts.zero_()
        self.batches_since_restart.zero_()
        return int(dead.sum())

    # ----------------------------------------------------------------- TensorBoard
    @torch.no_grad()
    def log_images(self, writer: Any, batch: dict[str, Tensor], step: int) -> None:
        """Detections coloured by prototype, reconstructions and (RGBA decoder) alpha-argmax masks."""
        from kp_perception.drawing import draw_detections, palette

        images = batch["image"][:4]
        out = self.encode_and_decode(images)
        protos = self.encoder.normalized_prototypes()
        dist = ((out["descriptors"].unsqueeze(-2) - protos) ** 2).mean(-1)
        ids = dist.argmin(-1)
        h, w = images.shape[-2:]
        rows = []
        for i in range(images.shape[0]):
            frame = (images[i].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            result = detections_to_result(out["keypoints"][i], out["scores"][i], ids[i], dist[i], out["descriptors"][i], self.encoder.num_prototypes, w, h)
            panels = [draw_detections(_upscale(frame), _scaled(result, 4)), _upscale(_to_uint8(out["reconstruction"][i]))]
            if "alpha" in out:
                labels = out["alpha"][i].argmax(0).cpu().numpy()
                colours = palette(out["alpha"].shape[1])
                if getattr(self.decoder, "background", False):  # background layer drawn black
                    colours[0] = 0
                panels.append(_upscale(colours[labels]))
            rows.append(np.concatenate(panels, axis=1))
        writer.add_image("tusk/detections_reconstruction_masks", np.concatenate(rows, axis=0), step, dataformats="HWC")


def _sum_over_ranks(sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Per-prototype descriptor sums and counts summed over ranks (identity without torchrun)."""
    flat = all_reduce_sum(torch.cat([sums.reshape(-1), counts]).tolist(), sums.device)
    flat = torch.tensor(flat, dtype=sums.dtype, device=sums.device)
    return flat[: sums.numel()].reshape(sums.shape), flat[sums.numel() :]


def detections_to_result(keypoints, scores, ids, dist, descriptors, num_prototypes: int, width: int, height: int):
    """One image's encoder outputs (torch, K×…) -> ``PrototypeDetectionResult`` in model pixels."""
    from kp_perception.preprocessing import normalized_to_model_pixels
    from kp_perception.results import PrototypeDetectionResult

    kp = keypoints.detach().cpu().numpy()
    idx = ids.detach().cpu().numpy().astype(np.int32)
    d = dist.detach().cpu().numpy()
    return PrototypeDetectionResult(
        xy=normalized_to_model_pixels(kp, width, height),
        scores=scores.detach().cpu().numpy().astype(np.float32),
        prototypes=idx,
        distances=(d[np.arange(len(idx)), idx] if d.ndim == 2 else d).astype(np.float32),
        descriptors=descriptors.detach().cpu().numpy().astype(np.float32),
        num_prototypes=int(num_prototypes),
        image_width=int(width),
        image_height=int(height),
    )


def _to_uint8(image: Tensor) -> np.ndarray:
    return (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def _upscale(frame: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour enlargement so 35 px images are readable in TensorBoard."""
    return np.ascontiguousarray(frame.repeat(factor, axis=0).repeat(factor, axis=1))


def _scaled(result, factor: int):
    from dataclasses import replace

    return replace(
        result,
        xy=(result.xy + 0.5) * factor - 0.5,
        image_width=result.image_width * factor,
        image_height=result.image_height * factor,
    )
