"""The one error type for what a user did wrong, and the stage entry point that reports it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad params or bad input: reported as one line naming the key or file, exit status 2.

    Any other exception escaping a stage is a bug in the project and keeps its traceback.
    """


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a :class:`UserError` becomes one line on stderr and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
