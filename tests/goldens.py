"""Where a fixture folder's golden file is on this machine: `<folder>/cpu-<class>/<name>` when
hlo/cpu_goldens.py wrote JAX's outputs for this CPU class there, else `<folder>/<name>` (the
rule of tests/common/mod.rs `numbered`)."""

from __future__ import annotations

import platform
import re
from pathlib import Path


def cpu_class() -> str:
    """The widest x86 vector ISA (avx512, avx2, avx, sse), else the machine name."""
    machine = platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return machine
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    for isa, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx")):
        if flag in flags:
            return isa
    return "sse"


def golden(folder: Path, name: str) -> Path:
    """`folder/name`, or this CPU class's copy of it (for out*.npy and baked_out*.npy)."""
    here = folder / f"cpu-{cpu_class()}"
    m = re.fullmatch(r"(.*?)\d+\.npy", name)
    if m and (here / f"{m.group(1)}0.npy").is_file():
        return here / name
    return folder / name
