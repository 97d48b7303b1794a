"""Landmark regression (Table 1 of Keypoint Pyramids) for pyramids, keynet and transporter checkpoints.

Protocol:
- Run the encoder on every annotated frame (at the training resolution, through the
  frame cache) and map its keypoints to ORIGINAL-frame pixels with the one
  coordinate mapping (kp_perception.preprocessing), so errors are in the
  annotations' pixels.
- Split the annotated frames in two halves with a permutation fixed by ``seed``;
  fit, per annotated landmark, a least-squares linear map (with intercept) from
  the flattened keypoint coordinates of a set (level l, or all levels = flattened)
  to the landmark's (x, y) on the first half; score on the second half.
- Visibility-aware: a landmark is fitted only on frames where it is visible
  and scored only where it is visible; invisible points are left out.
- RMSE = sqrt(mean over scored (frame, landmark) of the squared Euclidean error), in pixels.
- Beside least squares (``rmse_px``, the paper's protocol) the same split is scored with ridge
  regression on standardised columns (``rmse_px_ridge``; strength by 5-fold CV inside the fit
  half from the fixed ``RIDGE_ALPHAS``), the same for every method and level: it shows whether a
  larger keypoint set (flattened) gains or loses only through regression overfitting.
- The keypoints of every annotated frame are written to ``landmark_keypoints.npz`` beside the
  JSON, so placement analyses (e.g. against the simulator's instance-id masks) need no re-run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kp_perception.errors import DataError, ModelLoadError
from kp_perception_training.evaluation.landmarks import RIDGE_ALPHAS, landmark_errors, pooled_rmse

if TYPE_CHECKING:
    from kp_perception_training.sim.annotations import Annotation


def _onnx_keypoints(checkpoint: dict, onnx: str | Path, caches, keys, width: int, height: int):
    """The same keypoints from an exported model of the checkpoint (float32 or int8), run by onnxruntime on CPU."""
    from kp_perception.backends import load_backend
    from kp_perception.preprocessing import model_to_frame_pixels
    from kp_perception.sidecar import config_sha256

    backend = load_backend(onnx, backend="onnxruntime", providers=["CPUExecutionProvider"], expected_kind="pyramids")
    side = backend.sidecar
    if side.config_sha256 and side.config_sha256 != config_sha256(checkpoint["config"]):
        raise ModelLoadError(f"{onnx}: exported from another config than this run's checkpoint (config_sha256 differs)")
    if (side.input_width, side.input_height) != (width, height):
        raise ModelLoadError(f"{onnx}: model input {side.input_width}x{side.input_height}, the run trained at "
                             f"{width}x{height}; export it at the training size")
    out: dict[tuple[str, int], np.ndarray] = {}
    for seq, frames in caches:
        frame_size = seq.frame_size
        for i in sorted(f for s, f in keys if s == seq.name and 0 <= f < len(frames)):
            kp = backend.run(np.ascontiguousarray(frames[i])[None])["keypoints"][0]  # model-input pixels
            out[(seq.name, i)] = model_to_frame_pixels(kp, (width, height), frame_size)
    return out, side


def _keypoints_in_frames(checkpoint: dict, data_paths: list[str], keys: set[tuple[str, int]], batch: int = 32,
                         onnx: str | Path | None = None):
    """Encoder keypoints (frame pixels) for every annotated (sequence, frame): dict key -> N×2.

    Returns the keypoints and the level sizes. With ``onnx``, an exported model of this checkpoint
    (``kp-perception export``, also ``--int8``) computes them instead of the torch encoder.
    """
    import torch

    from kp_perception.models import build_encoder
    from kp_perception.preprocessing import model_to_frame_pixels, normalized_to_model_pixels
    from kp_perception_training.config import checkpoint_config
    from kp_perception_training.data.datasets import load_cached_sequences, to_tensor

    config = checkpoint_config(checkpoint)
    width, height = config.data.size_wh
    if onnx is not None:
        caches = load_cached_sequences(
            data_paths, (width, height), image_topic=config.data.image_topic, cache_dir=config.data.cache_dir
        )
        out, side = _onnx_keypoints(checkpoint, onnx, caches, keys, width, height)
        return out, tuple(side.level_sizes), side.precision
    encoder = build_encoder(checkpoint["kind"], config.model)
    try:
        encoder.load_state_dict(checkpoint["encoder"])
    except RuntimeError as exc:  # weights from another version of the model or config
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise ModelLoadError(
            f"{checkpoint['kind']} checkpoint: the encoder weights do not fit its config's model section "
            f"({lines[-1] if lines else 'state dict mismatch'})"
        ) from None
    encoder.eval()
    caches = load_cached_sequences(
        data_paths, (width, height), image_topic=config.data.image_topic, cache_dir=config.data.cache_dir
    )
    out: dict[tuple[str, int], np.ndarray] = {}
    with torch.no_grad():
        for seq, frames in caches:
            wanted = sorted(f for s, f in keys if s == seq.name and 0 <= f < len(frames))
            frame_size = seq.frame_size
            for start in range(0, len(wanted), batch):
                idx = wanted[start : start + batch]
                images = torch.stack([to_tensor(frames[i]) for i in idx])
                kps = encoder.infer(images)["keypoints"].numpy()
                for i, kp in zip(idx, kps, strict=True):
                    px = normalized_to_model_pixels(kp, width, height)
                    out[(seq.name, i)] = model_to_frame_pixels(px, (width, height), frame_size)
    return out, tuple(encoder.level_sizes), "fp32 (torch)"


def landmark_targets(rows: list, frames: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """F×P×2 annotated pixels and F×P visibility for ``frames`` (sorted landmark names as P)."""
    names = sorted({a.name for a in rows})
    index = {k: i for i, k in enumerate(frames)}
    name_index = {n: j for j, n in enumerate(names)}
    targets = np.zeros((len(frames), len(names), 2))
    visible = np.zeros((len(frames), len(names)), dtype=bool)
    for a in rows:
        i = index.get((a.sequence, a.frame))
        if i is not None:
            targets[i, name_index[a.name]] = (a.x, a.y)
            visible[i, name_index[a.name]] = a.visible
    return targets, visible


def split_halves(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fit and scored halves of the annotated frames (a permutation fixed by ``seed``)."""
    order = np.random.default_rng(seed).permutation(frames)
    return np.sort(order[: frames // 2]), np.sort(order[frames // 2 :])


def split_episode_halves(frames: list[tuple[str, int]], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of the fit and scored halves of the *sequences* (episodes), by :func:`split_halves`.

    Why: objects sit still within an episode, so with frame halves a fit can place an object landmark by
    recognising the episode rather than the object. With episode halves no scored frame's episode was
    fitted on, which asks whether the keypoints locate the landmark in an episode never seen.
    """
    names = sorted({s for s, _ in frames})
    fit_names = {names[i] for i in split_halves(len(names), seed)[0]}
    in_fit = np.array([s in fit_names for s, _ in frames], dtype=bool)
    return np.flatnonzero(in_fit), np.flatnonzero(~in_fit)


LANDMARK_GROUPS = ("robot", "objects")


def landmark_groups(names: list[str]) -> dict[str, np.ndarray]:
    """P-bool membership of the sorted landmark ``names`` in each group that has members.

    ``objects``: ``<object>/<point>`` names (:func:`object_of`); ``robot``: the rest, i.e. the
    simulator's ``arm/<link>`` and ``gripper`` (for a user's CSV, every name not of the object form).
    Objects sit still within an episode unless pushed and change place between episodes, while the
    robot moves in every frame, so the two groups ask different things of the keypoints.
    """
    from kp_perception_training.sim.annotations import object_of

    is_object = np.array([object_of(n) is not None for n in names], dtype=bool)
    groups = dict(zip(LANDMARK_GROUPS, (~is_object, is_object), strict=True))
    return {g: m for g, m in groups.items() if m.any()}


def landmark_scores(
    coords: np.ndarray, sizes: Sequence[int], rows: Sequence[Annotation], frames: list[tuple[str, int]], seed: int,
    ridge: bool = True, by_episode: bool = False,
) -> dict[str, Any]:
    """Landmark regression of every keypoint set (each level, flattened), JSON-able.

    Args:
        coords: F×N×2 keypoints in frame pixels, levels concatenated in ``sizes`` order.
        rows: the annotations; frames: the F (sequence, frame) keys of ``coords``.
        seed: fixes the fit / scored halves (:func:`split_halves`).
        ridge: also the CV ridge fit (slow: seconds per set).
        by_episode: fit and score on halves of the episodes (:func:`split_episode_halves`), not of the frames.

    Returns ``rmse_px`` (least squares) and ``rmse_px_ridge`` per set, the intercept-only reference,
    and, when the landmarks span both :func:`landmark_groups`, the same figures per group from the same
    fits (``..._by_group``).
    """
    names = sorted({a.name for a in rows})
    targets, visible = landmark_targets(rows, frames)
    fit_rows, test_rows = split_episode_halves(frames, seed) if by_episode else split_halves(len(frames), seed)
    sets: dict[str, np.ndarray] = {}
    offset = 0
    for level, n in enumerate(sizes):
        sets[f"level_{level + 1}"] = coords[:, offset : offset + n].reshape(len(frames), -1)
        offset += n
    sets["flattened"] = coords.reshape(len(frames), -1)
    groups = landmark_groups(names)
    split = len(groups) > 1

    def score(x: np.ndarray, alphas: tuple[float, ...]) -> tuple[float, dict[str, float]]:
        errors = landmark_errors(x, targets, visible, fit_rows, test_rows, alphas)
        by_group = {g: pooled_rmse(*errors, m) for g, m in groups.items() if errors[1][m].sum()} if split else {}
        return pooled_rmse(*errors), by_group

    fits = {"rmse_px": (0.0,), **({"rmse_px_ridge": RIDGE_ALPHAS} if ridge else {})}
    out: dict[str, Any] = {}
    for key, alphas in fits.items():
        scored = {name: score(x, alphas) for name, x in sets.items()}
        out[key] = {name: s[0] for name, s in scored.items()}
        if split:
            out[f"{key}_by_group"] = {g: {name: s[1][g] for name, s in scored.items() if g in s[1]} for g in groups}
    # Reference: intercept only (each landmark's mean position); keypoints must beat it to carry information.
    total, by_group = score(np.zeros((len(frames), 0)), (0.0,))
    out["rmse_px_intercept_only"] = total
    if split:
        out["rmse_px_intercept_only_by_group"] = by_group
    if ridge:
        out["ridge_alphas"] = list(RIDGE_ALPHAS)
    out.update(fit_frames=len(fit_rows), test_frames=len(test_rows), visible_fraction=float(visible.mean()))
    return out


def evaluate(
    checkpoint: dict, data_paths: list[str], annotations: str | None, out_dir: Path | None, seed: int = 0,
    onnx: str | Path | None = None,
) -> dict[str, Any]:
    """Landmark regression RMSE per level and flattened (JSON-able); writes ``landmarks.png`` into out_dir.

    ``onnx``: score an exported model of this checkpoint (float32 or int8) instead of the torch encoder.
    """
    from kp_perception_training.sim.annotations import read_annotations

    if annotations is None:
        raise DataError("landmark evaluation needs --annotations CSV (sequence,frame,name,x,y[,visible])")
    rows = read_annotations(annotations)
    if not rows:
        raise DataError(f"{annotations}: no annotations")
    names = sorted({a.name for a in rows})
    keys = {(a.sequence, a.frame) for a in rows}
    keypoints, sizes, precision = _keypoints_in_frames(checkpoint, data_paths, keys, onnx=onnx)
    frames = sorted(keypoints)
    if len(frames) < 4:
        raise DataError(
            f"{annotations}: only {len(frames)} annotated frames found in the given data "
            "(sequence names must match the bag/video/folder stems)"
        )
    coords = np.stack([keypoints[k] for k in frames])  # F×N×2
    scores = landmark_scores(coords, sizes, rows, frames, seed)
    motion = coords.std(axis=0).mean(axis=1)  # N, pixels: how much each keypoint moves over the frames
    bounds = np.cumsum((0, *sizes))
    metrics = {
        "kind": checkpoint["kind"],
        # Collapse diagnostics: keypoints that never move, and distinct positions among the mean locations.
        "keypoint_motion_px": float(motion.mean()),
        "keypoint_motion_px_per_level": {
            f"level_{level + 1}": float(motion[bounds[level] : bounds[level + 1]].mean()) for level in range(len(sizes))
        },
        "static_keypoints": int((motion < 0.5).sum()),
        "level_sizes": list(sizes),
        **scores,
        "frames": len(frames),
        "landmarks": len(names),
        "seed": seed,
        "model": str(onnx) if onnx is not None else "checkpoint (torch)",
        "precision": precision,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _plot(scores["rmse_px"], checkpoint["kind"], out_dir / "landmarks.png")
        (out_dir / "landmarks.json").write_text(json.dumps(metrics, indent=2))
        np.savez_compressed(
            out_dir / "landmark_keypoints.npz", keypoints_px=coords,
            sequences=np.array([s for s, _ in frames]), frames=np.array([f for _, f in frames]),
            level_sizes=np.array(sizes),
        )
        metrics["plot"] = str(out_dir / "landmarks.png")
    return metrics


def _plot(rmse: dict[str, float], kind: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(list(rmse), list(rmse.values()), color="tab:blue")
    ax.set_ylabel("landmark RMSE (px)")
    ax.set_title(f"{kind}: linear regression to annotations")
    for i, v in enumerate(rmse.values()):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
