"""Lung-PET-CT-Dx form of the phantom cohort: Pascal VOC boxes per slice.

Lung-PET-CT-Dx has only lung cancer patients, named by histology: ``Lung_Dx-A0001``
(A adenocarcinoma, B small cell, E large cell, G squamous cell carcinoma), and a box around
the tumour on every CT slice where it shows, in ``Annotation/<A0001>/<SOPInstanceUID>.xml``
(LabelImg's Pascal VOC files; the SOP Instance UID is the file name, ``filename`` says
``Unknow`` as in the real files).

Here the malignant patients become ``Lung_Dx-<letter><NNNN>`` (letters drawn per seed in the
real data set's proportions, 251 : 38 : 5 : 61; numbered per letter in patient order,
:func:`lung_dx_codes`) and get a box on every slice where the rendered nodule mask (body and
spicules) has a pixel: the mask's bounding box widened by 0-2 pixels per side, as drawn by
hand.  ``xmin``/``xmax`` are 0-based columns, ``ymin``/``ymax`` rows, inclusive.  Benign and
normal patients keep their ``PHANTOM-NNNN`` ids and DICOM series but get no annotation: the
real data set has no such patients, and a benign nodule left unboxed is what a tumour-only
annotation looks like.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lungct.names import AnnotationForm
from lungct.phantom.records import SeriesRecord, annotation_rng
from lungct.phantom.xml_text import Element, leaves, xml_text

ANNOTATION_DIR = "Annotation"
PATIENT_PREFIX = "Lung_Dx-"
LETTERS = {
    "A": "adenocarcinoma",
    "B": "small cell carcinoma",
    "E": "large cell carcinoma",
    "G": "squamous cell carcinoma",
}
_LETTER_COUNTS = (251, 38, 5, 61)  # Lung-PET-CT-Dx patients per letter
_LETTER_STREAM = 0x1E77E5


def lung_dx_codes(labels: Sequence[str], seed: int) -> dict[int, str]:
    """Patient index -> code (``A0001``) for every malignant patient of the cohort."""
    rng = np.random.default_rng([int(seed), _LETTER_STREAM])
    weights = np.array(_LETTER_COUNTS, dtype=float) / sum(_LETTER_COUNTS)
    letters = list(LETTERS)
    counters = dict.fromkeys(letters, 0)
    codes = {}
    for index, label in enumerate(labels):
        if label != "malignant":
            continue
        letter = letters[int(rng.choice(len(letters), p=weights))]
        counters[letter] += 1
        codes[index] = f"{letter}{counters[letter]:04d}"
    return codes


def slice_boxes(record: SeriesRecord, seed: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """``(slice, (xmin, ymin, xmax, ymax))`` for every slice where the nodule shows."""
    rng = annotation_rng(seed, record.index, AnnotationForm.VOC)
    size = record.size
    boxes = []
    for k, mask in enumerate(record.patient.nodule_mask):
        if not mask.any():
            continue
        rows, cols = np.nonzero(mask)
        margin = rng.integers(0, 3, size=4)
        box = (
            int(max(cols.min() - margin[0], 0)),
            int(max(rows.min() - margin[1], 0)),
            int(min(cols.max() + margin[2], size - 1)),
            int(min(rows.max() + margin[3], size - 1)),
        )
        boxes.append((k, box))
    return boxes


def voc_xml(size: int, letter: str, box: tuple[int, int, int, int]) -> bytes:
    """One slice's annotation, laid out as Lung-PET-CT-Dx's files are."""
    xmin, ymin, xmax, ymax = box
    obj = leaves(name=letter, pose="Unspecified", truncated=0, Difficult=0)
    obj.append(("bndbox", (), leaves(xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax)))
    content: list[Element] = [
        *leaves(folder="Unknow", filename="Unknow", path="Unknow"),
        ("source", (), ("Unknow", [("database", (), "Unknown")])),
        ("size", (), leaves(width=size, height=size, depth=1)),
        ("segmented", (), "0"),
        ("object", (), obj),
    ]
    root: Element = ("annotation", (("verified", "no"),), content)
    return xml_text(root, declaration=False, final_newline=False)


def write_voc_annotations(root: Path, record: SeriesRecord, code: str, seed: int) -> list[Path]:
    """Write ``root/Annotation/<code>/<SOPInstanceUID>.xml`` for every slice with a box."""
    folder = Path(root) / ANNOTATION_DIR / code
    folder.mkdir(parents=True, exist_ok=False)
    paths = []
    for k, box in slice_boxes(record, seed):
        path = folder / f"{record.sop_uids[k]}.xml"
        path.write_bytes(voc_xml(record.size, code[0], box))
        paths.append(path)
    return paths
