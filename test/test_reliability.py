"""Bad inputs a careless user gives the CLI: each is one line on stderr and a non-zero exit, and loses nothing.

Each case runs the real ``kp-perception`` in its own process, as a user would,
so OpenCV's, onnxruntime's or torch's own output would show too. (Config
typos and wrong types: test_config.py; ``data inspect`` on devices, FIFOs and
corrupt images: test_data_cli.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kp_perception.checkpoint import load_checkpoint, save_checkpoint
from test.fixtures_bags import write_square_sequence
from test.model_fixtures import make_checkpoint, make_model
from test.test_trainer import sigterm_once_training

CLI = [sys.executable, "-m", "kp_perception.cli.main"]
TINY_KEYNET = ["data.image_size=32", "model.keypoints_per_level=[4]", "model.width=8", "model.fpn_channels=8",
               "model.head_channels=8", "decoder.appearance_channels=4", "decoder.appearance_width=8",
               "decoder.decoder_width=8", "train.batch_size=2", "train.num_workers=0", "train.log_every=1"]


def _cli(*args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _one_line_failure(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """``squares/`` (a moving square, 32×32) and its ``annotations.csv``."""
    root = tmp_path_factory.mktemp("frames")
    write_square_sequence(root)
    return root


@pytest.fixture(scope="module")
def pyramids_model(tmp_path_factory) -> Path:
    return make_model("pyramids", tmp_path_factory.mktemp("model"))


def test_eval_of_a_checkpoint_whose_weights_do_not_fit_its_config(frames, tmp_path):
    path = make_checkpoint("pyramids", tmp_path)
    ckpt = load_checkpoint(path)
    ckpt["config"]["model"]["width"] = 2 * ckpt["config"]["model"]["width"]  # valid config, other weights
    save_checkpoint(path, ckpt)
    proc = _cli("eval", path, "--data", frames / "squares", "--annotations", frames / "annotations.csv")
    _one_line_failure(proc, "encoder weights do not fit its config", "size mismatch")


def test_eval_with_annotations_that_are_not_utf8(frames, tmp_path):
    path = make_checkpoint("pyramids", tmp_path, image_size=32)
    bad = tmp_path / "annotations.csv"
    bad.write_bytes(b"\xff\xfe\x00s\x00e\x00q" + bytes(range(128, 256)))
    _one_line_failure(_cli("eval", path, "--data", frames / "squares", "--annotations", bad),
                      str(bad), "not a UTF-8 text file")


def test_a_random_bytes_checkpoint_never_suggests_weights_only_false(frames, tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    line = _one_line_failure(_cli("eval", path, "--data", frames / "squares"), str(path), "not a readable")
    assert "weights_only" not in line and "arbitrary code" not in line


@pytest.mark.parametrize(
    "where, fragment",
    [("--out=/proc/x.mp4", "/proc/x.mp4: cannot create a file in /proc"), ("--csv=DIR", "is a directory")],
)
def test_infer_output_that_cannot_be_written(frames, pyramids_model, tmp_path, where, fragment):
    flag, _, target = where.partition("=")
    target = str(tmp_path) if target == "DIR" else target
    proc = _cli("infer", pyramids_model, "--input", frames / "squares", flag, target)
    _one_line_failure(proc, fragment)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_export_to_a_place_that_cannot_be_written(pyramids_model, tmp_path):
    proc = _cli("export", pyramids_model.with_suffix(".pt"), "--onnx", "/proc/x.onnx")
    _one_line_failure(proc, "/proc/x.onnx", "cannot create a file in /proc")


def test_unknown_execution_provider_is_an_error_and_an_unavailable_one_a_warning(frames, pyramids_model, tmp_path):
    proc = _cli("infer", pyramids_model, "--input", frames / "squares", "--csv", tmp_path / "a.csv",
                "--providers", "BogusExecutionProvider")
    _one_line_failure(proc, "unknown onnxruntime execution provider(s) BogusExecutionProvider", "CPUExecutionProvider")
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here, so it cannot stand for a known but unavailable provider")
    proc = _cli("infer", pyramids_model, "--input", frames / "squares", "--csv", tmp_path / "b.csv",
                "--providers", "CUDAExecutionProvider")
    assert proc.returncode == 0, proc.stderr
    assert "CUDAExecutionProvider not available in this build; running on CPUExecutionProvider" in proc.stderr
    assert (tmp_path / "b.csv").is_file()


@pytest.mark.timeout(240)
def test_a_save_killed_by_sigkill_leaves_a_temporary_file_the_next_run_removes(frames, tmp_path):
    run = tmp_path / "run"
    killed = ("import os, signal, sys\nfrom kp_perception.atomic import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half a checkpoint')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", killed, str(run / "last.pt")], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (stale,) = run.glob(".last.pt.*.tmp")
    proc = _cli("train", "keynet", "--data", frames / "squares", "--out", run, "--steps", "1", "--no-progress",
                "--set", *TINY_KEYNET, KP_PERCEPTION_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not stale.exists() and not list(run.glob(".*.tmp"))
    assert "removed 1 temporary file(s) of an interrupted save" in proc.stderr
    assert load_checkpoint(run / "last.pt")["training"]["step"] == 1


@pytest.mark.timeout(240)
def test_train_stopped_by_sigterm_exits_143_after_writing_last_pt(frames, tmp_path):
    run = tmp_path / "run"
    cmd = [*CLI, "train", "keynet", "--data", str(frames / "squares"), "--out", str(run), "--steps", "1000000",
           "--no-progress", "--set", *TINY_KEYNET, "train.checkpoint_every=1000000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KP_PERCEPTION_CACHE": str(tmp_path / "cache")}
    proc, stdout, stderr = sigterm_once_training(cmd, run, env, wait=180)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    summary = stdout.strip().splitlines()[-1]
    assert '"stopped": "signal SIGTERM"' in summary
    assert load_checkpoint(run / "last.pt")["training"]["step"] >= 1
    assert torch.isfinite(next(iter(load_checkpoint(run / "last.pt")["encoder"].values()))).all()
