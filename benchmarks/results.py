"""Write one section of benchmarks/RESULTS.md, keeping the other sections."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """The machine and date a result was measured on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {cpu}, {os.cpu_count()} CPUs, "
            f"{memory:.0f} GiB, Python {platform.python_version()}")


def write_section(title: str, body: list[str]) -> None:
    """Replace (or append) the `## title` section of RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    heading = f"## {title}"
    start = text.find(heading)
    if start != -1:
        end = text.find("\n## ", start + 1)
        text = text[:start] + (text[end + 1:] if end != -1 else "")
    RESULTS.write_text(text.rstrip() + "\n\n" + "\n".join([heading, "", *body]) + "\n")
