"""Atomic writes: a stage killed half way leaves no output that a rerun would trust.

Everything is written under a temporary sibling name and moved into place with
``os.replace`` only once complete. Leftovers of killed runs are hidden
(``.<name>.tmp-<pid>``) and removed by the next run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


def _clear_stale(target: Path) -> None:
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _tmp_sibling(target: Path, suffix: str = "") -> Path:
    return target.parent / f".{target.name}.tmp-{os.getpid()}{suffix}"


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``target`` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(target)
    tmp = _tmp_sibling(target)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    os.replace(tmp, target)


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path (same suffix) that replaces ``target`` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(target)
    tmp = _tmp_sibling(target, target.suffix)  # keep the suffix: Keras checks it
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def write_json(path: Path, obj: object) -> None:
    """Write JSON with sorted keys and a final newline, so equal content gives equal bytes."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
