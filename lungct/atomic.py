"""Atomic writes: a stage killed half way leaves no output that a rerun would trust.

Everything is written under a temporary sibling name and moved into place with
``os.replace`` only once complete. Leftovers of killed runs are hidden
(``.<name>.tmp-<pid>``) and removed by the next run. Files are named by content with
:func:`sha256_file`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lungct.errors import UserError

if TYPE_CHECKING:  # a type only: the service writes no tables and has no pandas
    import pandas as pd


def _clear_stale(target: Path) -> None:
    for stale in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
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


def check_replaceable(target: Path) -> None:
    """Raise :class:`UserError` unless ``target`` is a new path or a regular file: a file
    write never replaces a folder, a symbolic link (nor writes through it), a FIFO, a
    socket or a device with a regular file."""
    try:
        mode = os.lstat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # a new path (or one whose parent cannot be made: the write says so)
    if stat.S_ISREG(mode):
        return
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ]
    kind = next((words for test, words in kinds if test(mode)), "a device")
    raise UserError(f"{target}: is {kind}; give a new path or a regular file to replace")


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path (same suffix) that replaces ``target`` when the block succeeds:
    ``target`` must be a new path or a regular file (:func:`check_replaceable`), checked
    before and again just before the move; on any failure the temporary file is removed."""
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(target)
    tmp = _tmp_sibling(target, target.suffix)  # keep the suffix: Keras checks it
    try:
        yield tmp
        check_replaceable(target)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file's bytes."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def write_json(path: Path, obj: object) -> None:
    """Write JSON with sorted keys and a final newline, so equal content gives equal bytes."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
