"""What this CPU can do for the heatmap: bfloat16 arithmetic, and how many threads TensorFlow uses.

bfloat16
    bfloat16 keeps float32's 8-bit exponent and drops the mantissa to 7 bits, so the network's
    matrix products run on the CPU's bfloat16 dot-product units at about twice the rate of
    float32. Only CPUs with such units gain: x86 with AVX512_BF16 or AMX-BF16, ARM with the
    BF16 extension (ARMv8.6). Elsewhere TensorFlow would emulate bfloat16 in software, which is
    several times *slower* than float32, so :func:`resolve_precision` falls back to float32 with
    a one-line note. Detection reads the flags the kernel reports (``/proc/cpuinfo`` on Linux,
    ``sysctl`` on macOS) at run time, never at import, so tests can replace
    :func:`bfloat16_support`.

Threads
    TensorFlow runs each operation on a pool of *intra-op* threads (the work inside one
    convolution) and independent operations on a pool of *inter-op* threads. Both default to
    the number of cores, which is right for one process alone on a machine; two processes that
    each take every core (two batch workers, or the viewer beside a batch run) slow each other
    down. :func:`configure_threads` caps both. TensorFlow fixes its pools when it first runs an
    operation, so call it before the model is loaded; afterwards it can only note that the cap
    comes too late (the cap applies to the next process).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Literal

FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
PRECISIONS = (FLOAT32, BFLOAT16)
DEFAULT_PRECISION = FLOAT32

Precision = Literal["float32", "bfloat16"]

_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""Linux ``/proc/cpuinfo`` flags of x86 bfloat16 units (AVX-512 BF16 dot products, AMX tiles)."""
_ARM_BF16_FEATURES = ("bf16",)
"""Linux ``/proc/cpuinfo`` ``Features`` of ARM's BF16 extension (BFDOT/BFMMLA)."""


_FLAGS: frozenset[str] | None = None
"""This machine's flags, read once: every heatmap call asks (reading /proc/cpuinfo each time cost
a bfloat16 run on a microscope field ~2 % of its time)."""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags the OS reports (lower case); empty when unknown.

    Linux: the ``flags`` (x86) or ``Features`` (ARM) line of ``/proc/cpuinfo``. macOS: every
    ``hw.optional.*`` sysctl that is 1, by its last name part (e.g. ``feat_bf16``).
    ``cpuinfo``: the text of ``/proc/cpuinfo`` to parse instead (for tests).
    """
    global _FLAGS
    if cpuinfo is not None:
        return _read_flags(cpuinfo)
    if _FLAGS is None:
        _FLAGS = frozenset(_read_flags(None))
    return set(_FLAGS)


def _read_flags(cpuinfo: str | None) -> set[str]:
    if cpuinfo is None and sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return set()
    if cpuinfo is not None:
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                return {flag.lower() for flag in value.split()}
        return set()
    if sys.platform == "darwin":  # pragma: no cover - not the CI platform
        try:
            text = subprocess.run(["sysctl", "hw.optional"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return set()
        flags = set()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if value.strip() == "1":
                flags.add(key.strip().rsplit(".", 1)[-1].lower())
        return flags
    return set()  # pragma: no cover - Windows: no cheap, dependable source; float32 it is


def bfloat16_support(flags: set[str] | None = None) -> tuple[bool, str]:
    """``(supported, why)``: whether this CPU has bfloat16 units TensorFlow's oneDNN uses."""
    flags = cpu_flags() if flags is None else flags
    machine = platform.machine().lower()
    found = [f for f in (*_X86_BF16_FLAGS, *_ARM_BF16_FEATURES, "feat_bf16") if f in flags]
    if found:
        return True, f"the CPU has {', '.join(f.upper() for f in found)}"
    if not flags:
        return False, "this CPU's features could not be read"
    if machine in ("arm64", "aarch64"):
        return False, "this ARM CPU has no BF16 extension"
    return False, "this CPU has neither AVX512_BF16 nor AMX"


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, notes: list[str] | None = None) -> str:
    """The precision to compute in: ``precision``, except bfloat16 on a CPU without bfloat16
    units, which becomes float32 with one note appended to ``notes`` (never a slow emulation)."""
    precision = check_precision(precision)
    if precision != BFLOAT16:
        return precision
    supported, why = bfloat16_support()
    if supported:
        return BFLOAT16
    if notes is not None:
        notes.append(f"bfloat16 needs a CPU with bfloat16 units and {why}: computed in float32")
    return FLOAT32


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------


def check_threads(threads: int | None) -> int | None:
    """``None`` (TensorFlow's default: every core) or a positive whole number of threads."""
    if threads is None:
        return None
    if isinstance(threads, bool) or int(threads) != threads or int(threads) < 1:
        raise ValueError(f"threads must be a positive whole number, got {threads!r}")
    return int(threads)


def thread_settings() -> dict[str, int]:
    """TensorFlow's current ``intra_op`` and ``inter_op`` thread counts (0 = its default, which
    is every core). Imports TensorFlow."""
    tf = _tf()
    return {
        "intra_op": int(tf.config.threading.get_intra_op_parallelism_threads()),
        "inter_op": int(tf.config.threading.get_inter_op_parallelism_threads()),
    }


def configure_threads(threads: int | None, notes: list[str] | None = None) -> bool:
    """Cap TensorFlow at ``threads`` intra-op threads (and as many inter-op threads, at most 2:
    the heatmap graph is a chain of operations, so more inter-op threads only compete).

    ``None`` leaves TensorFlow's defaults. Returns True if the cap is in force. Once TensorFlow
    has run an operation in this process its pools are fixed: unless they already have this
    size, a note goes to ``notes`` and False is returned.
    """
    threads = check_threads(threads)
    if threads is None:
        return True
    inter = min(threads, 2)
    # Also for any TensorFlow started later in a child process that inherits the environment.
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(inter)
    tf = _tf()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        current = thread_settings()
        if current["intra_op"] == threads and current["inter_op"] == inter:
            return True
        if notes is not None:
            notes.append(f"TensorFlow was already running, so the limit of {threads} threads applies from the next start")
        return False
    return True


def _tf():
    from viewer.model import import_keras

    import_keras()  # TensorFlow's quiet start-up
    import tensorflow as tf

    return tf
