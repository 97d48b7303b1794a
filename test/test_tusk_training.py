"""TUSK training: a short run on a tiny two-kind scene learns and its keypoints find the objects.

The scene: 24×24 black images with two objects, each either a red square or a
blue cross (kinds drawn at random), never overlapping. The run calls the
method directly with its own optimisers (the trainer's loop is tested in
test_trainer.py); a last test goes through the real ``kp-perception train``
and ``eval`` CLI on a tiny simulated Tetrominoes folder.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kp_perception.checkpoint import load_checkpoint
from kp_perception_training.config import build_config
from kp_perception_training.evaluation.attributes import match_points
from kp_perception_training.evaluation.purity import purity
from kp_perception_training.tusk.method import TuskMethod
from kp_perception_training.tusk.refit import whitened_refit

SIZE = 24
COLOURS = np.array([[1.0, 0.2, 0.2], [0.2, 0.4, 1.0]], dtype=np.float32)


def make_scene(rng: np.random.Generator, count: int = 2):
    image = np.zeros((3, SIZE, SIZE), np.float32)
    taken = np.zeros((SIZE, SIZE), bool)
    centres, kinds = [], []
    while len(kinds) < count:
        kind = int(rng.integers(2))
        x, y = (int(v) for v in rng.integers(1, SIZE - 8, size=2))
        m = np.zeros((SIZE, SIZE), bool)
        if kind == 0:
            m[y + 1 : y + 6, x + 1 : x + 6] = True
        else:
            m[y : y + 7, x + 3 : x + 4] = True
            m[y + 3 : y + 4, x : x + 7] = True
        if (m & taken).any():
            continue
        grown = np.zeros_like(m)
        grown[max(y - 2, 0) : y + 9, max(x - 2, 0) : x + 9] = True
        taken |= grown
        image[:, m] = COLOURS[kind][:, None]
        centres.append((x + 3.0, y + 3.0))
        kinds.append(kind)
    return image, centres, kinds


# Sprites of 9 px (objects are 5-7 px) and no feature equivariance, as in the Tetrominoes preset.
# Measured over seeds 0-3: median keypoint error 0.1-1.5 px and purity 0.97-1.0 in 4 of 4
# (U-Net width 8, 13 px sprites or F-equivariance 10: keypoints found the objects in at most 2 of 4).
CONFIG = {
    "model": {"num_keypoints": 2, "num_prototypes": 4, "nms_window": 13, "width": 16, "descriptor_dim": 8},
    "data": {"image_size": SIZE},
    "decoder": {"kind": "rgba", "rgba": {"hidden": 64, "sprite_px": 9}},
    "loss": {"equivariance_features": 0.0},
    "optim": {"lr": 3e-3},
    "prototypes": {"steps": 4},
}


@pytest.mark.timeout(900)  # ~40 CPU-s; generous: a shared CPU gave it 10 % of a core
def test_short_run_learns_keypoints_find_the_objects_and_prototypes_separate_the_kinds():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    scenes = [make_scene(rng) for _ in range(160)]
    images = torch.tensor(np.stack([s[0] for s in scenes]))
    method = TuskMethod(build_config(TuskMethod.config_class, CONFIG))
    opts = method.configure_optimizers()
    losses = []
    for _ in range(STEPS):
        batch = {"image": images[torch.randint(0, 128, (16,))]}
        loss, logs, extra = method(batch)
        opts["main"].zero_grad()
        loss.backward()
        opts["main"].step()
        method.after_main_step(batch, extra, opts)
        losses.append(logs["loss/reconstruction"])
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])

    # Held-out scenes: keypoints land on the objects and prototypes name the kinds.
    method.eval()
    with torch.no_grad():
        out = method.encoder.infer(images[128:])
    kp_px = ((out["keypoints"] + 1) / 2 * (SIZE - 1)).numpy()
    protos, kinds, errors = [], [], []
    for i, (_, centres, obj_kinds) in enumerate(scenes[128:]):
        for p, t in match_points(kp_px[i], np.array(centres)):
            errors.append(np.linalg.norm(kp_px[i][p] - np.array(centres[t])))
            protos.append(int(out["prototype_ids"][i, p]))
            kinds.append(obj_kinds[t])
    # Objects are 5-7 px wide: within 3 px of the centre is on the object.
    report = f"median keypoint error {np.median(errors):.2f} px, purity {purity(protos, kinds):.3f}"
    assert np.median(errors) < 3.0, report
    assert purity(protos, kinds) > 0.9, report


STEPS = int(os.environ.get("KP_TUSK_TEST_STEPS", "200"))


@pytest.mark.timeout(300)
def test_train_and_eval_cli_on_simulated_tetrominoes(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cli = [sys.executable, "-m", "kp_perception.cli.main"]
    data = tmp_path / "tetro"
    subprocess.run([*cli, "sim", "tetrominoes", "--out", str(data), "--num", "24", "--seed", "3"],
                   check=True, env=env, timeout=120, capture_output=True)
    run = tmp_path / "run"
    train = [*cli, "train", "tusk", "--data", str(data), "--out", str(run), "--steps", "2", "--no-progress",
             "--set", "train.batch_size=4", "train.num_workers=0", "model.width=8", "model.num_prototypes=6",
             "decoder.rgba.hidden=16", "decoder.rgba.sprite_px=7", "prototypes.steps=2", "prototypes.refit_bank=64",
             "prototypes.refit_method=whitened"]
    subprocess.run(train, check=True, env=env, timeout=200, capture_output=True)
    ckpt = load_checkpoint(run / "last.pt")
    # The saved encoder names with the refit centres; training keeps its own prototypes to resume from.
    used, trained = ckpt["encoder"]["prototypes"], ckpt["training"]["method"]["encoder.prototypes"]
    assert used.shape == trained.shape and not torch.allclose(used, trained)
    assert torch.allclose(used.norm(dim=1), torch.ones(len(used)), atol=1e-5)
    state = ckpt["training"]["method"]
    bank = state["descriptor_bank"][: int(state["bank_seen"])].double().numpy()
    expected = whitened_refit(bank, len(used), n_init=3)  # the configured clustering of the saved bank
    assert torch.allclose(used.double(), torch.from_numpy(expected), atol=1e-5)
    res = subprocess.run([*cli, "eval", str(run), "--data", str(data), "--json", str(tmp_path / "m.json")],
                         check=True, env=env, timeout=120, capture_output=True, text=True)
    metrics = json.loads((tmp_path / "m.json").read_text())
    got = metrics["tetro"]
    assert got["images"] == 24 and got["objects"] == 72 and got["mask_source"] == "alpha"
    assert -1.0 <= got["foreground_ari"] <= 1.0
    assert 0.0 <= got["shape_accuracy"] <= 1.0 and 0.0 <= got["colour_accuracy"] <= 1.0
    assert res.returncode == 0


# ----------------------------------------------------------------- three kinds: types, and a seeded collapse
THREE_COLOURS = np.array([[1.0, 0.2, 0.2], [0.2, 0.4, 1.0], [0.2, 0.9, 0.2]], dtype=np.float32)


def _three_kind_mask(kind: int, x: int, y: int) -> np.ndarray:
    """A 7-px red square, blue cross or green triangle with its top-left corner at (x, y)."""
    m = np.zeros((SIZE, SIZE), bool)
    if kind == 0:
        m[y + 1 : y + 6, x + 1 : x + 6] = True
    elif kind == 1:
        m[y : y + 7, x + 3 : x + 4] = True
        m[y + 3 : y + 4, x : x + 7] = True
    else:
        for r in range(7):
            m[y + r, x + 3 - r // 2 : x + 4 + r // 2] = True
    return m


def make_three_kind_scene(rng: np.random.Generator):
    """One object of each of the three kinds, at random non-overlapping places (all three visible at once)."""
    while True:
        image = np.zeros((3, SIZE, SIZE), np.float32)
        taken = np.zeros((SIZE, SIZE), bool)
        centres: list[tuple[float, float]] = []
        for kind in range(3):
            for _ in range(200):
                x, y = (int(v) for v in rng.integers(1, SIZE - 8, size=2))
                grown = np.zeros_like(taken)
                grown[max(y - 2, 0) : y + 9, max(x - 2, 0) : x + 9] = True
                if not (grown & taken).any():
                    break
            else:
                break  # no room left: draw the scene again
            taken |= grown
            image[:, _three_kind_mask(kind, x, y)] = THREE_COLOURS[kind][:, None]
            centres.append((x + 3.0, y + 3.0))
        if len(centres) == 3:
            return image, centres, [0, 1, 2]


THREE_KIND_CONFIG = {
    "model": {"num_keypoints": 3, "num_prototypes": 6, "nms_window": 13, "width": 16, "descriptor_dim": 8},
    "data": {"image_size": SIZE},
    "decoder": {"kind": "rgba", "rgba": {"hidden": 64, "sprite_px": 9}},
    "loss": {"equivariance_features": 0.0},
    "optim": {"lr": 3e-3},
    "prototypes": {"steps": 4},
}


def _train_three_kinds(seed: int, config: dict, steps: int = 400, equal_prototypes: bool = False) -> dict:
    """Train on 160 three-kind scenes; held-out purity, prototypes in use, keypoint error and CPU seconds."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scenes = [make_three_kind_scene(rng) for _ in range(192)]
    images = torch.tensor(np.stack([s[0] for s in scenes]))
    method = TuskMethod(build_config(TuskMethod.config_class, config))
    if equal_prototypes:  # the seeded collapse: every prototype the same vector
        with torch.no_grad():
            method.encoder.prototypes.copy_(method.encoder.prototypes[:1].expand_as(method.encoder.prototypes))
    opts = method.configure_optimizers()
    start = time.process_time()
    for _ in range(steps):
        batch = {"image": images[torch.randint(0, 160, (16,))]}
        loss, _, extra = method(batch)
        opts["main"].zero_grad()
        loss.backward()
        opts["main"].step()
        method.after_main_step(batch, extra, opts)
    cpu = time.process_time() - start
    method.eval()
    with torch.no_grad():
        method.encoder.load_state_dict(method.encoder_state_for_use(method.encoder.state_dict()))
        out = method.encoder.infer(images[160:])
    kp_px = ((out["keypoints"] + 1) / 2 * (SIZE - 1)).numpy()
    protos, kinds, errors = [], [], []
    for i, (_, centres, obj_kinds) in enumerate(scenes[160:]):
        for p, t in match_points(kp_px[i], np.array(centres)):
            errors.append(np.linalg.norm(kp_px[i][p] - np.array(centres[t])))
            protos.append(int(out["prototype_ids"][i, p]))
            kinds.append(obj_kinds[t])
    return {"purity": purity(protos, kinds), "used": len(set(protos)), "error_px": float(np.median(errors)),
            "cpu_s": cpu, "matched": len(protos)}


