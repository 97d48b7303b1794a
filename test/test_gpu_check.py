"""scripts/gpu_check.sh: one command, one JSON; on a machine without a GPU every GPU check is a stated skip."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kp_perception_bench.gpu_check import CHECKS, NEEDS, gpu_count

pytestmark = pytest.mark.timeout(180)
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=170)


def test_gpu_check_writes_one_json_with_every_check_and_skips_what_is_missing(tmp_path):
    out = tmp_path / "report.json"
    proc = _run("--out", str(out))
    report = json.loads(out.read_text())
    assert list(report["checks"]) == list(CHECKS)
    assert report["checks"]["environment"]["status"] == "passed"
    assert report["checks"]["environment"]["gpus"] == gpu_count()[0]
    for name, check in report["checks"].items():
        assert check["status"] in ("passed", "failed", "skipped"), name
        if check["status"] == "skipped":
            assert check["reason"].startswith("needs "), (name, check)
    if gpu_count()[0] == 0:  # this machine: every GPU check skipped, naming the GPU
        assert all(report["checks"][n]["status"] == "skipped" and "GPU" in report["checks"][n]["reason"]
                   for n in CHECKS if "gpu" in NEEDS[n] or "2gpu" in NEEDS[n])
        assert report["summary"] == {"passed": 1, "failed": 0, "skipped": len(CHECKS) - 1}
        assert proc.returncode == 0, proc.stderr
    assert report["summary"]["failed"] == (proc.returncode == 1)
    assert not list(tmp_path.glob(".*"))  # written atomically


def test_a_spent_time_budget_skips_the_remaining_checks_saying_so(tmp_path):
    out = tmp_path / "report.json"
    assert _run("--out", str(out), "--budget-seconds", "0").returncode == 0
    environment = json.loads(out.read_text())["checks"]["environment"]
    assert environment == {"status": "skipped", "reason": "the time budget is used up"}


def test_bad_argument_is_an_error_exit(tmp_path):
    proc = _run("--budget", "abc")
    assert proc.returncode == 2 and "invalid float value" in proc.stderr
