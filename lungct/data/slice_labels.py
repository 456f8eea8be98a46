"""Per-slice labels of the annotated layouts (LIDC-IDRI, LUNA16, Lung-PET-CT-Dx), and the
header index the convert stage orders series and crops lesions with: :func:`index_file`
reads a file's header (no pixel data), one :class:`Indexed` per frame with the identity
and geometry annotation files refer to; :func:`label_frames` applies the dataset's rule
(``lungct.annotations``, docs/annotations.md) to every frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from lungct.annotations import (
    LIDC,
    LUNA16,
    SliceLabel,
    SliceRef,
    annotation_files,
    inspect_metaimage,
    lidc_labels,
    luna16_labels,
    voc_labels,
)
from lungct.annotations.reasons import (
    LIDC_NEAR_ANNOTATION,
    LIDC_NO_MALIGNANCY,
    LIDC_TOO_FEW_READERS,
    LIDC_UNPLACED_ANNOTATION,
    LUNA16_NEAR_NODULE,
    NOT_ANNOTATED,
    VOC_CONFLICTING_LABELS,
    VOC_UNANNOTATED_SLICE,
    VOC_UNKNOWN_LABEL,
)
from lungct.errors import SkippedFile
from lungct.io.dicom import FrameGeometry, read_geometry
from lungct.names import ANNOTATED_LAYOUTS
from lungct.params import AnnotationParams

METAIMAGE_SUFFIXES = (".mhd", ".mha")
# What a slice-label rule decides about a slice it could place: the slice is excluded by
# the rule, an outcome, not a failure of the data, and does not count against
# convert.max_skipped_fraction. The other codes of lungct.annotations (an annotation file
# that cannot be used, a slice without the position the rule needs, a MetaImage volume that
# cannot be read) say the data is unusable, like a DICOM file that cannot be read.
RULE_REASONS = frozenset(
    {
        NOT_ANNOTATED,
        LIDC_TOO_FEW_READERS,
        LIDC_NO_MALIGNANCY,
        LIDC_NEAR_ANNOTATION,
        LIDC_UNPLACED_ANNOTATION,
        LUNA16_NEAR_NODULE,
        VOC_UNANNOTATED_SLICE,
        VOC_UNKNOWN_LABEL,
        VOC_CONFLICTING_LABELS,
    }
)

log = logging.getLogger("convert")


@dataclass(frozen=True)
class Indexed:
    """One frame of one input file, as its header describes it."""

    source: str  # path under data/raw
    frame: int  # 0-based frame of the file (slice of a volume)
    ref: SliceRef  # key, series, patient, position, origin, orientation, spacing


def is_metaimage(path: Path | str) -> bool:
    return Path(path).suffix.lower() in METAIMAGE_SUFFIXES


def metadata_files(raw: Path, layout: str) -> set[Path]:
    """Files of an annotated tree that are not images: the annotation files, and the data
    files of MetaImage volumes (read through their ``.mhd`` header)."""
    if layout not in ANNOTATED_LAYOUTS:
        return set()
    data = [p for s in ("*.raw", "*.zraw") for p in raw.rglob(s) if p.with_suffix(".mhd").is_file()]
    return set(annotation_files(raw, layout)) | set(data)


def _ref(geometry: FrameGeometry) -> SliceRef:
    return SliceRef(**{f.name: getattr(geometry, f.name) for f in fields(SliceRef)})


def index_file(raw: Path, rel: str, *, max_image_bytes: int) -> list[Indexed]:
    """The frames of one input file from its header; none when it has no usable header
    (the conversion itself then says why the file is skipped)."""
    path = raw / rel
    try:
        if is_metaimage(path):
            # LUNA16 names a volume by its series UID, and has no patient ids: the series
            # is the group the split keeps together.
            refs = inspect_metaimage(path, max_image_bytes).slice_refs(patient_id=path.stem)
            return [Indexed(rel, k, ref) for k, ref in enumerate(refs)]
        return [Indexed(rel, g.frame, _ref(g)) for g in read_geometry(path)]
    except SkippedFile:
        return []
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a header reader bug on one odd file
        log.debug("convert: %s: no header index (%s)", rel, exc)
        return []


def label_frames(
    layout: str, raw: Path, frames: Sequence[Indexed], cfg: AnnotationParams
) -> dict[str, SliceLabel]:
    """Every frame's label (by key) under the rule of ``layout``, one of
    :data:`ANNOTATED_LAYOUTS`; annotation files that could not be used are logged."""
    refs = [f.ref for f in frames]
    files = annotation_files(raw, layout)
    if layout == LIDC:
        labelled = lidc_labels(files, refs, cfg.min_readers, cfg.margin_mm)
    elif layout == LUNA16:
        if not files:
            return {r.key: SliceLabel("", NOT_ANNOTATED, detail="no annotations.csv") for r in refs}
        labelled = luna16_labels(files[0], refs, cfg.margin_mm)
        for extra in files[1:]:
            log.warning("convert: %s: a second annotations.csv, not read", extra.relative_to(raw))
    else:  # Lung-PET-CT-Dx
        labelled = voc_labels(files, refs)
    for problem in labelled.problems:
        where = problem.file.relative_to(raw) if problem.file.is_relative_to(raw) else problem.file
        detail = f" ({problem.detail})" if problem.detail else ""
        log.warning("convert: %s: %s%s", where, problem.reason, detail)
    return labelled.labels
