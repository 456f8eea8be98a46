"""How large an input image may be: the one rule against decompression bombs, for DICOM
and exported images alike, checked on the *declared* size before anything is decoded.

An image's declared size is what decoding it would allocate: rows x columns x frames x
samples x bytes per sample for DICOM (and at least one model image per frame: 100 000
frames of 1 x 1 pixels declare little, but make 100 000 model images), width x height x
bytes per pixel for an exported image. It is refused (reason ``too_large``) when it is

* over the limit, ``convert.max_image_bytes`` (convert) or :data:`MAX_IMAGE_BYTES`
  (predict and the app, which have no params); or
* over :data:`EXPANSION_FLOOR` *and* more than :data:`MAX_EXPANSION` times the file's
  own size: a small file that would expand to a large image is a decompression bomb.

The default limit, 512 MiB, admits any real CT: a single-frame slice is 0.5 MiB
(512 x 512 x 16 bits; 8 MiB at 2048 x 2048), and a whole chest CT in one Enhanced CT
file is about 1000 frames of 512 x 512 at 0.3 mm slices. Converting an image takes about
four times its declared size (stored values, float32 HU, 8-bit channels).

The expansion ratio is what tells a bomb from a real image that fits the limit: real CT
compresses about 2-4 : 1 losslessly (RLE, deflate, JPEG 2000) and 10-20 : 1 with lossy
JPEG 2000, while a 16 KB file declaring 200 MiB expands 13 000 : 1. The floor keeps
small images that compress very well (a blank 512 x 512 slice) out of that test: below
it, decoding is cheap whatever the ratio.
"""

from __future__ import annotations

from lungct.errors import SkippedFile
from lungct.reasons import TOO_LARGE

MiB = 2**20
MAX_IMAGE_BYTES = 512 * MiB  # the default of convert.max_image_bytes; predict and the app
MAX_EXPANSION = 50  # declared bytes per byte of file, over the floor
EXPANSION_FLOOR = 16 * MiB  # declared sizes up to this are never a bomb by ratio


def allowed_bytes(file_bytes: int, limit: int) -> int:
    """The largest declared size admitted for a file of ``file_bytes`` bytes."""
    return min(limit, max(EXPANSION_FLOOR, MAX_EXPANSION * file_bytes))


def size_text(n: int) -> str:
    """Bytes for a person: ``512 MiB``, ``1.5 GiB``, ``300 bytes``."""
    for unit, scale in (("GiB", 2**30), ("MiB", MiB), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def check_size(declared: int, file_bytes: int, limit: int, what: str) -> None:
    """Raise :class:`SkippedFile` ``too_large`` when an image declared as ``what`` (its
    dimensions, for the detail) of ``declared`` bytes may not be decoded."""
    if declared > limit:
        raise SkippedFile(
            TOO_LARGE,
            f"{what} would decode to {size_text(declared)}, over the limit of "
            f"{size_text(limit)} (convert.max_image_bytes)",
        )
    if declared > allowed_bytes(file_bytes, limit):
        raise SkippedFile(
            TOO_LARGE,
            f"{what} would decode to {size_text(declared)} from a file of "
            f"{size_text(file_bytes)} (over {MAX_EXPANSION} times its size: a "
            "decompression bomb)",
        )
