"""``kp-perception eval`` for TUSK checkpoints: object discovery, attributes, detection, purity.

What is measured depends on the data (several paths may be given; each is reported under its stem):

- Multi-object folders (images/, masks/, objects.csv; ``sim tetrominoes``, ``sim mnist-hard``):
  * foreground ARI, masks = argmax of the RGBA decoder's alpha maps (the
    decoder comes from ``checkpoint["training"]``: its ``averaged_method`` when the
    run kept a weight average, as ``encoder`` then holds, else ``method``); without that
    decoder (e.g. a bare exported encoder) each pixel goes to its nearest
    keypoint instead, and ``mask_source`` says so;
  * shape and colour accuracy: kept keypoints (score >= ``score_threshold``) are
    matched to objects (Hungarian on centre distance, within ``match_radius`` of
    the image size), each prototype takes the value it best represents;
  * prototype purity against object identity (shape + colour);
  * ``descriptor_probe``: the same attributes read from the matched descriptors
    without the learned prototypes (a nearest-centroid probe, and k-means
    centres in their place; ``training/evaluation/descriptor_probe.py``), to
    tell an encoder that has not learned an attribute from prototypes that
    have not caught up with it;
  * when every shape is a digit (MNIST-hard): localisation / precision with a
    20×20 box at IoU >= 0.5, and classification by Hungarian prototype -> digit.
- Bags/videos/folders with ``--annotations`` (``sim tabletop``): purity,
  inverse purity and per-type purity of the prototype assignments against the
  object types, prototypes in use, and detection recall; annotation rows are
  grouped into objects by ``<object>/<point>`` names (``arm/...`` and
  ``gripper`` left out, a CSV without such names refused); each kept keypoint
  is matched to the nearest visible object point within ``match_radius``;
  and landmark regression: the
  reference's M×K×2 prototype-slot input (sorted by x inside a slot, zeros
  where unused) fitted by ridge regression (strength by cross-validation inside
  the fit half; ``kp_perception_training.evaluation.landmarks`` says why not plain least
  squares) on one seeded half of the annotated frames and scored on the other,
  RMSE in original-frame pixels, with the intercept-only RMSE beside it.

Coordinates are compared in the stored images' pixels (the objects.csv frame).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kp_perception.errors import DataError, ModelLoadError
from kp_perception.preprocessing import model_to_frame_pixels, normalized_to_model_pixels
from kp_perception_training.evaluation.ari import foreground_ari
from kp_perception_training.evaluation.attributes import attribute_accuracy, match_points
from kp_perception_training.evaluation.descriptor_probe import shape_colour_probe
from kp_perception_training.evaluation.detection import detection_metrics
from kp_perception_training.evaluation.landmarks import RIDGE_ALPHAS, landmark_rmse
from kp_perception_training.evaluation.purity import inverse_purity, purity, purity_by_identity
from kp_perception_training.tusk.method import TuskMethod


def load_method(checkpoint: dict) -> tuple[TuskMethod, bool]:
    """TuskMethod with the checkpoint's weights; second value: whether the decoder was restored."""
    from kp_perception_training.config import checkpoint_config

    method = TuskMethod(checkpoint_config(checkpoint))
    training = checkpoint.get("training") or {}
    state = training.get("averaged_method") or training.get("method")  # the decoder that matches ``encoder``
    has_decoder = False
    try:
        method.encoder.load_state_dict(checkpoint["encoder"])
        if isinstance(state, dict):
            dec = {k[len("decoder.") :]: v for k, v in state.items() if k.startswith("decoder.")}
            if dec:
                method.decoder.load_state_dict(dec)
                has_decoder = True
    except RuntimeError as exc:  # weights from another version of the model or config
        first = str(exc).strip().splitlines()
        raise ModelLoadError(
            f"TUSK checkpoint does not fit its own config ({first[-1].strip() if first else 'state dict mismatch'})"
        ) from None
    return method.eval(), has_decoder


