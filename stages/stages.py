"""Imported only when a stage is started from the wrong folder: it ends the run with one
line saying how to start it.

``python -m stages.<name>`` works from the project root (the folder holding dvc.yaml),
where ``stages`` is this package. Started from inside ``stages/`` (``python -m
stages.train``), Python finds this file as a top-level module ``stages`` instead; started
as a file (``python stages/train.py``, ``python train.py``), the stage's ``__package__`` is
empty and the stage imports this module, which its own folder then provides.
"""

import sys
from pathlib import Path


def _stage_name() -> str:
    """The stage the user tried to run, from the command line as typed."""
    argv = getattr(sys, "orig_argv", sys.argv)
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv):
            return argv[i + 1].rpartition(".")[2]
        if arg.endswith(".py"):
            return Path(arg).stem
    return "<name>"


_ROOT = Path(__file__).resolve().parents[1]
sys.exit(
    f"error: run the stages from the project root ({_ROOT}): "
    f"cd {_ROOT} && python -m stages.{_stage_name()}"
)