@pytest.mark.timeout(900)  # ~30 CPU-s per seed here (seeds 0-3: purity 1.0, 3-4 in use); generous for a shared CPU
@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_three_kind_scene_trains_in_under_a_minute_with_one_prototype_per_kind(seed):
    # The step count of THREE_KIND_CONFIG is what keeps this under a minute (~30 CPU-s per seed on a quiet
    # core); CPU time is not asserted, since contention inflates it (62 CPU-s at load 6 on 2 cores).
    got = _train_three_kinds(seed, THREE_KIND_CONFIG)
    assert got["matched"] >= 0.9 * 32 * 3, got  # keypoints find (nearly) every object
    assert got["error_px"] < 3.5, got  # objects are 7 px wide: on the object
    assert got["purity"] > 0.9 and got["used"] >= 3, got


@pytest.mark.timeout(900)
def test_a_seeded_collapse_is_repaired():
    """All prototypes start as one vector; the restarts (and SW noise) spread them over the three kinds."""
    config = {**THREE_KIND_CONFIG, "model": {**THREE_KIND_CONFIG["model"], "num_prototypes": 4}}
    got = _train_three_kinds(0, config, equal_prototypes=True)
    assert got["used"] > 4 / 2, got
    assert got["purity"] > 0.9, got


@pytest.mark.timeout(900)
def test_refit_prototypes_name_the_kinds_when_the_trained_ones_stay_collapsed():
    """Prototypes that start equal and barely move (no restarts) name nothing; the bank's refit does."""
    config = {**THREE_KIND_CONFIG, "loss": {"equivariance_features": 0.0, "kmeans": 0.0},
              "prototypes": {"update": "ema", "ema_decay": 0.999999, "restart_every": 0}}
    collapsed = _train_three_kinds(0, config, steps=300, equal_prototypes=True)
    assert collapsed["used"] == 1, collapsed
    refit = {**config, "prototypes": {**config["prototypes"], "refit_bank": 1024}}
    got = _train_three_kinds(0, refit, steps=300, equal_prototypes=True)
    assert got["used"] >= 3 and got["purity"] > 0.9, got


