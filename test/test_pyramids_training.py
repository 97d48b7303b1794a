"""Keypoint Pyramids learns: on a tiny synthetic sequence the loss falls and a keypoint tracks a moving object.

The method is stepped directly with Adam (a few seconds of CPU per 100 steps
with one thread); the trainer's own mechanics are tested in test_trainer.py.
"""

import csv

import cv2
import numpy as np
import pytest
import torch

from kp_perception_training.config import build_config
from kp_perception_training.pyramids.baselines import KeyNetMethod, TransporterMethod
from kp_perception_training.pyramids.config import PyramidsConfig
from kp_perception_training.pyramids.evaluate import evaluate
from kp_perception_training.pyramids.method import PyramidsMethod

SIZE = 32
SQUARE = 6
TINY_MODEL = {"width": 8, "fpn_channels": 16, "head_channels": 16, "finest_stride": 2}
TINY_DECODER = {
    "appearance_channels": 8,
    "appearance_width": 8,
    "transport_channels": [16, 8],
    "decoder_width": 16,
    "feature_hidden": 16,
}


def tiny_config(levels=(1, 2), **sections) -> PyramidsConfig:
    config = {
        "model": {"keypoints_per_level": list(levels), **TINY_MODEL},
        "decoder": dict(TINY_DECODER),
        "data": {"image_size": SIZE},
        "loss": {},
        "ablation": {},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return build_config(PyramidsConfig, config)


def flat_config(cls, k: int):
    """The tiny widths for a flat baseline (each has its own decoder section)."""
    decoder = (
        {"appearance_channels": 8, "appearance_width": 8, "decoder_width": 16}
        if cls is KeyNetMethod
        else {"transport_channels": [8], "feature_hidden": 16, "decoder_width": 16}
    )
    raw = {"model": {"keypoints_per_level": [k], **TINY_MODEL}, "decoder": decoder, "data": {"image_size": SIZE}}
    return build_config(cls.config_class, raw)


def square_frames(n=128, seed=0):
    """A red square on a grey background at random positions: frames N×3×S×S and its centre in [-1, 1]."""
    pos = np.random.default_rng(seed).integers(0, SIZE - SQUARE, size=(n, 2))
    images = torch.full((n, 3, SIZE, SIZE), 0.5)
    for i, (x, y) in enumerate(pos):
        images[i, :, y : y + SQUARE, x : x + SQUARE] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)
    centre_px = pos + (SQUARE - 1) / 2.0
    return images, centre_px


