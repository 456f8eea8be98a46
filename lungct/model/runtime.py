"""TensorFlow set-up for a run: seeds and deterministic ops, the precision policy
(``train.precision``) and the distribution strategy (``train.strategy``)."""

from __future__ import annotations

import keras
import tensorflow as tf


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and Keras/TF and make TF ops deterministic (same params, same bytes)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """``auto``: MirroredStrategy over all GPUs when there are several, else the default
    strategy; ``mirrored``: MirroredStrategy over the GPUs, or over the logical CPU devices
    when there is no GPU (how the tests exercise it); ``default``: one device."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo: native bfloat16 maths


def cpu_has_bfloat16() -> bool:
    """Whether this CPU does bfloat16 maths natively (AVX512_BF16 or AMX), as Linux reports
    it; False where it cannot tell. Without them oneDNN runs bfloat16 training 0.4x as
    fast as float32 (AVX-512) or not at all (AVX2 only): docs/benchmarks.md."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in BFLOAT16_CPU_FLAGS)
    except OSError:
        pass
    return False


def compute_dtype(precision: str) -> str:
    """``train.precision`` as a Keras dtype policy: ``auto`` is ``mixed_bfloat16`` on a CPU
    with native bfloat16 maths and no GPU (2x and more the float32 speed there), else
    ``float32``."""
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU") or not cpu_has_bfloat16():
        return "float32"
    return "mixed_bfloat16"
