"""``kp-perception train`` / ``eval`` end to end: the real KeyNet baseline on a tiny synthetic sequence.

The sequence is an image folder of a bright square moving over a dark
background, 32×32 px, with the model shrunk to a few channels so a step
takes a fraction of a second on this CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kp_perception.checkpoint import load_checkpoint
from kp_perception.cli.main import main
from test.test_trainer import run_group

REPO = Path(__file__).resolve().parent.parent
TINY_KEYNET = [
    "data.image_size=32", "model.keypoints_per_level=[4]", "model.width=8", "model.fpn_channels=8",
    "model.head_channels=8", "decoder.appearance_channels=4", "decoder.appearance_width=8",
    "decoder.decoder_width=8", "train.batch_size=4", "train.log_every=1", "train.image_every=2",
]


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """Two image-folder sequences of a 6×6 square moving along a diagonal."""
    root = tmp_path_factory.mktemp("frames")
    rows = ["sequence,frame,name,x,y"]
    for name, phase in (("seq_a", 0), ("seq_b", 5)):
        folder = root / name
        folder.mkdir()
        for t in range(10):
            img = np.full((32, 32, 3), 30, np.uint8)
            x = 3 + (2 * t + phase) % 22
            y = 4 + (t + phase) % 20
            img[y : y + 6, x : x + 6] = (240, 200, 60)
            cv2.imwrite(str(folder / f"{t:04d}.png"), img[:, :, ::-1])
            rows.append(f"{name},{t},square,{x + 2.5},{y + 2.5}")
    (root / "annotations.csv").write_text("\n".join(rows) + "\n")
    return root


def _train_args(frames: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["train", "keynet", "--data", str(frames / "seq_a"), str(frames / "seq_b"), "--out", str(out),
            "--no-progress", "--set", *TINY_KEYNET, f"data.cache_dir={cache}", *extra]


def _one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.timeout(240)
def test_train_keynet_resumes_bit_exact_on_rerun_and_refuses_changed_config(frames, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert main(_train_args(frames, out, cache, "--steps", "3")) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["step"] == 3 and first["kind"] == "keynet"
    assert (out / "config.yaml").is_file() and (out / "best.pt").is_file()
    assert list((out / "tb").glob("events.*"))
    ckpt = load_checkpoint(out / "last.pt", expected_kind="keynet")
    assert ckpt["config"]["model"]["keypoints_per_level"] == [4]  # the --set values reached the model
    assert ckpt["config"]["data"]["image_size"] == 32

    # Same command with more steps: continues from step 3 with the run's own config.
    assert main(["train", "keynet", "--data", str(frames / "seq_a"), str(frames / "seq_b"), "--out", str(out),
                 "--no-progress", "--steps", "5"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["step"] == 5
    resumed = load_checkpoint(out / "last.pt")
    assert resumed["training"]["step"] == 5
    assert any(not torch.equal(resumed["encoder"][k], ckpt["encoder"][k]) for k in ckpt["encoder"])

    # 3 + 2 resumed steps are bit-identical to 5 straight steps (weights, BatchNorm statistics, Adam moments).
    assert main(_train_args(frames, tmp_path / "straight", cache, "--steps", "5")) == 0
    capsys.readouterr()
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")["training"]
    for key, value in straight["method"].items():
        assert torch.equal(value, resumed["training"]["method"][key]), key
    adam = straight["optimizers"]["main"]["state"]
    for pid, state in adam.items():
        assert torch.equal(state["exp_avg_sq"], resumed["training"]["optimizers"]["main"]["state"][pid]["exp_avg_sq"])

    # eval dispatches on the checkpoint's kind (KeyNet -> landmark regression) and writes JSON + plot.
    data = [str(frames / "seq_a"), str(frames / "seq_b")]
    report = tmp_path / "report" / "metrics.json"
    assert main(["eval", str(out), "--data", *data, "--annotations", str(frames / "annotations.csv"),
                 "--json", str(report), "--checkpoint", "last"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(report.read_text()) == printed
    assert printed["kind"] == "keynet" and printed["frames"] == 20 and printed["level_sizes"] == [4]
    assert np.isfinite(printed["rmse_px"]["flattened"]) and (report.parent / "landmarks.png").is_file()
    _one_line_error(capsys, ["eval", str(out), "--data", *data], "--annotations")

    _one_line_error(capsys, _train_args(frames, out, cache, "--steps", "7", "--set", "model.width=16"),
                    "model.width", str(out / "last.pt"))
    _one_line_error(capsys, ["train", "pyramids", "--data", str(frames / "seq_a"), "--out", str(out)],
                    "holds a 'keynet' run, not 'pyramids'")


def test_unknown_override_key_is_one_line_naming_it(frames, tmp_path, capsys):
    _one_line_error(capsys, _train_args(frames, tmp_path / "run", tmp_path / "c", "--set", "optim.lrr=1"),
                    "'optim.lrr'")
    _one_line_error(capsys, _train_args(frames, tmp_path / "run", tmp_path / "c", "--set", "optim.lr"),
                    "expected key.path=value")


def test_bad_data_device_or_config_file_is_one_line_and_writes_nothing(frames, tmp_path, capsys):
    out = tmp_path / "run"
    _one_line_error(capsys, ["train", "keynet", "--data", str(tmp_path / "nowhere"), "--out", str(out)],
                    str(tmp_path / "nowhere"))
    _one_line_error(capsys, ["train", "keynet", "--data", str(frames / "seq_a"), "--out", str(out),
                             "--config", str(tmp_path / "nope.yaml")], "nope.yaml: config file not found")
    if not torch.cuda.is_available():
        _one_line_error(capsys, _train_args(frames, out, tmp_path / "c", "--device", "cuda"), "no CUDA device")
    assert not out.exists()


@pytest.mark.parametrize("content", ["random", "foreign"])
def test_corrupt_or_foreign_checkpoint_is_one_line_for_train_and_eval(frames, tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    if content == "random":
        (out / "last.pt").write_bytes(os.urandom(2048))
    else:
        torch.save([torch.zeros(3)], out / "last.pt")
    _one_line_error(capsys, _train_args(frames, out, tmp_path / "c"), str(out / "last.pt"), "checkpoint")
    _one_line_error(capsys, ["eval", str(out), "--data", str(frames / "seq_a")], str(out / "last.pt"), "checkpoint")


def test_eval_without_checkpoint_or_annotations_is_one_line(frames, tmp_path, capsys):
    _one_line_error(capsys, ["eval", str(tmp_path / "nowhere"), "--data", str(frames)], "no such run directory")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["eval", str(tmp_path / "empty"), "--data", str(frames)], "no best.pt or last.pt")


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_is_available_without_importing_torch(command):
    code = f"import sys; from kp_perception.cli.main import main\ntry:\n main(['{command}', '--help'])\n" \
           "except SystemExit as e:\n assert e.code == 0\nassert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--data" in proc.stdout


@pytest.mark.timeout(240)
def test_torchrun_keynet_two_ranks_hold_identical_weights(frames, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "kp_perception.cli.main", *_train_args(frames, out, tmp_path / "cache", "--steps", "2"),
           "--write-rank-hashes"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_group(cmd, timeout=230, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hashes = {(out / f"rank_{r}_params.sha256").read_text().strip() for r in range(2)}
    assert len(hashes) == 1
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["world_size"] == 2  # rank 0 alone reports
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["training"]["world_size"] == 2 and ckpt["training"]["step"] == 2
