"""Every reason code a file (or frame) is given when it yields no image, in one place:
the ``reason`` of a skipped row of ``data/converted/manifest.csv`` (counted in
``metrics/convert.json``), of a file predict, the app or the service cannot read, and of
:class:`lungct.errors.SkippedFile`. docs/dicom.md lists the same codes
(``tests/test_names.py`` checks it).

The slice and file reasons of the annotated datasets are in
:mod:`lungct.annotations.reasons` (docs/annotations.md); ``too_large`` is shared.
"""

from __future__ import annotations

# Not a CT image this project reads
EMPTY_FILE = "empty_file"
NOT_DICOM = "not_dicom"
NO_PREAMBLE = "no_preamble"
DICOMDIR = "dicomdir"
NOT_CT = "not_ct"
LOCALIZER = "localizer"
NO_PIXEL_DATA = "no_pixel_data"
NOT_GRAYSCALE = "not_grayscale"
NOT_IMAGE = "not_image"
# A damaged or unusable header
NO_DECODER = "no_decoder"
BAD_ATTRIBUTE = "bad_attribute"
BAD_RESCALE = "bad_rescale"
BAD_LUT = "bad_lut"
BAD_WINDOW = "bad_window"
# Pixel data
TOO_LARGE = "too_large"  # lungct.limits: the one rule against decompression bombs
TRUNCATED_PIXEL_DATA = "truncated_pixel_data"
UNREADABLE = "unreadable"  # also: any exception a reader let through (file_problem)
UNREADABLE_PIXELS = "unreadable_pixels"
UNREADABLE_IMAGE = "unreadable_image"
NON_FINITE_PIXELS = "non_finite_pixels"
# Convert: no label, or no lesion crop
UNLABELED = "unlabeled"
NO_PIXEL_SPACING = "no_pixel_spacing"
NO_LUNG_REGION = "no_lung_region"
LESION_OUTSIDE_IMAGE = "lesion_outside_image"
# Predict, the app and the service: what they were given
NOT_FOUND = "not_found"
NOT_A_FILE = "not_a_file"
BAD_ARCHIVE = "bad_archive"
NON_FINITE_OUTPUT = "non_finite_output"

REASONS: dict[str, str] = {
    EMPTY_FILE: "the file is empty",
    NOT_DICOM: "neither a DICOM Part 10 file nor a DICOM data set",
    NO_PREAMBLE: "a DICOM data set without the 128-byte preamble and DICM prefix",
    DICOMDIR: "a DICOMDIR (a media directory), not an image",
    NOT_CT: "a DICOM object other than a CT image (SR, MR, secondary capture, ...)",
    LOCALIZER: "a CT localizer (scout) image",
    NO_PIXEL_DATA: "a CT image without pixel data",
    NOT_GRAYSCALE: "more than one sample per pixel (colour)",
    NOT_IMAGE: "neither a DICOM file nor an image format Pillow can read",
    NO_DECODER: "no installed decoder for the transfer syntax, or the syntax is unknown",
    BAD_ATTRIBUTE: "an attribute the reader needs is missing or malformed",
    BAD_RESCALE: "RescaleSlope or RescaleIntercept unusable (0, HU overflow, not a number)",
    BAD_LUT: "a malformed Modality LUT Sequence",
    BAD_WINDOW: "the file's Window Center/Width is not a window (file_window: true)",
    TOO_LARGE: "would decode to more than convert.max_image_bytes, or is a bomb",
    TRUNCATED_PIXEL_DATA: "less pixel data than the header declares",
    UNREADABLE: "the file cannot be parsed (or reading it raised)",
    UNREADABLE_PIXELS: "the pixel data cannot be decoded, or decodes to another shape",
    UNREADABLE_IMAGE: "an image file Pillow cannot decode",
    NON_FINITE_PIXELS: "pixel values that are NaN or infinite (a float image)",
    UNLABELED: "the layout or labels.csv gives the image no label",
    NO_PIXEL_SPACING: "a lesion crop needs PixelSpacing, and the file has none",
    NO_LUNG_REGION: "no lung-density pixels inside the body to crop around",
    LESION_OUTSIDE_IMAGE: "the annotated lesion centre to crop around lies outside the image",
    NOT_FOUND: "no such file or folder (or a broken symbolic link)",
    NOT_A_FILE: "a FIFO, socket, device or link to a folder: not a regular file",
    BAD_ARCHIVE: "an uploaded archive that cannot be unpacked safely",
    NON_FINITE_OUTPUT: "the model gave NaN or infinite outputs for it (a damaged model)",
}
