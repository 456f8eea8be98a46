"""Every reason code of :mod:`lungct.annotations`, in one place (docs/annotations.md).

A *slice* reason says why a slice got no label (``SliceLabel.reason``), a *problem* reason
why an annotation file was not used (``Problem.reason``); some serve both (the slices an
unreadable file would have labelled are skipped with its code).
"""

from __future__ import annotations

from lungct.reasons import TOO_LARGE

# Slices: any dataset
NOT_ANNOTATED = "not_annotated"  # no annotation file covers the slice's series / patient
NO_POSITION = "no_position"  # the rule needs the slice's position and the header has none

# Files (problems), and the slices of a series or patient whose file it is
ANNOTATION_UNREADABLE = "annotation_unreadable"  # malformed XML or CSV, missing fields
ANNOTATION_UNSAFE = "annotation_unsafe"  # XML with a DTD or entity declarations
ANNOTATION_TOO_LARGE = "annotation_too_large"  # a file over the size limit, not read
ANNOTATION_UNKNOWN = "annotation_unknown"  # XML of another kind (root element)
ANNOTATION_UNMATCHED = "annotation_unmatched"  # a file for a series/slice not given
ANNOTATION_DUPLICATE = "annotation_duplicate"  # two different files for one series/slice
NOT_CT_ANNOTATION = "not_ct_annotation"  # LIDC-IDRI IdriReadMessage: a radiograph read
ANNOTATION_IMPLAUSIBLE = "annotation_implausible"  # a coordinate or size past plausible.py
DUPLICATE_SLICE = "duplicate_slice"  # two slices given with one key (SOPInstanceUID)

# LIDC-IDRI slices
LIDC_TOO_FEW_READERS = "lidc_too_few_readers"  # marked, by fewer than min_readers readers
LIDC_NO_MALIGNANCY = "lidc_no_malignancy"  # outlined by a reader who gave no malignancy
LIDC_NEAR_ANNOTATION = "lidc_near_annotation"  # unmarked, but an roi within margin_mm
LIDC_UNPLACED_ANNOTATION = "lidc_unplaced_annotation"  # an roi of the series has no position

# LUNA16 slices
LUNA16_NEAR_NODULE = "luna16_near_nodule"  # past diameter/2 of a nodule, within margin_mm

# Lung-PET-CT-Dx slices
VOC_UNANNOTATED_SLICE = "voc_unannotated_slice"  # a slice of an annotated patient, no box
VOC_UNKNOWN_LABEL = "voc_unknown_label"  # a box whose name is not A, B, E or G
VOC_CONFLICTING_LABELS = "voc_conflicting_labels"  # boxes with different letters

# MetaImage volumes (raised as lungct.errors.SkippedFile; TOO_LARGE, above, is the code of
# lungct.limits, the project's one rule against decompression bombs, in lungct.reasons)
METAIMAGE_BAD_HEADER = "metaimage_bad_header"
METAIMAGE_MISSING_DATA = "metaimage_missing_data"
METAIMAGE_SIZE_MISMATCH = "metaimage_size_mismatch"
METAIMAGE_UNREADABLE = "metaimage_unreadable"

REASONS: dict[str, str] = {
    NOT_ANNOTATED: "no annotation file covers the slice's series (or patient)",
    NO_POSITION: "the slice has no position along its normal, which the rule needs",
    ANNOTATION_UNREADABLE: "the annotation file is malformed or lacks a required field",
    ANNOTATION_UNSAFE: "the XML declares a DTD or entities, refused unparsed",
    ANNOTATION_TOO_LARGE: "the annotation file is over the size limit, not read",
    ANNOTATION_UNKNOWN: "the XML is not of the expected kind (root element)",
    ANNOTATION_UNMATCHED: "the annotation file names a series or slice that was not given",
    ANNOTATION_DUPLICATE: "two different annotation files for one series or slice",
    NOT_CT_ANNOTATION: "an LIDC-IDRI chest radiograph read (IdriReadMessage), not CT",
    ANNOTATION_IMPLAUSIBLE: "a coordinate or size that is not finite or past plausible bounds",
    DUPLICATE_SLICE: "another slice given has the same key (SOPInstanceUID): neither is labelled",
    LIDC_TOO_FEW_READERS: "marked by fewer than min_readers readers",
    LIDC_NO_MALIGNANCY: "outlined by a reader whose nodule has no valid malignancy",
    LIDC_NEAR_ANNOTATION: "not marked, but an annotation lies within margin_mm",
    LIDC_UNPLACED_ANNOTATION: "an annotation of the series has no position to compare",
    LUNA16_NEAR_NODULE: "beyond diameter/2 of a nodule but within margin_mm of one",
    VOC_UNANNOTATED_SLICE: "a slice of an annotated patient without a box",
    VOC_UNKNOWN_LABEL: "a box named other than A, B, E or G",
    VOC_CONFLICTING_LABELS: "boxes with different letters on one slice",
    TOO_LARGE: "the volume would decode to more than the limit (or is a bomb)",
    METAIMAGE_BAD_HEADER: "the MetaImage header is malformed or unsupported",
    METAIMAGE_MISSING_DATA: "the MetaImage data file is missing",
    METAIMAGE_SIZE_MISMATCH: "the data file's byte count does not match the header",
    METAIMAGE_UNREADABLE: "SimpleITK could not read the volume",
}
