"""The one error type for what a user did wrong, and the stage entry point that reports it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad params or bad input: reported as one line naming the key or file, exit status 2.

    Any other exception escaping a stage is a bug in the project and keeps its traceback.
    """


class SkippedFile(Exception):  # noqa: N818 - a manifest outcome, not a failure
    """An input file that is not converted; ``reason`` is the manifest's reason code
    (:mod:`lungct.reasons`, :mod:`lungct.annotations.reasons`)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def printable(text: str) -> str:
    """Text safe to print in a one-line message: control characters (newlines included)
    and undecodable bytes (surrogate escapes) are shown escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def first_line(exc: BaseException) -> str:
    """An exception as one short line: the first line of its message, or its type's name
    (library messages, pydicom's, Keras', urllib's, can span many lines or be empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe(exc: BaseException) -> str:
    """``Type: first line`` of an unexpected exception (``Type`` alone when it has no message)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``: a :class:`UserError` becomes one line on stderr and exit 2;
    an ``OSError`` (permissions, a full disk, a path that is a file) one line naming the
    path and exit 1. Anything else is a bug and keeps its traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # the machine's problem (permissions, full disk), not a bug
        where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        print(f"error: {where + ': ' if where else ''}{err.strerror or err}", file=sys.stderr)
        sys.exit(1)
    except MemoryError:
        print(
            "error: out of memory (try a smaller batch_size or train.cache: file)", file=sys.stderr
        )
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
