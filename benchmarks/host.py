"""What a benchmark prints about the machine it ran on, so a reader can judge its figures."""

from __future__ import annotations

import math
import os
import platform


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
