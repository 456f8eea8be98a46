"""download: bring the raw data into ``data/raw/`` and record its provenance.

``data.source: synthetic`` writes the built-in phantom cohort as CT DICOM files,
labelled by ``data/raw/labels.csv`` (PatientID -> label).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pandas as pd

from lungct import phantom
from lungct.artifacts import RAW_DIR, RAW_LABELS, RAW_SOURCE
from lungct.atomic import atomic_dir, write_csv, write_json
from lungct.errors import run_stage
from lungct.params import Params, load_params

log = logging.getLogger("download")


def tree_digest(root: Path) -> tuple[str, int, int]:
    """sha256 over the sorted relative paths and contents of a tree: (digest, files, bytes)."""
    digest = hashlib.sha256()
    files = total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(data).digest())
        files += 1
        total += len(data)
    return digest.hexdigest(), files, total


def download(params: Params, out: Path = RAW_DIR) -> dict:
    synthetic = params.data.synthetic
    with atomic_dir(out) as tmp:
        rows = phantom.write_cohort(
            tmp,
            patients=synthetic.patients,
            slices=synthetic.slices,
            image_size=synthetic.image_size,
            class_balance=dict(synthetic.class_balance),
            seed=params.base.seed,
        )
        write_csv(tmp / RAW_LABELS, pd.DataFrame(rows, columns=["PatientID", "label"]))
        digest, files, size = tree_digest(tmp)
        # Deterministic on purpose (no clock): same params, same bytes, no spurious reruns.
        source = {
            "source": "synthetic",
            "generator": "lungct.phantom",
            "seed": params.base.seed,
            "synthetic": synthetic.model_dump(),
            "layout": "dicom",
            "labels": RAW_LABELS,
            "sha256": digest,
            "files": files,
            "bytes": size,
        }
        write_json(tmp / RAW_SOURCE, source)
    log.info("download: %d files (%d bytes) from source 'synthetic' -> %s", files, size, out)
    return source


def main() -> None:
    download(load_params())


if __name__ == "__main__":
    run_stage(main)
