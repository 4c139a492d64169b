"""Where a fixture folder's golden file is on this machine (the rule of tests/common/mod.rs
`numbered`).

XLA picks its CPU instructions from the host (LLVM's host CPU and its features), so JAX's own
low bits differ between CPUs. `hlo/cpu_goldens.py` runs JAX on a machine and writes the outputs
that differ from the committed ones to `<folder>/cpu-<key>/`, and records the machine in
`hlo/cpu-classes/<key>.txt`. The key is LLVM's name for the host CPU (`znver4`,
`sapphirerapids`, ...: what `rustc --print target-cpus` calls `native`), or, for goldens
recorded before the name was, the widest x86 vector ISA (`avx2`). The first key with a record
applies; a folder without `cpu-<key>/` then has the committed outputs as its goldens. Without a
record for either key, the committed ones apply to every folder.

    python3 tests/goldens.py        # prints the key that applies here, or `export`
"""

from __future__ import annotations

import functools
import platform
import re
import subprocess
import sys
from pathlib import Path

HLO = Path(__file__).resolve().parent.parent / "hlo"


@functools.cache
def cpu_name() -> str:
    """LLVM's name for this host's CPU, as rustc reports it, or `unknown`."""
    try:
        out = subprocess.run(["rustc", "--print", "target-cpus"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    m = re.search(r"^\s*native\s.*\(currently (\S+)\)", out, re.M)
    return m.group(1) if m else "unknown"


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


@functools.cache
def golden_key() -> str | None:
    """The key whose goldens apply here (the first of the CPU's name and its ISA class that
    `hlo/cpu-classes/` records), or None: the committed outputs apply."""
    for key in (cpu_name(), cpu_class()):
        if (HLO / "cpu-classes" / f"{key}.txt").is_file():
            return key
    return None


def golden(folder: Path, name: str) -> Path:
    """`folder/name`, or this CPU's copy of it (for out*.npy and baked_out*.npy)."""
    key = golden_key()
    m = re.fullmatch(r"(.*?)\d+\.npy", name)
    if key and m:
        here = folder / f"cpu-{key}"
        if (here / f"{m.group(1)}0.npy").is_file():
            return here / name
    return folder / name


if __name__ == "__main__":
    print(golden_key() or "export")
    sys.exit(0)
