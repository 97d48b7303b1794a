"""Keep freed tensor memory in the process instead of handing it back to the OS.

glibc's malloc serves blocks above a threshold (128 KiB, then adapting up to
32 MiB) with ``mmap`` and unmaps them on ``free``; it also trims the top of the
heap once more than 128 KiB is free there. A CPU training step allocates and
frees hundreds of activation and gradient tensors of 1-80 MB, so every step
page-faults the same memory back in, zero-filled by the kernel. Measured on this
2-core machine, TUSK at 112 px, batch 8: ~1.0 s per step with glibc's defaults,
~0.8 s with the settings below; ~20 % at 35 px (docs/tusk.md). This is the
allocator advice of PyTorch's CPU performance guides (there: jemalloc or
tcmalloc, which this machine does not have), done with glibc's own ``mallopt``.

The cost is memory: the resident set stays at its peak between steps, and the
heap can fragment. TUSK at 112 px peaked at 1302 MB against 1358 MB with the
defaults; a synthetic loop over one 49 MiB shape peaked at twice the default's.
To opt out, set ``MALLOC_MMAP_THRESHOLD_`` (glibc's own tunable, e.g. 131072 for
its default) in the environment: this module then leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameter numbers, <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_ENV_OVERRIDES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_BLOCK_BYTES = 1 << 30


def retain_freed_memory() -> bool:
    """Make glibc reuse freed blocks up to 1 GiB instead of unmapping them; True if applied.

    A no-op (False) where the C library is not glibc, or where the user has set
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` themselves. Safe to call
    more than once; it affects only allocations made afterwards.
    """
    if any(name in os.environ for name in _ENV_OVERRIDES):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _BLOCK_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _BLOCK_BYTES))
