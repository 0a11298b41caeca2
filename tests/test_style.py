"""The code keeps to the style limits setup.cfg sets (flake8: pyflakes, pycodestyle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_flake8_finds_nothing():
    run = subprocess.run([sys.executable, "-m", "flake8", "jhub_spark_scaler", "tests", "benchmarks"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and not run.stdout, run.stdout + run.stderr