@torch.no_grad()
def predict(method: TuskMethod, images: torch.Tensor, use_decoder: bool) -> dict[str, np.ndarray]:
    """Encoder (+ decoder) on B×3×H×W -> numpy keypoints (model px), scores, prototypes, masks B×H×W."""
    out = method.encoder.infer(images)
    h, w = images.shape[-2:]
    kp = out["keypoints"]
    if use_decoder and method.decoder_kind == "rgba":
        dec = method.decoder(kp, out["scores"], out["descriptors"], (h, w))
        masks = dec["alpha"].argmax(1)  # the layer that owns each pixel
    else:  # nearest keypoint (a Voronoi split): what is left without the decoder
        from kp_perception_training.tusk.decoders import pixel_grid

        grid = pixel_grid(h, w, kp.device, kp.dtype)
        d = (grid[None, None] - kp[:, :, None, None, :]).pow(2).sum(-1)
        masks = d.argmin(1) + 1
    xy = np.stack([normalized_to_model_pixels(k, w, h) for k in kp.cpu().numpy()])
    return {
        "xy": xy,
        "scores": out["scores"].cpu().numpy(),
        "prototypes": out["prototype_ids"].cpu().numpy(),
        "descriptors": out["descriptors"].cpu().numpy(),
        "masks": masks.cpu().numpy(),
    }


def evaluate_multi_object(
    method: TuskMethod,
    folder: Path,
    use_decoder: bool,
    score_threshold: float = 0.5,
    match_radius: float = 0.25,
    batch_size: int = 32,
    max_images: int | None = None,
) -> dict:
    """Metrics on one multi-object folder (see module docstring)."""
    from tqdm import tqdm

    from kp_perception_training.data.multi_object import MultiObjectDataset

    width, height = method.config.data.size_wh
    model_ds = MultiObjectDataset(folder, size=(width, height))
    native_ds = MultiObjectDataset(folder, size=None)
    n = len(model_ds) if max_images is None else min(len(model_ds), int(max_images))
    aris: list[float] = []
    obj_protos: list[int | None] = []
    matched_desc: list[np.ndarray] = []  # descriptor of each matched object, for the probe
    shapes: list[str] = []
    colours: list[str] = []
    det_items: list[dict] = []
    digits = True
    for start in tqdm(range(0, n, batch_size), desc=f"eval {folder.name}", unit="batch", leave=False):
        idx = list(range(start, min(n, start + batch_size)))
        images = torch.stack([model_ds[i]["image"] for i in idx])
        pred = predict(method, images, use_decoder)
        for j, i in enumerate(idx):
            native = native_ds[i]
            nh, nw = native["mask"].shape
            masks = pred["masks"][j]
            if (nh, nw) != masks.shape:
                import cv2

                masks = cv2.resize(masks.astype(np.int32), (nw, nh), interpolation=cv2.INTER_NEAREST)
            aris.append(foreground_ari(native["mask"].numpy(), masks))
            xy = model_to_frame_pixels(pred["xy"][j], (width, height), (nw, nh))
            keep = pred["scores"][j] >= score_threshold
            objs = model_ds.objects[i]
            true_xy = np.array([[o.x, o.y] for o in objs], dtype=np.float64).reshape(-1, 2)
            kept = np.flatnonzero(keep)
            pairs = dict(
                (t, int(kept[p])) for p, t in match_points(xy[kept], true_xy, match_radius * max(nw, nh))
            )
            for t, o in enumerate(objs):
                obj_protos.append(int(pred["prototypes"][j][pairs[t]]) if t in pairs else None)
                if t in pairs:
                    matched_desc.append(pred["descriptors"][j][pairs[t]])
                shapes.append(str(o.shape))
                colours.append(str(o.color))
                digits = digits and str(o.shape).isdigit()
            det_items.append(
                {
                    "xy": xy,
                    "scores": pred["scores"][j],
                    "prototypes": pred["prototypes"][j],
                    "true_xy": true_xy,
                    "labels": np.array([int(o.shape) if str(o.shape).isdigit() else -1 for o in objs]),
                }
            )
    matched = [(p, f"{s}/{c}") for p, s, c in zip(obj_protos, shapes, colours, strict=True) if p is not None]
    result = {
        "images": n,
        "objects": len(shapes),
        "mask_source": "alpha" if use_decoder and method.decoder_kind == "rgba" else "nearest_keypoint",
        "foreground_ari": float(np.nanmean(aris)) if aris else float("nan"),
        "shape_accuracy": attribute_accuracy(obj_protos, shapes),
        "colour_accuracy": attribute_accuracy(obj_protos, colours),
        "objects_matched": len(matched) / max(len(shapes), 1),
        "purity": purity([p for p, _ in matched], [i for _, i in matched]),
        "inverse_purity": inverse_purity([p for p, _ in matched], [i for _, i in matched]),
        "prototypes_used": len({p for p, _ in matched}),
        "score_threshold": score_threshold,
    }
    if matched_desc:
        result["descriptor_probe"] = shape_colour_probe(
            np.stack(matched_desc),
            [s for p, s in zip(obj_protos, shapes, strict=True) if p is not None],
            [c for p, c in zip(obj_protos, colours, strict=True) if p is not None],
            method.encoder.num_prototypes,
        )
    if digits and shapes:
        result["detection"] = detection_metrics(det_items, score_threshold=score_threshold)
    return result


