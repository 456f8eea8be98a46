"""8-bit image helpers shared by convert, predict and the app: decoding to grayscale,
resizing, perceptual hashing, PNG writing."""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, UnidentifiedImageError

from lungct.errors import SkippedFile, describe
from lungct.limits import MAX_IMAGE_BYTES, check_size
from lungct.names import Framing
from lungct.reasons import NON_FINITE_PIXELS, NOT_IMAGE, UNREADABLE_IMAGE

# read_image checks the declared size against lungct.limits, as DICOM does; Pillow's own
# check, at pixel counts of its own, would be a second, different limit.
Image.MAX_IMAGE_PIXELS = None


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 image (rows x cols, or rows x cols x channels) to ``size x size``,
    keeping its aspect ratio and padding the short side with black, centred. Shrinking by
    an integer factor (a 512 x 512 slice to 128) is Pillow's ``reduce`` (block means), any
    other BILINEAR (docs/benchmarks.md, "Convert: the work after decoding")."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    factor = width // new_w
    source = Image.fromarray(image)
    if factor >= 2 and (new_w * factor, new_h * factor) == (width, height):
        resized = source.reduce(factor)
    else:
        resized = source.resize((new_w, new_h), Image.Resampling.BILINEAR)
    if (new_h, new_w) == (size, size):
        return np.array(resized, dtype=np.uint8)  # a writable copy, as when padded
    out = np.zeros((size, size, *image.shape[2:]), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = np.asarray(resized)
    return out


def model_input(images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 model images -> one float32 batch, N x H x W x C, values 0..255: what train
    and evaluate feed (``tf.io.decode_png`` cast to float32; the model rescales)."""
    batch = np.stack(images).astype(np.float32)
    return batch[..., None] if batch.ndim == 3 else batch


# Framing (convert.framing): the body is denser than BODY_HU in a CT frame, or, in an
# exported image (air dark), brighter than BODY_LEVEL of 255. The lungs are what inside the
# body is not that dense (a CT frame), or darker than the body's Otsu threshold (an export).
BODY_HU = -500.0
BODY_LEVEL = 40
BODY_SEARCH_SIDE = 256  # the body is found on every k-th pixel, at most this many a side
BODY_MIN_SHARE = 0.01  # a largest region under this share of the image is no body
LUNG_MIN_SHARE = 0.05  # lungs under this share of the body are none (the body's box instead)
LUNG_REGION_SHARE = 0.2  # lung regions under this share of the largest are not kept
LUNG_MARGIN = 0.05  # of the lungs' box side, added on each side (lesions on the pleura)

Box = tuple[int, int, int, int]  # top, bottom, left, right; bottom and right exclusive


def _search_step(shape: tuple[int, ...]) -> int:
    return max(1, -(-max(shape[:2]) // BODY_SEARCH_SIDE))


def _largest_region(body: np.ndarray, step: int) -> np.ndarray | None:
    """The largest connected region of ``body`` sampled every ``step`` pixels, after a
    morphological opening that cuts thin bridges (the CT table, a line of text); None when
    it covers under :data:`BODY_MIN_SHARE` of the image."""
    from scipy import ndimage  # imported here: only a framing of the body needs it

    opened = ndimage.binary_opening(body[::step, ::step], iterations=2)
    labels, count = ndimage.label(opened)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes))
    if sizes[largest] < BODY_MIN_SHARE * opened.size:
        return None
    return labels == largest + 1


def _box(region: np.ndarray, step: int, shape: tuple[int, ...], margin: float = 0.0) -> Box:
    """The bounding box, in ``shape``'s pixels, of a mask sampled every ``step`` pixels,
    widened by ``margin`` x its side on each side."""
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    top, bottom = rows[0] * step, (rows[-1] + 1) * step
    left, right = cols[0] * step, (cols[-1] + 1) * step
    pad_rows, pad_cols = round(margin * (bottom - top)), round(margin * (right - left))
    return (
        max(0, top - pad_rows),
        min(shape[0], bottom + pad_rows),
        max(0, left - pad_cols),
        min(shape[1], right + pad_cols),
    )


def body_box(body: np.ndarray) -> Box | None:
    """The bounding box of the body in a 2-D mask (True where a pixel is body-dense or
    body-bright): its largest connected region after an opening (:func:`_largest_region`);
    None when there is none. Cropping to it shows the model the body at one scale, however
    an export framed it."""
    return _framing_box(body, Framing.BODY)


def otsu_threshold(values: np.ndarray) -> int | None:
    """Otsu's threshold of uint8 ``values``: the level that best splits them into a dark
    and a bright class (the largest between-class variance); values below it are dark.
    None when they have one level or none."""
    counts = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    if np.count_nonzero(counts) < 2:
        return None
    share = np.cumsum(counts) / counts.sum()
    mean = np.cumsum(counts * np.arange(256)) / counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * share - mean) ** 2 / (share * (1.0 - share))
    return int(np.nanargmax(between[:-1])) + 1


def lung_box(body: np.ndarray, gray: np.ndarray | None = None) -> Box | None:
    """The bounding box of the lungs, :data:`LUNG_MARGIN` wider on each side, in a 2-D
    ``body`` mask: the regions inside the body's filled outline (:func:`_largest_region`)
    that are not body (a CT frame's mask: denser than :data:`BODY_HU`), or, given an
    export's ``gray``, darker than the Otsu threshold of the body's pixels; those of at
    least :data:`LUNG_REGION_SHARE` of the largest kept. None when there is no body, or the
    lungs are under :data:`LUNG_MIN_SHARE` of it (a slice above or below them)."""
    step = _search_step(body.shape)
    region = _largest_region(body, step)
    return None if region is None else _lungs_in(region, body, step, gray)


def _lungs_in(
    region: np.ndarray, body: np.ndarray, step: int, gray: np.ndarray | None
) -> Box | None:
    """:func:`lung_box` within the body's ``region`` (sampled every ``step`` pixels)."""
    from scipy import ndimage

    inside = ndimage.binary_fill_holes(region)
    if gray is None:
        light = body[::step, ::step]
    else:
        sampled = gray[::step, ::step]
        threshold = otsu_threshold(sampled[inside])
        if threshold is None:
            return None
        light = sampled >= threshold
    lungs = ndimage.binary_opening(inside & ~light)
    labels, count = ndimage.label(lungs)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.sum() < LUNG_MIN_SHARE * inside.sum():
        return None
    kept = np.isin(labels, np.flatnonzero(sizes >= LUNG_REGION_SHARE * sizes.max()) + 1)
    return _box(kept, step, body.shape, LUNG_MARGIN)


def _framing_box(body: np.ndarray, framing: str, gray: np.ndarray | None = None) -> Box | None:
    """The box ``framing`` crops to in a 2-D ``body`` mask: the body's, or the lungs' where
    :func:`lung_box` finds them (``gray``: an export's first channel); the body's region
    is found once for both. None when there is no body."""
    step = _search_step(body.shape)
    region = _largest_region(body, step)
    if region is None:
        return None
    lungs = _lungs_in(region, body, step, gray) if framing == Framing.LUNGS else None
    return lungs or _box(region, step, body.shape)


def framed(image: np.ndarray, framing: str, hu: np.ndarray | None = None) -> np.ndarray:
    """``image`` (uint8, 2-D or channels last) cropped as ``framing`` says
    (``convert.framing``): ``image``: unchanged; ``body``: to :func:`body_box`; ``lungs``: to
    :func:`lung_box`, or the body's box where no lungs are found. The masks come from the CT
    frame's ``hu`` where given (body: denser than :data:`BODY_HU`), else from the first
    channel (body: brighter than :data:`BODY_LEVEL`). Unchanged when no body is found."""
    if framing == Framing.IMAGE:
        return image
    gray = image if image.ndim == 2 else image[..., 0]
    body = hu > BODY_HU if hu is not None else gray > BODY_LEVEL
    box = _framing_box(body, framing, gray if hu is None else None)
    if box is None:
        return image
    top, bottom, left, right = box
    return image[top:bottom, left:right]


# The cv stage's ``reframed`` scores show each held-out image again with a black margin of
# these shares of its side (docs/benchmarks.md, "A framing-robust choice").
REFRAME_MARGINS = (0.15, 0.3)


def reframe(image: np.ndarray, margin: float, framing: str) -> np.ndarray:
    """A model image (uint8, square, 2-D or channels last) as another export would frame
    it: ``margin`` x its side of black added on every side, then the recipe's own framing
    (:func:`framed`, by brightness) and :func:`fit_square` back to its size. A recipe that
    reads the framing scores lower on these; one that frames to the body or the lungs sees
    nearly the same image again."""
    size = image.shape[0]
    pad = round(margin * size)
    wider = np.pad(image, ((pad, pad), (pad, pad)) + ((0, 0),) * (image.ndim - 2))
    return fit_square(framed(wider, framing), size)


# pHash (imagehash.phash, its defaults): the 8 x 8 lowest DCT coefficients of a 32 x 32
# LANCZOS thumbnail, each bit whether one is above their median.
HASH_SIZE = 8
HASH_IMAGE = 32
# Pillow's reducing_gap: reduce() first to at least this many times the thumbnail (512 x 512
# -> 128 x 128 -> 32 x 32); under 256 pixels a side, imagehash.phash's hash bit for bit.
HASH_REDUCING_GAP = 4.0


def phash(
    gray: np.ndarray,
    resized: np.ndarray | None = None,
    reducing_gap: float | None = HASH_REDUCING_GAP,
) -> str:
    """The 64-bit perceptual hash (16 hex digits) of a 2-D uint8 image, the one pHash of
    the project: ``imagehash.phash`` with its thumbnail made by way of ``reducing_gap``
    (about a sixth of the time on a 512 x 512 slice). The DCT (scipy's, imported here:
    predict and the app never hash), the median and the bit order are imagehash's.

    ``resized``: ``fit_square(gray, size)`` where the caller has it; when that was the very
    ``reduce()`` the thumbnail starts with, the thumbnail starts from it (the same hash).
    ``reducing_gap=None``: one LANCZOS resize, ``imagehash.phash`` bit for bit at any size.
    """
    height, width = gray.shape
    fx = fy = 1  # Pillow's reducing_gap rule: reduce by these factors first (1: no reduce)
    if reducing_gap:
        fx = int(width / HASH_IMAGE / reducing_gap) or 1
        fy = int(height / HASH_IMAGE / reducing_gap) or 1
    source = gray
    if (
        resized is not None
        and fx == fy > 1
        and resized.shape == (height // fx, width // fx)
        and height % fx == width % fx == 0
    ):
        source = resized  # fit_square reduced by fx too: its result is that first step
    thumb = Image.fromarray(source).resize(
        (HASH_IMAGE, HASH_IMAGE), Image.Resampling.LANCZOS, reducing_gap=reducing_gap
    )
    import scipy.fftpack

    pixels = np.asarray(thumb, dtype=np.float64)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:HASH_SIZE, :HASH_SIZE]
    middle = np.sort(dct, axis=None)[HASH_SIZE**2 // 2 - 1 : HASH_SIZE**2 // 2 + 1]
    median = (middle[0] + middle[1]) / 2  # np.median's own arithmetic, without its overhead
    return np.packbits(dct > median).tobytes().hex()


def hash_values(hashes: Sequence[str]) -> np.ndarray:
    """Hex hashes (:func:`phash`) as uint64, for Hamming distances (``np.bitwise_count``
    of their xor)."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types (PS: ISO/IEC 15948 11.2.2) by channels: what Image.fromarray makes of
# them (L, LA, RGB, RGBA), so the file decodes to the array that was written.
PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
PNG_SUB_FILTER = 1


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 image (rows x cols, or rows x cols x 1-4 channels) as PNG file bytes: every
    row Sub-filtered, zlib level 1 with the run-length strategy (a third of Pillow's time
    on CT slices, for 5-10 % fewer bytes); nothing but IHDR, IDAT and IEND, so the same
    pixels give the same bytes (for a given zlib)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 image, got {image.dtype} of shape {image.shape}")
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in PNG_COLOR_TYPES or height < 1 or width < 1:
        raise ValueError(f"cannot write a PNG of shape {image.shape}")
    rows = np.ascontiguousarray(image).reshape(height, width * channels)
    filtered = np.empty((height, 1 + width * channels), dtype=np.uint8)
    filtered[:, 0] = PNG_SUB_FILTER
    filtered[:, 1 : 1 + channels] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, 1 + channels :])  # mod 256
    deflate = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_RLE)
    data = deflate.compress(filtered) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, PNG_COLOR_TYPES[channels], 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 image (grayscale, or 3 channels as RGB) as PNG (:func:`png_bytes`),
    making its folder if need be."""
    data = png_bytes(image)
    try:
        path.write_bytes(data)
    except FileNotFoundError:  # the folder, made only then: not a syscall per image
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> 8-bit grayscale, deliberately: transparency is composited on black
    (a CT image's background); colour becomes ITU-R 601-2 luma; 16- and 32-bit integer
    images keep the top 8 bits of a 16-bit range (CT exports store 0..65535); float images
    are clipped to 0..255, and one with a NaN or infinite pixel is :class:`SkippedFile`
    ``non_finite_pixels`` (NaN has no grayscale: it would be read as black)."""
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, rgba).convert("L"), dtype=np.uint8)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image)  # uint16 or int32, not a wider copy
        return (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        finite = np.isfinite(values)
        if not finite.all():
            count = values.size - int(np.count_nonzero(finite))
            raise SkippedFile(NON_FINITE_PIXELS, f"{count} of {values.size} pixels NaN or infinite")
        return np.clip(values, 0, 255).round().astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def declared_bytes(image: Image.Image) -> int:
    """What decoding an opened (not yet loaded) image would allocate: width x height x
    bytes per pixel of its mode."""
    try:
        mode = ImageMode.getmode(image.mode)
        per_pixel = len(mode.bands) * np.dtype(mode.typestr).itemsize
    except (KeyError, TypeError):
        per_pixel = 4
    width, height = image.size
    return width * height * per_pixel


def read_image(path: Path, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[np.ndarray, str]:
    """Decode a PNG/JPG/... file to 8-bit grayscale; return it and the original mode.
    :class:`SkippedFile`: ``not_image`` for files PIL cannot identify, ``too_large`` for a
    declared size :mod:`lungct.limits` refuses (before decoding), ``unreadable_image`` for
    one PIL cannot decode."""
    path = Path(path)
    try:
        with warnings.catch_warnings(action="ignore"):  # "Corrupt EXIF data": the reason says it
            return _decode(path, max_bytes)
    except UnidentifiedImageError:
        raise SkippedFile(NOT_IMAGE) from None
    except (SkippedFile, MemoryError):
        raise
    except Exception as exc:  # truncated or corrupt image data; a plugin's odd error
        raise SkippedFile(UNREADABLE_IMAGE, describe(exc)) from None


def _decode(path: Path, max_bytes: int) -> tuple[np.ndarray, str]:
    with Image.open(path) as image:
        width, height = image.size
        if width < 1 or height < 1:
            raise SkippedFile(UNREADABLE_IMAGE, f"{width} x {height} pixels")
        what = f"a {width} x {height} {image.mode} image"
        check_size(declared_bytes(image), path.stat().st_size, max_bytes, what)
        image.load()
        return to_grayscale(image), image.mode
