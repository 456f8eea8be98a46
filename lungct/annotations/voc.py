"""Lung-PET-CT-Dx: Pascal VOC boxes, ``Annotation/<patient>/<SOPInstanceUID>.xml``, one
file per boxed CT slice; ``object/name`` is the histology's letter (:data:`VOC_LETTERS`).

An annotated slice gets its letter as the raw label; the other slices of a patient with
boxes are skipped (``voc_unannotated_slice``: not known to be normal), and so are all
slices of a patient without any (``not_annotated``).
"""

from __future__ import annotations

import filecmp
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lungct.annotations.plausible import MAX_LESION_MM, MAX_PIXEL, lesion_ok, parse, pixel_ok
from lungct.annotations.reasons import (
    ANNOTATION_DUPLICATE,
    ANNOTATION_IMPLAUSIBLE,
    ANNOTATION_UNKNOWN,
    ANNOTATION_UNMATCHED,
    ANNOTATION_UNREADABLE,
    NOT_ANNOTATED,
    VOC_CONFLICTING_LABELS,
    VOC_UNANNOTATED_SLICE,
    VOC_UNKNOWN_LABEL,
)
from lungct.annotations.slices import (
    Labelled,
    Problem,
    SliceLabel,
    SliceRef,
    duplicate_keys,
    skipped,
)
from lungct.annotations.xmlsafe import (
    MAX_XML_BYTES,
    AnnotationError,
    child,
    children,
    local,
    read_xml,
    text,
)

VOC_LETTERS = {
    "A": "adenocarcinoma",
    "B": "small cell carcinoma",
    "E": "large cell carcinoma",
    "G": "squamous cell carcinoma",
}


@dataclass(frozen=True)
class Box:
    name: str  # as written, stripped
    xmin: float
    ymin: float
    xmax: float
    ymax: float


def read_voc(path: Path, max_bytes: int = MAX_XML_BYTES) -> list[Box]:
    """The boxes of one VOC file; :class:`AnnotationError` when it has none usable, or
    one box that is not four numbers (``annotation_unreadable``) or not a box of plausible
    pixel coordinates, ``xmin < xmax`` and ``ymin < ymax`` (``annotation_implausible``)."""
    root = read_xml(path, max_bytes)
    if local(root.tag) != "annotation":
        raise AnnotationError(
            ANNOTATION_UNKNOWN, f"root element <{local(root.tag)}> is not a VOC annotation"
        )
    boxes = []
    for i, obj in enumerate(children(root, "object"), start=1):
        box = child(obj, "bndbox")
        written = [text(box, k) for k in ("xmin", "ymin", "xmax", "ymax")]
        try:
            values = [parse(w) for w in written]
        except ValueError:
            values = [None]
        if None in values:
            raise AnnotationError(ANNOTATION_UNREADABLE, f"object {i}: bndbox needs four numbers")
        xmin, ymin, xmax, ymax = values  # type: ignore[misc]
        if not (all(map(pixel_ok, values)) and xmin < xmax and ymin < ymax):  # type: ignore[arg-type]
            raise AnnotationError(
                ANNOTATION_IMPLAUSIBLE,
                f"object {i}: box {','.join(w[:30] for w in written)} is not xmin < xmax, "
                f"ymin < ymax within 0-{MAX_PIXEL:g} pixels",
            )
        boxes.append(Box(text(obj, "name"), xmin, ymin, xmax, ymax))  # type: ignore[arg-type]
    if not boxes:
        raise AnnotationError(ANNOTATION_UNREADABLE, "no object with a box")
    return boxes


def voc_labels(
    xml_files: Sequence[Path], slices: Sequence[SliceRef], max_file_bytes: int = MAX_XML_BYTES
) -> Labelled:
    """Label every slice given from Lung-PET-CT-Dx VOC files, matched by file stem to the
    slice key (SOPInstanceUID). Files for no slice given are problems
    (``annotation_unmatched``), as are unreadable ones."""
    keys = {r.key for r in slices}
    problems: list[Problem] = []
    files: dict[str, Path] = {}
    duplicates: dict[str, str] = {}
    for path in sorted(xml_files, key=str):
        uid = path.stem
        if uid not in keys:
            problems.append(Problem(path, ANNOTATION_UNMATCHED, f"no slice {uid} given"))
        elif uid in files:
            if not _same_content(path, files[uid], max_file_bytes):
                detail = f"slice {uid} also annotated, differently, by {files[uid]}"
                problems.append(Problem(path, ANNOTATION_DUPLICATE, detail))
                duplicates[uid] = detail
        else:
            files[uid] = path
    annotated_patients = {r.patient_id for r in slices if r.key in files}
    labels: dict[str, SliceLabel] = duplicate_keys(slices)
    for ref in slices:
        path = files.get(ref.key)
        if ref.key in labels:  # a duplicate key: its file is not read
            continue
        if path is None and ref.patient_id in annotated_patients:
            labels[ref.key] = skipped(
                VOC_UNANNOTATED_SLICE,
                f"patient {ref.patient_id} has boxes on other slices, none on this one",
            )
        elif path is None:
            labels[ref.key] = skipped(NOT_ANNOTATED, f"no VOC box for patient {ref.patient_id}")
        elif ref.key in duplicates:
            labels[ref.key] = skipped(ANNOTATION_DUPLICATE, duplicates[ref.key], str(path))
        else:
            labels[ref.key] = _label_slice(ref, path, max_file_bytes, problems)
    return Labelled(labels, problems)


def _same_content(a: Path, b: Path, max_bytes: int) -> bool:
    """Two files of the same bytes (a copy); False when either cannot be read in full."""
    try:
        return a.stat().st_size <= max_bytes and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _label_slice(ref: SliceRef, path: Path, max_bytes: int, problems: list[Problem]) -> SliceLabel:
    source = str(path)
    try:
        boxes = read_voc(path, max_bytes)
    except AnnotationError as exc:
        problems.append(Problem(path, exc.reason, exc.detail))
        return skipped(exc.reason, exc.detail, source)
    letters = {b.name.upper() for b in boxes}
    unknown = sorted(letters - VOC_LETTERS.keys())
    if unknown:
        return skipped(
            VOC_UNKNOWN_LABEL,
            f"box named {', '.join(map(repr, unknown))}, not A, B, E or G",
            source,
        )
    if len(letters) > 1:
        return skipped(
            VOC_CONFLICTING_LABELS, f"boxes named {', '.join(sorted(letters))} on one slice", source
        )
    box = max(boxes, key=lambda b: (b.xmax - b.xmin) * (b.ymax - b.ymin))  # the largest
    size = None
    if ref.spacing is not None:
        row_spacing, column_spacing = ref.spacing
        size = max((box.xmax - box.xmin) * column_spacing, (box.ymax - box.ymin) * row_spacing)
        if not lesion_ok(size):
            return skipped(
                ANNOTATION_IMPLAUSIBLE,
                f"a box {size:.4g} mm long, over {MAX_LESION_MM:g} mm at this Pixel Spacing",
                source,
            )
    [letter] = letters
    return SliceLabel(
        letter,
        source=source,
        center=((box.xmin + box.xmax) / 2, (box.ymin + box.ymax) / 2),
        size_mm=size,
        detail=f"{len(boxes)} box(es), {VOC_LETTERS[letter]}",
    )
