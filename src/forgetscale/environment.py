"""What this machine and these libraries are: recorded with every reference, run and study,
so that a number can be traced to what produced it. Imports nothing heavy (no torch)."""

from __future__ import annotations

from pathlib import Path


def library_versions() -> dict[str, str]:
    """Versions of the libraries that can change a run's numbers."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("forgetscale", "torch", "transformers", "peft", "safetensors", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for reports and benchmarks."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
