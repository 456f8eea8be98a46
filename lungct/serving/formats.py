"""Predictions written out: CSV, JSON (with the failures) or an aligned table for people.

The rows are :class:`lungct.serving.inference.Prediction` (an image, a frame, or a folder's
series); probabilities are rounded to :data:`DECIMALS` places, as in
``metrics/predictions.csv``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from lungct.artifacts import PROBABILITY_DECIMALS as DECIMALS
from lungct.serving.inference import Failure, Prediction

FORMATS = ("table", "csv", "json")


def records(rows: list[Prediction], classes: Sequence[str]) -> list[dict]:
    """One flat record per row: file, level, frame, series_uid, images, predicted, p_<class>."""
    out = []
    for row in rows:
        record = {
            "file": row.file,
            "level": row.level,
            "frame": row.frame,
            "series_uid": row.series_uid,
            "images": row.images,
            "predicted": row.predicted(classes),
        }
        for name, p in zip(classes, row.probabilities, strict=True):
            record[f"p_{name}"] = round(float(p), DECIMALS)
        out.append(record)
    return out


def render_csv(rows: list[Prediction], classes: Sequence[str]) -> str:
    buffer = io.StringIO()
    columns = ["file", "level", "frame", "series_uid", "images", "predicted"]
    writer = csv.DictWriter(
        buffer, fieldnames=columns + [f"p_{c}" for c in classes], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(records(rows, classes))  # None (no frame) is written as ""
    return buffer.getvalue()


def document(rows: list[Prediction], classes: Sequence[str], failures: list[Failure]) -> dict:
    """The JSON answer: the classes, one record per row, one per failure (the predict
    command's ``--format json`` and the service's ``POST /predict``)."""
    return {
        "classes": list(classes),
        "predictions": records(rows, classes),
        "failures": [{"file": f.file, "reason": f.reason, "detail": f.detail} for f in failures],
    }


def render_json(rows: list[Prediction], classes: Sequence[str], failures: list[Failure]) -> str:
    return json.dumps(document(rows, classes, failures), indent=2) + "\n"


def render_table(rows: list[Prediction], classes: Sequence[str]) -> str:
    """Aligned columns for people: file (a frame or a folder's series named after it),
    predicted class, one probability column per class."""
    header = ["file", "predicted", *classes]
    lines = []
    for row in rows:
        name = row.file
        if row.frame is not None:
            name += f" [frame {row.frame}]"
        if row.level == "series":
            name += f" [series {row.series_uid}, {row.images} images]"
        lines.append([name, row.predicted(classes), *(f"{p:.4f}" for p in row.probabilities)])
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        rest = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(first + rest).rstrip()

    return "\n".join([fmt(header), *(fmt(line) for line in lines)]) + "\n"


def render(
    fmt: str, rows: list[Prediction], classes: Sequence[str], failures: list[Failure]
) -> str:
    """The predictions in one of :data:`FORMATS`."""
    if fmt == "csv":
        return render_csv(rows, classes)
    if fmt == "json":
        return render_json(rows, classes, failures)
    return render_table(rows, classes)
