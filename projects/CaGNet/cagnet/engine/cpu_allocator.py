# Copyright (c) CaGNet-D2 contributors.
"""glibc malloc settings that keep a CPU training step from page-faulting its activations.

Why: PyTorch's CPU allocator takes every tensor from ``malloc`` and frees it when the step is
done. glibc serves large blocks with ``mmap`` (above a threshold that starts at 128 KiB and only
grows with what is freed) and returns freed memory at the top of the heap to the kernel once it
exceeds 128 KiB, so each step maps fresh pages again and the kernel zeroes every one of them on
first touch. On the built-in CaGNet config, two 300-iteration runs at once (1 thread each, the
Table-1 benchmark's regime) took 3.0-5.1 million minor page faults and 9-13 s of system time each;
with the settings below 0.43 million and 4-5 s, and their steps were about 6% faster (docs/PERFORMANCE.md,
"The CPU allocator"). The arithmetic is untouched (PyTorch aligns its blocks itself), so results are
the same to the bit.

Settings: ``M_MMAP_THRESHOLD`` 32 MiB (glibc's maximum; larger blocks are still mapped), and
``M_TRIM_THRESHOLD`` 1 GiB (free memory above that at the top of the heap still goes back to the
system). The price is that up to about 1 GiB of freed heap stays with the process.

Off with ``CAGNET_MALLOC_TUNING=0``, and left to the user when any of glibc's own ``MALLOC_*_``
variables is set; a no-op where the C library is not glibc.
"""
import ctypes
import ctypes.util
import logging
import os
import platform
from typing import Dict, Optional

__all__ = ["tune_cpu_allocator", "describe_allocator", "MALLOPT_SETTINGS"]

logger = logging.getLogger(__name__)

MALLOPT_SETTINGS: Dict[str, int] = {"M_MMAP_THRESHOLD": 32 << 20, "M_TRIM_THRESHOLD": 1 << 30}
_PARAM_NUMBERS = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3}  # glibc's <malloc.h>
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_applied: Optional[Dict[str, int]] = None


def _glibc():
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (musl does not)
        return libc
    except (OSError, AttributeError):
        return None


def tune_cpu_allocator() -> Optional[Dict[str, int]]:
    """Apply :data:`MALLOPT_SETTINGS` to this process (once; forked data-loader workers inherit
    them). Returns the settings applied, or None when skipped (see the module docstring)."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get("CAGNET_MALLOC_TUNING", "1") == "0":
        return None
    user = [v for v in _USER_VARIABLES if v in os.environ]
    if user:
        logger.info(f"malloc tuning skipped: {', '.join(user)} set in the environment")
        return None
    libc = _glibc()
    if libc is None:
        return None
    applied = {}
    for name, value in MALLOPT_SETTINGS.items():
        if libc.mallopt(ctypes.c_int(_PARAM_NUMBERS[name]), ctypes.c_int(value)) == 1:
            applied[name] = value
    _applied = applied
    return applied


def describe_allocator(applied: Optional[Dict[str, int]]) -> str:
    """One line for a log: what :func:`tune_cpu_allocator` returned."""
    if not applied:
        return "glibc malloc: as the C library has it (CAGNET_MALLOC_TUNING=0, MALLOC_*_ set, or not glibc)"
    return "glibc malloc: " + ", ".join(f"{k} {v >> 20} MiB" for k, v in applied.items()) + (
        " (cagnet/engine/cpu_allocator.py; CAGNET_MALLOC_TUNING=0 turns it off)")
