"""3D accuracy on simulated tabletop episodes: depth deprojection of the annotated pixels, and keypoints in 3D.

Two figures, both through the node's own code path (``image_conversion.depth_to_metres``,
``camera_geometry.CameraModel`` / ``locate_keypoints``, ``depth_sampling.sample_depth``
with the node's default 5-pixel window):

1. **Deprojection** of the ground-truth pixels: each visible annotated point's
   (x, y) is undistorted with the bag's camera_info, given the window median of
   the aligned depth image, deprojected, and compared with the simulator's
   X, Y, Z (camera optical frame). Error = Euclidean distance in mm. Reported
   per point family: ``surface`` points lie on a visible surface (what a depth
   camera measures; the issue's goal, median <= 5 mm at 256 px, is read on
   them), ``interior`` points (object centres, arm link origins, gripper) lie
   inside bodies, so the depth in front of them misses by the body's
   half-thickness; they are listed for completeness, not as a goal.
2. **Keypoints regressed to the annotated 3D points**: the shipped Keypoint
   Pyramids model runs on every frame (the frame resized to its input as in the
   node), its keypoints get 3D points, and a linear map from them to each
   annotated point's X, Y, Z is fitted on a random half of the frames and scored
   on the other half (``kp_perception_training.evaluation.landmarks.landmark_rmse``,
   the landmark protocol of the 2D benchmarks), RMSE of the 3D distance in mm.
   The 3D set has 120 columns (30 points x 3 + 30 validity flags) for ~200 fitted
   frames, so every set is fitted with ridge regression whose strength is chosen
   by 5-fold cross-validation inside the fit half from ``ALPHAS`` (0 included,
   i.e. plain least squares when that is best).
   Side by side, on the same split: from the 2D keypoints (pixels), from 2D + 3D,
   and intercept only (each point's mean position: what keypoints must beat).
   Keypoints without a valid depth enter as 0 with a validity column.

Settings, fixed before looking at the result: 4 held-out episodes x 100 frames
at 256 px, seed 2 (``scripts/train_models.sh`` trains the shipped model on
seed 1 and evaluates it on seed 2), the default scene with
``--surface-points rendered`` (surface points on the rendered mesh, visible
where the depth image sees them; the default scene's frames are unchanged),
depth window 5, split seed 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ALPHAS = (0.0, 0.1, 1.0, 10.0, 100.0, 1000.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="a 'sim tabletop' output folder with depth and X,Y,Z annotations "
                        "(default: simulate one with the settings above into a temporary folder)")
    parser.add_argument("--model", help="exported Keypoint Pyramids .onnx (default: the shipped models/pyramids.onnx)")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--sim-seed", type=int, default=2)
    parser.add_argument("--window", type=int, default=5, help="depth window (the node's depth_window)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit/score split of the frames")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--figure", help="also draw the error distributions to this PNG")


def run(args: argparse.Namespace) -> dict:
    from kp_perception.resources import share_path

    model = Path(args.model) if args.model else share_path("models", "pyramids.onnx")
    if args.data:
        return _bench(Path(args.data), model, args, simulated=None)
    with tempfile.TemporaryDirectory(prefix="bench_kp3d_") as tmp:
        data = Path(tmp) / "sim"
        settings = _simulate(data, args)
        return _bench(data, model, args, simulated=settings)


def _simulate(out: Path, args: argparse.Namespace) -> list[str]:
    import subprocess

    cmd = [sys.executable, "-m", "kp_perception.cli.main", "sim", "tabletop", "--out", str(out),
           "--episodes", str(args.episodes), "--frames", str(args.frames), "--size", str(args.size),
           "--seed", str(args.sim_seed), "--surface-points", "rendered", "--no-instance-ids"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return cmd[3:]


def _bench(data: Path, model: Path, args: argparse.Namespace, simulated: list[str] | None) -> dict:
    from tqdm import tqdm

    from kp_perception.backends import load_backend
    from kp_perception.camera_geometry import CameraModel, deproject, locate_keypoints
    from kp_perception.depth_sampling import sample_depth
    from kp_perception.errors import DataError
    from kp_perception.image_conversion import depth_to_metres, image_to_rgb8
    from kp_perception_training.sim.annotations import group_by_frame, read_annotations

    rows = read_annotations(data / "annotations.csv")
    if not any(a.xyz is not None for a in rows):
        raise DataError(f"{data / 'annotations.csv'}: no X,Y,Z columns (simulate with a current 'sim tabletop')")
    by_frame = group_by_frame(rows)
    names = sorted({a.name for a in rows if a.xyz is not None})
    backend = load_backend(model, expected_kind="pyramids", threads=args.threads)

    errors: dict[str, list[float]] = {"surface": [], "interior": []}
    missing = {"surface": 0, "interior": 0}
    features_3d, features_2d, targets, visible = [], [], [], []
    invalid_keypoints = 0
    bags = sorted(p for p in data.iterdir() if p.is_dir() and (p / "metadata.yaml").exists())
    bar = tqdm(total=sum(1 for _ in bags), desc="bench keypoints_3d", unit="episode", file=sys.stderr)
    for bag in bags:
        for index, image, depth_msg, info in _frames(bag):
            points = by_frame.get((bag.name, index))
            if not points:
                continue
            camera = CameraModel.from_camera_info(info)
            frame = image_to_rgb8(image)
            camera.check_size(frame.shape[1], frame.shape[0])
            depth = depth_to_metres(depth_msg)

            # 1. deprojection of the annotated pixels
            seen = [a for a in points.values() if a.visible and a.xyz is not None]
            if seen:
                xy = np.array([[a.x, a.y] for a in seen])
                z, ok = sample_depth(depth, xy, args.window)
                est = deproject(camera.undistort(xy), z)
                truth = np.array([a.xyz for a in seen])
                err = np.linalg.norm(est - truth, axis=1) * 1e3
                for a, e, good in zip(seen, err, ok, strict=True):
                    family = "surface" if "/surface" in a.name else "interior"
                    if good:
                        errors[family].append(float(e))
                    else:
                        missing[family] += 1

            # 2. the model's keypoints in 3D, as the node computes them
            result = locate_keypoints(backend.infer(frame), camera, depth, args.window)
            valid = result.point_valid
            invalid_keypoints += int((~valid).sum())
            pts = np.where(valid[:, None], result.points, 0.0)
            features_3d.append(np.concatenate([pts.reshape(-1), valid.astype(np.float64)]))
            features_2d.append(np.asarray(result.xy, np.float64).reshape(-1))
            targets.append([points[n].xyz if n in points and points[n].xyz else (0.0, 0.0, 0.0) for n in names])
            visible.append([n in points and points[n].visible and points[n].xyz is not None for n in names])
        bar.update()
    bar.close()
    if len(targets) < 4:
        raise DataError(f"{data}: only {len(targets)} annotated frames with depth; need at least 4")

    out: dict = {
        "data": str(data) if simulated is None else "simulated: kp-perception " + " ".join(simulated),
        "model": str(model),
        "model_input": [backend.sidecar.input_width, backend.sidecar.input_height],
        "depth_window": args.window,
        "frames": len(targets),
        "deprojection_mm": {family: _stats(errors[family], missing[family]) for family in errors},
    }
    out["deprojection_mm"]["all"] = _stats(errors["surface"] + errors["interior"],
                                           missing["surface"] + missing["interior"])
    out["regression"] = _regression(np.array(features_3d), np.array(features_2d), np.array(targets),
                                    np.array(visible, dtype=bool), args.seed)
    out["regression"]["keypoints_without_depth_fraction"] = invalid_keypoints / max(
        len(targets) * len(backend.sidecar.parents), 1)
    frame_size = int(np.sqrt(np.prod(frame.shape[:2])))
    surface = out["deprojection_mm"]["surface"]
    out["goals"] = {
        "frame_size_px": frame_size,
        "deprojection_median_le_5mm_surface_points": bool(surface["n"] and surface["median"] <= 5.0),
    }
    if args.figure:
        _figure(errors, Path(args.figure), frame_size, args.window)
        out["figure"] = args.figure
    return out


def _frames(bag: Path):
    """(index, Image, depth Image, CameraInfo) for each colour frame of a simulated bag, matched by stamp."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from kp_perception.errors import DataError
    from kp_perception.stamp_matching import stamp_to_ns

    topics = ("/camera/image_raw", "/camera/depth/image_raw", "/camera/camera_info")
    found: dict[str, dict[int, object]] = {t: {} for t in topics}
    order: list[int] = []
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        conns = [c for c in reader.connections if c.topic in topics]
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = stamp_to_ns(msg.header)
            found[conn.topic][stamp] = msg
            if conn.topic == topics[0]:
                order.append(stamp)
    for topic in topics[1:]:
        if not found[topic]:
            raise DataError(f"{bag}: no {topic} (simulate without --no-depth)")
    for index, stamp in enumerate(order):
        if stamp in found[topics[1]] and stamp in found[topics[2]]:
            yield index, found[topics[0]][stamp], found[topics[1]][stamp], found[topics[2]][stamp]