def test_kmeans_warmup_and_ema_updates_take_effect_inside_the_training_step():
    config = {**THREE_KIND_CONFIG, "loss": {"equivariance_features": 0.0, "kmeans_warmup_steps": 2,
                                            "kmeans_ramp_steps": 2, "uniformity": 0.1},
              "prototypes": {"update": "ema", "ema_decay": 0.5, "restart_every": 0}}
    torch.manual_seed(0)
    images = torch.tensor(np.stack([make_three_kind_scene(np.random.default_rng(i))[0] for i in range(4)]))
    method = TuskMethod(build_config(TuskMethod.config_class, config))
    opts = method.configure_optimizers()
    weights, moved = [], []
    for _ in range(4):
        before = method.encoder.prototypes.detach().clone()
        loss, logs, extra = method({"image": images})
        opts["main"].zero_grad()
        loss.backward()
        opts["main"].step()
        method.after_main_step({"image": images}, extra, opts)
        weights.append(logs["loss/kmeans_weight"])
        moved.append(float((method.encoder.prototypes.detach() - before).abs().max()))
        assert "loss/uniformity" in logs
    assert weights == [0.0, 0.0, 0.005, 0.01]  # 0.01 × (off, off, half, full)
    assert all(m > 0 for m in moved)  # EMA moved the nearest prototypes each batch
    assert not opts["prototypes"].state  # ... without the SW optimiser
    assert int(method.main_steps) == 4