def evaluate_tabletop(
    method: TuskMethod,
    data_paths: list[str],
    annotations: str,
    score_threshold: float = 0.5,
    match_radius: float = 0.08,
    seed: int = 0,
) -> dict:
    """Prototype purity, detection recall and landmark regression on annotated video (``sim tabletop``).

    Annotation rows are grouped into objects by their ``<object>/<point>`` names
    (``arm/...`` and ``gripper`` left out; a CSV with no such name is refused,
    ``kp_perception_training.sim.annotations.object_points``); an object's type
    is its name without an instance suffix (``duck_2`` -> ``duck``). Each kept
    keypoint is matched to the nearest visible object point within
    ``match_radius`` × the larger frame side; purity and inverse purity are of
    the matched prototypes against the object types. Recall: the share of
    visible objects (one visible point or more) with a kept keypoint within
    the radius of one of their visible points.
    """
    from tqdm import tqdm

    from kp_perception.preprocessing import resize_rgb
    from kp_perception.sequences import open_sequences
    from kp_perception_training.sim.annotations import object_points, read_annotations
    from kp_perception_training.sim.catalogue import object_type

    width, height = method.config.data.size_wh
    rows = read_annotations(annotations)
    objects = object_points(rows, annotations)
    names = sorted({a.name for a in rows})
    name_index = {n: j for j, n in enumerate(names)}
    targets: dict[tuple[str, int], np.ndarray] = {}
    for a in rows:
        row = targets.setdefault((a.sequence, int(a.frame)), np.full((len(names), 3), np.nan))
        row[name_index[a.name]] = (a.x, a.y, 1.0 if a.visible else 0.0)
    protos: list[int] = []
    types: list[str] = []
    visible_types: list[str] = []  # one entry per visible object per frame
    recalled: list[bool] = []
    slot_features: list[np.ndarray] = []
    slot_targets: list[np.ndarray] = []
    frames = 0
    for seq in open_sequences(data_paths, image_topic=method.config.data.image_topic):
        for f, frame in enumerate(tqdm(seq.iter_frames(), desc=f"eval {seq.name}", unit="frame", leave=False)):
            truth = objects.get((seq.name, f))
            if truth is None:
                continue
            fh, fw = frame.shape[:2]
            radius = match_radius * max(fw, fh)
            image = torch.from_numpy(resize_rgb(frame, width, height)).permute(2, 0, 1).float().div(255)
            pred = predict(method, image[None], use_decoder=False)
            xy = model_to_frame_pixels(pred["xy"][0], (width, height), (fw, fh))
            kept = xy[pred["scores"][0] >= score_threshold]
            kept_ids = pred["prototypes"][0][pred["scores"][0] >= score_threshold]
            matches, seen = match_to_objects(kept, kept_ids, truth, radius)
            protos += [p for p, _ in matches]
            types += [object_type(o) for _, o in matches]
            visible_types += [object_type(o) for o, _ in seen]
            recalled += [r for _, r in seen]
            slot_features.append(prototype_slots(xy, pred["prototypes"][0], method.encoder.num_prototypes))
            slot_targets.append(targets[(seq.name, f)])
            frames += 1
    if frames == 0:
        raise DataError(f"{annotations}: no annotated frame matches the data's sequences")
    landmarks = _landmark_regression(np.stack(slot_features), np.stack(slot_targets), seed) if frames >= 4 else None
    by_type = {t: [r for r, u in zip(recalled, visible_types, strict=True) if u == t] for t in set(visible_types)}
    return {
        "frames": frames,
        **(landmarks or {"landmark_rmse_px": None, "landmark_rmse_intercept_only_px": None}),
        "detections_matched": len(protos),
        "purity": purity(protos, types),
        "inverse_purity": inverse_purity(protos, types),
        "purity_by_type": purity_by_identity(protos, types),
        "prototypes_used": len(set(protos)),
        "visible_objects": len(recalled),
        "detection_recall": float(np.mean(recalled)) if recalled else float("nan"),
        "recall_by_type": {t: float(np.mean(v)) for t, v in sorted(by_type.items())},
        "identities": sorted(set(types)),
        "match_radius": match_radius,
        "score_threshold": score_threshold,
    }


