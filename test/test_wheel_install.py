"""``pip install .`` (not editable) gives a working CLI: build a wheel, install it into a clean venv, train and eval.

The checkout is copied (so building writes nothing into it) and built into a
wheel; the wheel is installed with ``--no-deps`` into a new venv made without
pip. That venv reaches the heavy pinned dependencies (torch, onnxruntime, the
ROS wheels, ...) through one ``.pth`` line naming this environment's
site-packages: a line in a ``.pth`` file adds the folder to ``sys.path``
after the venv's own site-packages, and Python does not run the ``.pth``
files inside it, so this environment's editable install of the checkout stays
invisible and the wheel's copy of the package is the one imported. (``venv
--system-site-packages`` would expose the base interpreter's packages, not
this venv's.) The commands run from a folder outside the checkout, so the
configs, launch files and models must come from the wheel's
``share/kp_perception``.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test.fixtures_bags import write_square_sequence

REPO = Path(__file__).resolve().parent.parent
# What a source distribution would leave out: environments, build products, outputs.
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "install", "log", "out", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".ruff_cache")
TINY = ["data.image_size=32", "model.keypoints_per_level=[2,4]", "model.width=8", "model.fpn_channels=8",
        "model.head_channels=8", "model.finest_stride=2", "decoder.appearance_channels=4",
        "decoder.appearance_width=8", "decoder.decoder_width=8", "decoder.feature_hidden=8",
        "decoder.transport_channels=[8,4]", "train.batch_size=2", "train.num_workers=0"]


def _run(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding only the wheel of this checkout (dependencies reached through a .pth line)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=IGNORED, symlinks=True)
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(dist),
          str(source)], cwd=work)
    (wheel,) = dist.glob("kp_perception-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
         cwd=work)
    target = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       cwd=work).stdout.strip())
    (target / "_kp_perception_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def test_the_wheel_holds_its_own_packages_and_data_files(installed, tmp_path):
    python = installed / "bin" / "python"
    code = ("import json, kp_perception, kp_perception_training, kp_perception_bench\n"
            "from kp_perception.resources import share_directory\n"
            "print(json.dumps([kp_perception.__file__, kp_perception_training.__file__, "
            "kp_perception_bench.__file__, str(share_directory())]))")
    paths = [Path(p) for p in json.loads(_run([str(python), "-c", code], cwd=tmp_path).stdout)]
    for path in paths:
        assert installed in path.parents and REPO not in path.parents, path
    share = paths[-1]
    assert (share / "config" / "training" / "tusk_tetrominoes.yaml").is_file()
    assert (share / "launch" / "pyramids.launch.py").is_file() and (share / "models" / "pyramids.onnx").is_file()
    # Nothing installed under generic names that would collide with a user's packages.
    site_packages = paths[0].parent.parent
    assert not (site_packages / "training").exists() and not (site_packages / "bench").exists()


def test_installed_benchmarks_write_under_the_current_directory_not_site_packages(installed, tmp_path):
    code = ("from kp_perception_bench._outputs import results_dir, work_dir, update_results_doc\n"
            "print(results_dir().resolve()); print(work_dir('x').resolve())\n"
            "update_results_doc('<!-- a -->', '<!-- b -->', '<!-- a -->\\nt\\n<!-- b -->\\n')")
    proc = _run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path)
    results, work = (Path(line) for line in proc.stdout.split())
    assert results == tmp_path / "kp_perception_bench" / "results"
    assert work == tmp_path / "kp_perception_bench" / "work" / "x"
    assert "docs/results.md not updated" in proc.stderr
    assert not list(installed.rglob("results.md"))  # no docs folder appeared inside the venv


@pytest.mark.timeout(600)
def test_installed_cli_trains_and_evaluates_from_outside_the_checkout(installed, tmp_path):
    cli = installed / "bin" / "kp-perception"
    assert cli.is_file(), sorted(p.name for p in (installed / "bin").iterdir())
    folder, annotations = write_square_sequence(tmp_path / "data")
    run_dir = tmp_path / "run"
    env = {"OMP_NUM_THREADS": "1", "KP_PERCEPTION_CACHE": str(tmp_path / "cache")}
    proc = _run([str(cli), "train", "pyramids", "--steps", "2", "--data", str(folder), "--out", str(run_dir),
                 "--no-progress", "--set", *TINY], cwd=tmp_path, **env)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 2 and summary["stopped"] == "done"
    assert (run_dir / "last.pt").is_file() and (run_dir / "config.yaml").is_file()
    proc = _run([str(cli), "eval", str(run_dir), "--data", str(folder), "--annotations", str(annotations),
                 "--checkpoint", "last"], cwd=tmp_path, **env)
    metrics = json.loads(proc.stdout)
    assert metrics["kind"] == "pyramids" and metrics["frames"] == 8 and np.isfinite(metrics["rmse_px"]["flattened"])
    # The TUSK preset is a data file: it must come from the installed share folder.
    proc = _run([str(cli), "train", "tusk", "--print-config"], cwd=tmp_path)
    assert "num_prototypes: 114" in proc.stdout
