"""What a benchmark prints about the machine it ran on, so a reader can judge its figures."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load1() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def machine(tensorflow: bool = True) -> str:
    """Cores, load, OS and Python, and the TensorFlow and Keras versions when asked."""
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    line = (
        f"{cores} cores ({usable} usable), 1-min load {load1():.2f} at start, "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
    )
    if tensorflow:
        import keras
        import tensorflow as tf

        line += f", TensorFlow {tf.__version__}, Keras {keras.__version__}"
    return line


def stage(name: str, project: Path) -> float:
    """Run one stage in ``project`` as dvc would; return its wall time; exit with its
    message on failure."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{name}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"stage {name} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start
