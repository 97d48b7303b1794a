"""retain_freed_memory: a training-like loop stops page-faulting its tensors back in; user overrides win."""

import os
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")

# Minor page faults per step of a forward/backward over 49 MiB activations (above
# glibc's 32 MiB dynamic mmap ceiling, like a 112 px U-Net's full-resolution maps).
_PROBE = """
import resource, sys, torch
from kp_perception_training.allocator import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
w = torch.randn(1, 64, 1, 1, requires_grad=True)
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.rand(16, 64, 112, 112)
    (torch.relu(x * w) * torch.sigmoid(x + w)).mean().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""
_STEP_PAGES = (16 * 64 * 112 * 112 * 4) // os.sysconf("SC_PAGE_SIZE")


def _probe(mode: str, **env: str) -> tuple[bool, list[int]]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], cwd=root, env={**os.environ, **env},
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return out[0] == "True", [int(f) for f in out[1:]]


def test_steady_state_steps_reuse_freed_memory():
    applied, faults = _probe("retain")
    default_applied, default_faults = _probe("default")
    assert applied and not default_applied
    # Steady state = the median step after the first four (glibc still re-faults the odd one).
    assert statistics.median(default_faults[4:]) > _STEP_PAGES  # the default unmaps and re-faults each step
    assert statistics.median(faults[4:]) < _STEP_PAGES // 20


def test_user_malloc_environment_is_left_alone():
    applied, faults = _probe("retain", MALLOC_MMAP_THRESHOLD_="131072")
    assert not applied
    assert statistics.median(faults[4:]) > _STEP_PAGES
