"""Predictions written out: CSV, JSON (with the failures) or an aligned table for people.

The rows are :class:`lungct.serving.inference.Prediction` (an image, a frame, or a folder's
series); probabilities are rounded to :data:`DECIMALS` places, as in
``metrics/predictions.csv``. What a screen shows beside them travels with them
(:class:`About`): the model (file name, sha256, version, classes, what it was trained on) and
the contract's warning, as the JSON's ``model`` and ``warning`` and as the CSV's leading
``# key: value`` lines.

Text that is not ours (file names, class names, what a download record says) is shown
safely: in the table and the CSV control characters are written escaped
(:func:`lungct.errors.printable`: ``\x1b``, ``\n``), and a CSV cell that a spreadsheet
would run as a formula (beginning with ``=``, ``+``, ``-``, ``@``, tab or CR) gets a leading
``'`` (OWASP's CSV injection advice). JSON keeps every name exact (its own escapes).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungct.artifacts import PROBABILITY_DECIMALS as DECIMALS
from lungct.atomic import sha256_file
from lungct.contract import Contract, model_version
from lungct.errors import printable
from lungct.serving.inference import Failure, Prediction

FORMATS = ("table", "csv", "json")
COLUMNS = ("file", "level", "frame", "series_uid", "images", "predicted")
# A cell quoted as the csv module quotes (delimiter, quote, line break), and also for a '#',
# so that a file name holding one stays data for ``pandas.read_csv(path, comment="#")``.
NEEDS_QUOTES = re.compile(r'[,"\r\n#]')
# What a spreadsheet reads as the start of a formula: such a text cell gets a leading "'".
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class About:
    """The model an answer came from, and the warning its contract gives (or None)."""

    model: dict[str, Any]  # file (name only), sha256, version, classes, trained_on, data
    warning: str | None

    @classmethod
    def of(cls, contract: Contract, model_file: str, sha256: str) -> About:
        """From the contract, the model file's name and its sha256."""
        model = {
            "file": model_file,
            "sha256": sha256,
            "version": model_version(sha256),
            "classes": list(contract.classes),
            "trained_on": contract.describe_data(),
            "data": contract.data.to_dict() if contract.data is not None else None,
            "uncertain": contract.describe_uncertain(),
        }
        return cls(model, contract.warning)

    @classmethod
    def read(cls, contract: Contract, model_path: Path) -> About:
        """Of the model file at ``model_path`` (its sha256 read here)."""
        return cls.of(contract, Path(model_path).name, sha256_file(Path(model_path)))

    def comment_lines(self) -> str:
        """``# key: value`` lines, one line each (model_file, model_sha256, model_version,
        classes, trained_on, and warning when there is one)."""
        items = [
            ("model_file", self.model["file"]),
            ("model_sha256", self.model["sha256"]),
            ("model_version", self.model["version"]),
            ("classes", ", ".join(self.model["classes"])),
            ("trained_on", self.model["trained_on"]),
        ]
        if self.warning:
            items.append(("warning", self.warning))
        return "".join(
            f"# {key}: {printable(' '.join(str(value).split()))}\n" for key, value in items
        )


def records(rows: list[Prediction], contract: Contract) -> list[dict]:
    """One flat record per row: file, level, frame, series_uid, images, predicted (a class,
    or ``uncertain``: :meth:`Contract.answer`), p_<class>."""
    classes = contract.classes
    out = []
    for row in rows:
        record = {
            "file": row.file,
            "level": row.level,
            "frame": row.frame,
            "series_uid": row.series_uid,
            "images": row.images,
            "predicted": row.answer(contract),
        }
        for name, p in zip(classes, row.probabilities, strict=True):
            record[f"p_{name}"] = round(float(p), DECIMALS)
        out.append(record)
    return out


def _cell(value: object) -> str:
    """A CSV cell: a text cell safe for a terminal and a spreadsheet (:func:`text_cell`),
    quoted where needed; None (no frame) is written as ""."""
    text = "" if value is None else text_cell(value) if isinstance(value, str) else str(value)
    return '"' + text.replace('"', '""') + '"' if NEEDS_QUOTES.search(text) else text


def text_cell(text: str) -> str:
    """Text from outside (a file name, a class, a UID) as a CSV cell holds it: control
    characters escaped, and a leading "'" where a spreadsheet would see a formula."""
    return ("'" if text.startswith(FORMULA_START) else "") + printable(text)


def render_csv(rows: list[Prediction], contract: Contract, about: About) -> str:
    """The ``# key: value`` lines of ``about``, then a header and one line per row."""
    columns = [*COLUMNS, *(f"p_{c}" for c in contract.classes)]
    lines = [columns, *([record[c] for c in columns] for record in records(rows, contract))]
    return about.comment_lines() + "".join(",".join(map(_cell, line)) + "\n" for line in lines)


def document(
    rows: list[Prediction], contract: Contract, failures: list[Failure], about: About
) -> dict:
    """The JSON answer: the model and its warning, the classes, one record per row, one per
    failure (the predict command's ``--format json`` and the service's ``POST /predict``)."""
    return {
        "model": about.model,
        "warning": about.warning,
        "classes": list(contract.classes),
        "predictions": records(rows, contract),
        "failures": [{"file": f.file, "reason": f.reason, "detail": f.detail} for f in failures],
    }


def render_json(
    rows: list[Prediction], contract: Contract, failures: list[Failure], about: About
) -> str:
    return json.dumps(document(rows, contract, failures, about), indent=2) + "\n"


def render_table(rows: list[Prediction], contract: Contract) -> str:
    """Aligned columns for people: file (a frame or a folder's series named after it),
    predicted class (or ``uncertain``), one probability column per class."""
    header = ["file", "predicted", *map(printable, contract.classes)]  # text from outside: escaped
    lines = []
    for row in rows:
        name = row.file
        if row.frame is not None:
            name += f" [frame {row.frame}]"
        if row.level == "series":
            name += f" [series {row.series_uid}, {row.images} images]"
        predicted = row.answer(contract)
        lines.append(
            [printable(name), printable(predicted), *(f"{p:.4f}" for p in row.probabilities)]
        )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        rest = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(first + rest).rstrip()

    return "\n".join([fmt(header), *(fmt(line) for line in lines)]) + "\n"


def render(
    fmt: str,
    rows: list[Prediction],
    contract: Contract,
    failures: list[Failure],
    about: About,
    to_file: bool = False,
) -> str:
    """The predictions in one of :data:`FORMATS`. CSV and JSON always carry ``about``; the
    table (for a screen, where predict prints the warning on stderr) carries its
    ``# key: value`` lines when written ``to_file``."""
    if fmt == "csv":
        return render_csv(rows, contract, about)
    if fmt == "json":
        return render_json(rows, contract, failures, about)
    table = render_table(rows, contract)
    return about.comment_lines() + table if to_file else table
