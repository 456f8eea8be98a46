"""TensorFlow's start-up chatter kept out of a stage's output: the one home of that policy.

:func:`quiet_tensorflow` runs when ``lungct.model`` is imported, before any TensorFlow
import (every TensorFlow import of the project is in ``lungct.model``). Unless
``LUNGCT_TF_LOGS`` is set (``1``: TensorFlow logs as it would on its own):

- ``TF_CPP_MIN_LOG_LEVEL``, where not set already, is 3 (fatal lines only) on a machine
  without a GPU, where TensorFlow's CUDA probe logs ``failed call to cuInit`` as an
  error, and 2 (errors and fatal lines) where a GPU is present or asked for, so that a
  real GPU problem still shows (:func:`gpu_requested`);
- the first ``import tensorflow`` runs with file descriptor 2 through a filter process
  (this file run as a script): TensorFlow's native libraries log while they load, before
  that level applies (absl's ``before absl::InitializeLog()`` lines: oneDNN, the CUDA
  stub). The filter drops those below the level (:func:`is_chatter`) and passes every
  other line on at once: Python warnings and tracebacks, a fatal line before an abort;
- the Python loggers ``absl`` and ``tensorflow`` log warnings and worse, not TensorFlow's
  information lines (such as the SavedModel export's renamed input names).
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.abc import MetaPathFinder

SWITCH = "LUNGCT_TF_LOGS"  # set (not 0): TensorFlow's chatter as it comes
LEVEL = "TF_CPP_MIN_LOG_LEVEL"  # TensorFlow's native log level: 0 info .. 3 fatal only
CPU_LEVEL = 3
GPU_LEVEL = 2
SEVERITIES = "IWEF"  # absl's line prefixes, by rank: info, warning, error, fatal
BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# I0000 00:00:1796614900.692701   28995 port.cc:153] oneDNN custom operations are on. ...
ABSL_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]\s]+:\d+\] ")
# set once their package is imported (absl's logger is of absl's own class)
PYTHON_LOGGERS = ("absl", "tensorflow")
FILTER_WAIT_S = 5.0  # for the filter to pass on what is left once the import is done


def chatter_wanted() -> bool:
    """Whether ``LUNGCT_TF_LOGS`` asks for TensorFlow's logs as they come."""
    return os.environ.get(SWITCH, "").strip() not in ("", "0")


def gpu_requested() -> bool:
    """Whether this process may use a GPU: ``CUDA_VISIBLE_DEVICES`` naming a device, or,
    where it is not set, an NVIDIA device file (``/dev/nvidia*``)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return visible.split(",")[0].strip() not in ("", "-1")
    return bool(glob.glob("/dev/nvidia*"))


def native_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it (0 where unset or not a number)."""
    text = os.environ.get(LEVEL, "").strip()
    return int(text) if text.isdigit() else 0


def is_chatter(line: str, level: int) -> bool:
    """Whether a line on stderr is TensorFlow's native start-up chatter at ``level``:
    absl's banner, or an absl line of a severity below it. Fatal lines never are."""
    if level < 1:
        return False
    if line.rstrip("\r\n") == BANNER:
        return True
    match = ABSL_LINE.match(line)
    return match is not None and SEVERITIES.index(match[1]) < min(level, CPU_LEVEL)


def quiet_tensorflow() -> None:
    """Apply the policy (the module's docstring) to this process, unless ``LUNGCT_TF_LOGS``
    is set. Without effect on the native logs once TensorFlow is imported."""
    if chatter_wanted():
        return
    os.environ.setdefault(LEVEL, str(GPU_LEVEL if gpu_requested() else CPU_LEVEL))
    if "tensorflow" not in sys.modules and not any(
        isinstance(finder, _QuietImport) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport(MetaPathFinder):
    """Finds nothing itself: hands on tensorflow's spec, its loading wrapped in
    :func:`native_lines_filtered` and followed by the Python loggers' levels, once."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the finders after this one
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        load = loader.exec_module

        def exec_module(module) -> None:
            del loader.exec_module  # the loader's own again
            with native_lines_filtered(native_level()):
                load(module)
            for logger in PYTHON_LOGGERS:
                if logger in sys.modules or f"{logger}.logging" in sys.modules:
                    logging.getLogger(logger).setLevel(logging.WARNING)

        loader.exec_module = exec_module
        return spec


@contextmanager
def native_lines_filtered(level: int) -> Iterator[None]:
    """File descriptor 2 through the filter process for the block: absl's chatter below
    ``level`` dropped, every other line passed on to stderr as it comes. A process of its
    own, not a thread: a native library loading holds the interpreter's lock, and a
    fatal line must get out before the abort that follows it."""
    if level < 1:
        yield
        return
    sys.stderr.flush()
    try:
        filter_process = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, str(level)],
            stdin=subprocess.PIPE,
            stdout=2,  # this process's stderr, before the switch
        )
    except OSError:  # no interpreter to start, no file descriptors left: unfiltered
        yield
        return
    saved = os.dup(2)
    os.dup2(filter_process.stdin.fileno(), 2)
    filter_process.stdin.close()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer gone: the filter ends
        os.close(saved)
        try:
            filter_process.wait(FILTER_WAIT_S)
        except subprocess.TimeoutExpired:  # a process started meanwhile holds the pipe
            _still_filtering.append(filter_process)  # it passes the lines on as they come


_still_filtering: list[subprocess.Popen] = []


def _filter(level: int) -> None:
    """The filter process: stdin to stdout (the caller's stderr), less the chatter; it
    ends when the last writer closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to report
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        if not is_chatter(line.decode("utf-8", "replace"), level):
            try:
                out.write(line)
                out.flush()
            except OSError:  # stderr gone: read on, so that no writer blocks
                pass


if __name__ == "__main__":
    _filter(int(sys.argv[1]))
