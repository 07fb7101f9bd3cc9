"""Does this CPU run bfloat16 natively? Emulated bf16 is several times *slower* than float32.

oneDNN runs bf16 convolutions on AMX or AVX512-BF16 (x86) and on the ``bf16`` extension (aarch64). Without
them PyTorch emulates bf16 and, for the VGG teachers, is about 8x slower than float32 (measured by
``python benchmarks/bench_bf16.py``; see ``docs/training.md``). The label builder, the hard-pair labeller and
the training engine ask :func:`native_bf16_cpu` before autocasting to bf16 on the CPU.
"""

from __future__ import annotations

import functools
import os
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["native_bf16_cpu", "cpu_flags", "resolve_bf16_teachers", "DEFAULT_BF16_TEACHERS"]

#: the teachers that gain from bf16 where the CPU has it (AlexNet is small and gains nothing)
DEFAULT_BF16_TEACHERS = ("lpips-vgg", "dists")
_X86_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags in ``/proc/cpuinfo`` (x86 ``flags``, aarch64 ``Features``); empty where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def _native(flags: set[str], machine: str) -> bool:
    machine = machine.lower()
    if machine in ("aarch64", "arm64"):
        return "bf16" in flags
    return any(f in flags for f in _X86_FLAGS)


@functools.lru_cache(maxsize=1)
def native_bf16_cpu() -> bool:
    """True where this CPU runs bf16 in hardware; ``LIPSIM_NATIVE_BF16=0/1`` overrides the detection.

    Only Linux's ``/proc/cpuinfo`` is read; elsewhere (macOS, Windows) the answer is False unless overridden.
    """
    forced = os.environ.get("LIPSIM_NATIVE_BF16")
    if forced is not None and forced.strip() in ("0", "1"):
        return forced.strip() == "1"
    return _native(cpu_flags(), platform.machine())


def resolve_bf16_teachers(spec: str | Sequence[str], teachers: Sequence[str]) -> list[str]:
    """Turn a ``--bf16-teachers`` value into the teachers to autocast, in the order of ``teachers``.

    Args:
        spec: ``"auto"`` (:data:`DEFAULT_BF16_TEACHERS` where :func:`native_bf16_cpu`, else none), ``""`` (none),
            a comma-separated list, or a sequence of names.
        teachers: the label set's teachers; names not among them are ignored (as the manifest does).
    """
    if isinstance(spec, str):
        if spec.strip() == "auto":
            if not native_bf16_cpu():
                warnings.warn("this CPU has no bf16 hardware (AMX / AVX512-BF16 / aarch64 bf16), where bf16 "
                              "autocast is several times slower: the teachers run in float32",
                              RuntimeWarning, stacklevel=2)
                return []
            names: Sequence[str] = DEFAULT_BF16_TEACHERS
            return [t for t in teachers if t in names]
        names = [t.strip() for t in spec.split(",") if t.strip()]
    else:
        names = list(spec)
    return [t for t in teachers if t in names]
