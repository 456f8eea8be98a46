"""download: bring the raw data into ``data/raw/`` and record its provenance.

Sources (``data.source``):

- ``synthetic``: the built-in phantom cohort as CT DICOM, labelled by ``labels.csv``
  (PatientID -> label);
- ``url``: an http, https or file URL of a zip or tar archive, checked against
  ``data.sha256`` before anything is extracted;
- ``kaggle``: a public Kaggle dataset by handle, through kagglehub;
- ``path``: a local folder, or a zip or tar archive.

Everything lands in a temporary folder first and replaces ``data/raw`` only when
complete. ``data/raw/SOURCE.json`` says what came from where.
"""

from __future__ import annotations

if not __package__:  # started as a file: stages/stages.py says how to start it
    import stages  # noqa: F401

import hashlib
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from lungct import phantom
from lungct.artifacts import RAW_DIR, RAW_LABELS, RAW_SOURCE
from lungct.atomic import atomic_dir, sha256_file, write_csv, write_json
from lungct.data.layouts import detect_layout
from lungct.errors import UserError, run_stage
from lungct.io.sources import fetch_url, kaggle_download, unpack_or_copy, verify_sha256
from lungct.names import AnnotationForm
from lungct.params import DataParams, Params, load_params, redact

log = logging.getLogger("download")


def tree_digest(root: Path) -> tuple[str, int, int]:
    """sha256 over the sorted relative paths and contents of a tree: (digest, files, bytes)."""
    digest = hashlib.sha256()
    files = total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(sha256_file(path)))
        files += 1
        total += path.stat().st_size
    return digest.hexdigest(), files, total


def write_synthetic(params: Params, dest: Path) -> dict:
    synthetic = params.data.synthetic
    rows = phantom.write_cohort(
        dest,
        patients=synthetic.patients,
        slices=synthetic.slices,
        image_size=synthetic.image_size,
        class_balance=dict(synthetic.class_balance),
        seed=params.base.seed,
        annotations=synthetic.annotations,
        transfer_syntax=synthetic.transfer_syntax,
    )
    if synthetic.annotations == AnnotationForm.LABELS:  # annotated forms label slices themselves
        write_csv(dest / RAW_LABELS, pd.DataFrame(rows, columns=["PatientID", "label"]))
    # No clock here on purpose: same params, same bytes, no spurious downstream reruns.
    return {"generator": "lungct.phantom", "seed": params.base.seed, **synthetic.model_dump()}


def fetch_external(data: DataParams, dest: Path, scratch: Path) -> dict:
    """Fetch a url, kaggle or path source into ``dest``; return its provenance fields."""
    limits = {"max_bytes": data.max_bytes, "max_members": data.max_members, "progress": True}
    if data.source == "url":
        name = Path(redact(data.url)).name[:100]  # archive errors name it
        archive = scratch / (name if name.strip(".") else "archive")
        actual = fetch_url(data.url, archive, max_bytes=data.max_bytes, progress=True)
        verify_sha256(redact(data.url), actual, data.sha256)  # before anything is extracted
        unpack_or_copy(archive, dest, **limits)
        return {"url": redact(data.url), "sha256": actual}
    if data.source == "kaggle":
        unpack_or_copy(kaggle_download(data.kaggle_handle), dest, **limits)
        return {"handle": data.kaggle_handle}
    path = Path(data.path).expanduser()
    unpack_or_copy(path, dest, **limits)
    return {"path": str(path), **({"sha256": sha256_file(path)} if path.is_file() else {})}


def detect_layout_of(data: DataParams, tmp: Path) -> str:
    """The layout of what was fetched into ``tmp``; an error names the source, not ``tmp``."""
    try:
        return detect_layout(tmp)
    except UserError as err:
        where = {"url": redact(data.url), "kaggle": data.kaggle_handle}.get(data.source, data.path)
        raise UserError(str(err).replace(str(tmp), where, 1)) from None


def download(params: Params, out: Path = RAW_DIR) -> dict:
    data = params.data
    with atomic_dir(out) as tmp:
        if data.source == "synthetic":
            origin, detected = write_synthetic(params, tmp), False
            layout = phantom.FORM_LAYOUTS[params.data.synthetic.annotations]
        else:
            # Scratch space for the archive, outside the tree; a killed run's leftovers
            # match the stale-temporary pattern that atomic_dir removes.
            with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as scratch:
                origin = fetch_external(data, tmp, Path(scratch))
            origin["downloaded_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            detected = data.layout == "auto"
            layout = detect_layout_of(data, tmp) if detected else data.layout
        tree, files, size = tree_digest(tmp)
        source = {
            "source": data.source,
            **origin,
            "layout": layout,
            "layout_detected": detected,
            "tree_sha256": tree,
            "files": files,
            "bytes": size,
        }
        write_json(tmp / RAW_SOURCE, source)
    log.info(
        "download: %d files (%d bytes) from source '%s', layout '%s' -> %s",
        files,
        size,
        data.source,
        layout,
        out,
    )
    return source


def main() -> None:
    download(load_params())


if __name__ == "__main__":
    run_stage(main)