def _stats(values: list[float], missing: int) -> dict:
    v = np.asarray(values, dtype=np.float64)
    total = len(v) + missing
    if not len(v):
        return {"n": 0, "without_depth": missing}
    return {
        "n": int(len(v)),
        "without_depth": int(missing),
        "valid_fraction": len(v) / total,
        "median": float(np.median(v)),
        "p90": float(np.percentile(v, 90)),
        "mean": float(v.mean()),
    }


def _regression(f3d: np.ndarray, f2d: np.ndarray, targets: np.ndarray, visible: np.ndarray, seed: int) -> dict:
    from kp_perception_training.evaluation.landmarks import landmark_rmse

    order = np.random.default_rng(seed).permutation(len(targets))
    fit, test = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    sets = {
        "keypoints_3d": f3d,
        "keypoints_2d_px": f2d,
        "keypoints_2d_and_3d": np.concatenate([f2d, f3d], axis=1),
        "intercept_only": np.zeros((len(targets), 0)),
    }
    rmse = {name: 1e3 * landmark_rmse(x, targets, visible, fit, test, alphas=ALPHAS) for name, x in sets.items()}
    return {"rmse_mm": rmse, "ridge_alphas": list(ALPHAS), "fit_frames": len(fit), "test_frames": len(test),
            "annotated_points": int(visible.shape[1]), "visible_fraction": float(visible.mean()), "split_seed": seed}


def _figure(errors: dict[str, list[float]], path: Path, size: int, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for family, values in errors.items():
        v = np.sort(values)
        if len(v):
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=f"{family} points (n={len(v)})")
    ax.axvline(5.0, color="grey", linestyle="--", linewidth=1, label="5 mm")
    ax.set_xscale("log")
    ax.set_xlabel("deprojection error (mm)")
    ax.set_ylabel("fraction of points")
    ax.set_title(f"Annotated pixels deprojected with the node's depth sampling ({size} px, {window}x{window})",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
