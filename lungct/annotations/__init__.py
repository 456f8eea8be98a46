"""Slice labels from the annotations of LIDC-IDRI, LUNA16 (with its MetaImage volumes) and
Lung-PET-CT-Dx (docs/annotations.md).

Each ``*_labels`` function takes the slices the convert stage has read
(:class:`SliceRef`) and gives every one a :class:`SliceLabel` (a raw label, or a reason
code from :mod:`lungct.annotations.reasons`), with the files it could not use as
:class:`Problem` s; one bad file never raises.
"""

from lungct.annotations.datasets import (
    DATASETS,
    LIDC,
    LUNA16,
    LUNG_PET_CT_DX,
    annotation_files,
    detect,
)
from lungct.annotations.lidc import LIDC_LABELS, LidcRead, lidc_labels, read_lidc
from lungct.annotations.luna16 import LUNA16_LABELS, luna16_labels, read_luna16_csv
from lungct.annotations.metaimage import MetaGeometry, MetaVolume, inspect_metaimage, read_metaimage
from lungct.annotations.reasons import REASONS
from lungct.annotations.slices import Labelled, Problem, SliceLabel, SliceRef, world_to_pixel
from lungct.annotations.voc import VOC_LETTERS, read_voc, voc_labels
from lungct.annotations.xmlsafe import MAX_XML_BYTES, AnnotationError

__all__ = [
    "DATASETS",
    "LIDC",
    "LIDC_LABELS",
    "LUNA16",
    "LUNA16_LABELS",
    "LUNG_PET_CT_DX",
    "MAX_XML_BYTES",
    "REASONS",
    "VOC_LETTERS",
    "AnnotationError",
    "Labelled",
    "LidcRead",
    "MetaGeometry",
    "MetaVolume",
    "Problem",
    "SliceLabel",
    "SliceRef",
    "annotation_files",
    "detect",
    "inspect_metaimage",
    "lidc_labels",
    "luna16_labels",
    "read_lidc",
    "read_luna16_csv",
    "read_metaimage",
    "read_voc",
    "voc_labels",
    "world_to_pixel",
]
