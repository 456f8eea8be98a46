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
import math
import os
import re
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


# What read_json admits: the project's JSON files (a contract, a model card, an export
# record, a Keras model's config.json) are kilobytes, nested under 20 levels.
MAX_JSON_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = str.maketrans("", "", "".join(chr(c) for c in range(128) if chr(c) not in "[]{}"))


def parse_json(text: str | bytes, allow_nan: bool = False) -> object:
    """JSON text, bounded: over :data:`MAX_JSON_BYTES`, nested deeper than
    :data:`MAX_JSON_DEPTH`, or (unless ``allow_nan``) holding ``NaN``, ``Infinity`` or a
    number past float range, it is a :class:`json.JSONDecodeError` saying so (as for any
    malformed JSON: callers word it with the file's name), never a RecursionError."""
    if isinstance(text, bytes | bytearray):
        if len(text) > MAX_JSON_BYTES:
            raise _too_large(len(text))
        text = bytes(text).decode("utf-8")
    if len(text) > MAX_JSON_BYTES:
        raise _too_large(len(text))
    depth = 0
    for char in _JSON_STRING.sub("", text).translate(_NOT_BRACKETS):
        depth += 1 if char in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise json.JSONDecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels", text, 0)

    def finite(number: str) -> float:
        value = float(number)
        if not (allow_nan or math.isfinite(value)):
            raise json.JSONDecodeError(f"{number[:20]} is past the float range", text, 0)
        return value

    def constant(name: str) -> float:
        if not allow_nan:
            raise json.JSONDecodeError(f"{name} is not a number JSON allows", text, 0)
        return float(name)

    try:
        return json.loads(text, parse_float=finite, parse_constant=constant)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # an integer of more digits than int() reads
        raise json.JSONDecodeError(str(exc).split(";")[0], text, 0) from None


def _too_large(size: int) -> json.JSONDecodeError:
    return json.JSONDecodeError(
        f"{size} bytes, over the {MAX_JSON_BYTES} a JSON file of this project may have", "", 0
    )


def read_json(path: Path, allow_nan: bool = False) -> object:
    """A JSON file read with :func:`parse_json`'s bounds (the size checked before reading
    it all). ``OSError`` and ``UnicodeDecodeError`` as ``Path.read_text`` raises them;
    any problem with the content is a :class:`json.JSONDecodeError`: the one reader of the
    project's JSON files."""
    with open(path, "rb") as stream:
        data = stream.read(MAX_JSON_BYTES + 1)
    return parse_json(data, allow_nan)


def write_json(path: Path, obj: object) -> None:
    """Write JSON with sorted keys and a final newline, so equal content gives equal bytes."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