@pytest.fixture(scope="module")
def trained():
    """120 Adam steps of the full method (reconstruction + transport + spring) on the square sequence."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine extra threads only thrash
    try:
        torch.manual_seed(0)
        images, centre_px = square_frames()
        method = PyramidsMethod(tiny_config())
        opt = torch.optim.Adam(method.parameters(), lr=3e-3)
        losses = []
        gen = torch.Generator().manual_seed(0)
        for _ in range(120):
            idx = torch.randint(0, len(images), (8,), generator=gen)
            ref = torch.randint(0, len(images), (8,), generator=gen)
            loss, logs, _ = method({"image": images[idx], "ref": images[ref]})
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        method.eval()
        yield method, images, centre_px, losses
    finally:
        torch.set_num_threads(threads)


@pytest.mark.timeout(300)
def test_loss_falls(trained):
    _, _, _, losses = trained
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])


@pytest.mark.timeout(300)
def test_a_keypoint_follows_the_moving_object(trained):
    method, images, centre_px, _ = trained
    with torch.no_grad():
        kp = method.encoder.infer(images)["keypoints"].numpy()
    centre = centre_px / (SIZE - 1) * 2 - 1
    corr = [
        min(np.corrcoef(kp[:, k, 0], centre[:, 0])[0, 1], np.corrcoef(kp[:, k, 1], centre[:, 1])[0, 1])
        for k in range(kp.shape[1])
    ]
    assert max(corr) > 0.9, corr


def write_square_sequence(folder, images, centre_px, scale: int = 1):
    """The learned square sequence as a PNG folder ``folder/squares`` (frames ``scale`` × the training size)
    and its annotations CSV: the square's centre as ``square/centre`` in frame pixels, plus an occluded
    ``ghost`` row with nonsense coordinates that every evaluation must leave out. Returns (folder, csv)."""
    seq = folder / "squares"
    seq.mkdir()
    for i, img in enumerate(images):
        frame = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        frame = cv2.resize(frame, (SIZE * scale, SIZE * scale), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(seq / f"{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    ann = folder / "annotations.csv"
    with open(ann, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sequence", "frame", "name", "x", "y", "visible"])
        for i, (x, y) in enumerate(centre_px):
            fx, fy = (x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5
            writer.writerow(["squares", i, "square/centre", fx, fy, 1])
            writer.writerow(["squares", i, "ghost", 1e4 * (i % 3), -1e4, 0])
    return seq, ann


@pytest.mark.timeout(300)
def test_landmark_evaluation_scores_the_learned_keypoints_in_frame_pixels(trained, tmp_path, monkeypatch):
    method, images, centre_px, _ = trained
    monkeypatch.setenv("KP_PERCEPTION_CACHE", str(tmp_path / "cache"))
    # The sequence on disk at twice the training size, so evaluation must map back to frame pixels.
    scale = 2
    seq, ann = write_square_sequence(tmp_path, images, centre_px, scale=scale)
    checkpoint = {
        "kind": "pyramids",
        "config": tiny_config().to_dict(),
        "encoder": method.encoder.state_dict(),
    }
    metrics = evaluate(checkpoint, [str(seq)], str(ann), tmp_path / "eval", seed=0)
    assert set(metrics["rmse_px"]) == {"level_1", "level_2", "flattened"}
    spread = float(np.linalg.norm(centre_px.std(axis=0))) * scale
    # the learned keypoints explain the object's position far better than its spread
    assert metrics["rmse_px"]["flattened"] < 0.2 * spread
    assert metrics["fit_frames"] + metrics["test_frames"] == len(images)
    assert (tmp_path / "eval" / "landmarks.png").stat().st_size > 0
    # the ridge fit (fixed alphas, CV in the fit half) scores the same sets and also explains the object
    assert set(metrics["rmse_px_ridge"]) == set(metrics["rmse_px"])
    assert metrics["rmse_px_ridge"]["flattened"] < 0.2 * spread
    assert set(metrics["keypoint_motion_px_per_level"]) == {"level_1", "level_2"}
    assert max(metrics["keypoint_motion_px_per_level"].values()) > 0.5, "the learned keypoints follow the square"
    saved = np.load(tmp_path / "eval" / "landmark_keypoints.npz")
    assert saved["keypoints_px"].shape == (len(images), sum(saved["level_sizes"]), 2)
    assert list(saved["frames"]) == list(range(len(images))) and set(saved["sequences"]) == {"squares"}
    # same seed, same split and numbers
    again = evaluate(checkpoint, [str(seq)], str(ann), None, seed=0)
    assert again["rmse_px"] == metrics["rmse_px"]


@pytest.mark.parametrize(
    "ablation, terms",
    [
        ({}, {"loss/reconstruction", "loss/transport", "loss/spring"}),
        ({"no_reconstruction": True}, {"loss/transport", "loss/spring"}),
        ({"no_transport": True}, {"loss/reconstruction", "loss/spring"}),
        ({"no_spring": True}, {"loss/reconstruction", "loss/transport"}),
        ({"all_transport": True}, {"loss/reconstruction", "loss/transport", "loss/spring"}),
        ({"all_reconstruction": True}, {"loss/reconstruction", "loss/transport", "loss/spring"}),
    ],
)
def test_ablation_switches_select_the_loss_terms(ablation, terms):
    torch.manual_seed(0)
    method = PyramidsMethod(tiny_config(levels=(2, 4), ablation=ablation))
    images, _ = square_frames(4)
    loss, logs, _ = method({"image": images, "ref": images.flip(0)})
    assert {k for k in logs if k != "loss/total"} == terms
    loss.backward()
    # every term reaches the keypoint heads of both levels
    for head in method.encoder.heads:
        assert head.net[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [KeyNetMethod, TransporterMethod])
@pytest.mark.parametrize("k", [3, 5])
def test_flat_baselines_take_any_k_and_train_their_keypoints(cls, k):
    torch.manual_seed(0)
    method = cls(flat_config(cls, k))
    images, _ = square_frames(4)
    loss, logs, _ = method({"image": images, "ref": images.flip(0)})
    loss.backward()
    assert method.encoder.level_sizes == (k,)
    assert torch.isfinite(loss)
    assert method.encoder.heads[0].net[-1].weight.grad.abs().sum() > 0


def test_log_images_draws_keypoints_and_reconstructions(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    method = PyramidsMethod(tiny_config(levels=(2, 4)))
    images, _ = square_frames(4)
    batch = {"image": images, "ref": images.flip(0)}
    method(batch)
    with SummaryWriter(str(tmp_path)) as writer:
        method.log_images(writer, batch, step=1)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["images"])
    assert {"keypoints", "reconstruction", "level_1_reconstruction", "level_2_reconstruction"} <= tags