def match_to_objects(
    xy: np.ndarray, prototypes: np.ndarray, objects: dict[str, list[tuple[float, float]]], radius: float
) -> tuple[list[tuple[int, str]], list[tuple[str, bool]]]:
    """One frame: kept detections against the visible points of each object.

    Args:
        xy: K×2 kept detections (frame pixels); prototypes: their K prototype ids.
        objects: object name -> its visible points (pixels); objects with none are not visible.
        radius: match radius in pixels.
    Returns:
        (prototype id, object) for each detection within ``radius`` of an object point (the
        nearest point's object), and (object, recalled) for each visible object: recalled when
        a detection lies within ``radius`` of one of its points.
    """
    owners = [o for o, pts in objects.items() for _ in pts]
    if not owners:
        return [], []
    true_xy = np.asarray([p for pts in objects.values() for p in pts], dtype=np.float64)
    d = np.linalg.norm(np.asarray(xy, dtype=np.float64).reshape(-1, 1, 2) - true_xy[None], axis=-1)
    matches = [(int(prototypes[k]), owners[int(d[k].argmin())]) for k in range(len(d)) if d[k].min() <= radius]
    owner_arr = np.asarray(owners)
    seen = [(o, bool((d[:, owner_arr == o] <= radius).any())) for o, pts in objects.items() if pts]
    return matches, seen


def prototype_slots(xy: np.ndarray, prototypes: np.ndarray, num_prototypes: int) -> np.ndarray:
    """The reference's landmark-regression input: M×K×2 flattened, keypoints in their prototype's slot.

    Inside a slot keypoints are sorted by x; unused places are zeros. xy: K×2 pixels.
    """
    k = len(xy)
    slots = np.zeros((num_prototypes, k, 2), dtype=np.float64)
    for m in range(num_prototypes):
        members = xy[np.asarray(prototypes) == m]
        members = members[np.argsort(members[:, 0])] if len(members) else members
        slots[m, : len(members)] = members
    return slots.reshape(-1)


def _landmark_regression(features: np.ndarray, targets: np.ndarray, seed: int) -> dict[str, float] | None:
    """RMSE (px) from prototype slots to annotated points (CV ridge), and the intercept-only RMSE beside it."""
    visible = ~np.isnan(targets[..., 0]) & (np.nan_to_num(targets[..., 2]) > 0)
    order = np.random.default_rng(seed).permutation(len(features))
    half = len(order) // 2
    xy = np.nan_to_num(targets[..., :2])
    try:
        return {
            "landmark_rmse_px": landmark_rmse(features, xy, visible, order[:half], order[half:], RIDGE_ALPHAS),
            "landmark_rmse_intercept_only_px": landmark_rmse(
                features[:, :0], xy, visible, order[:half], order[half:]
            ),
        }
    except DataError:
        return None


def evaluate(
    checkpoint: dict,
    data_paths: list[str],
    annotations: str | None,
    out_dir: Path | None,
    seed: int = 0,
    score_threshold: float = 0.5,
    max_images: int | None = None,
) -> dict:
    """Evaluate a TUSK checkpoint on each data path (contract B); JSON-able dict."""
    torch.manual_seed(seed)
    method, has_decoder = load_method(checkpoint)
    results: dict = {"kind": "tusk"}
    frame_sources = []
    for p in data_paths:
        path = Path(p)
        if (path / "images").is_dir() and (path / "masks").is_dir():
            results[path.name] = evaluate_multi_object(
                method, path, has_decoder, score_threshold=score_threshold, max_images=max_images
            )
        else:
            frame_sources.append(p)
    if frame_sources:
        if annotations is None:
            raise DataError(f"{frame_sources[0]}: TUSK evaluation on video needs --annotations (object identities)")
        results["tabletop"] = evaluate_tabletop(
            method, frame_sources, annotations, score_threshold=score_threshold, seed=seed
        )
    return results
