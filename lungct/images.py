"""8-bit image helpers shared by convert, predict and the app: decoding to grayscale,
resizing, PNG writing."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, UnidentifiedImageError

from lungct.errors import SkippedFile, describe
from lungct.limits import MAX_IMAGE_BYTES, check_size

# read_image checks an image's declared size against lungct.limits before decoding it, the
# rule DICOM follows too; Pillow's own check (a warning, then an error, at pixel counts of
# its own) would be a second, different limit.
Image.MAX_IMAGE_PIXELS = None


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 image (rows x cols, or rows x cols x channels) to ``size x size``,
    keeping its aspect ratio and padding the short side with black, centred."""
    if image.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D image or channels last, got shape {image.shape}")
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(
        Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8
    )
    out = np.zeros((size, size, *image.shape[2:]), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 image (grayscale, or 3 channels as RGB) as PNG; no timestamps, so the
    same pixels give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Level 1: a third of the default level's time for a few percent more bytes.
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> 8-bit grayscale, deliberately.

    Transparency is composited on black (the background of a CT image); colour is
    reduced to ITU-R 601-2 luma; 16- and 32-bit integer images keep their top 8 bits
    of a 16-bit range (CT exports store 0..65535); float images are clipped to 0..255.
    """
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
        return np.clip(np.asarray(image, dtype=np.float32), 0, 255).round().astype(np.uint8)
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

    Raises :class:`SkippedFile`: ``not_image`` for files PIL cannot identify,
    ``too_large`` for an image whose declared size fails :mod:`lungct.limits` (checked from
    the header, before decoding), ``unreadable_image`` for one PIL cannot decode.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" and the like: the reason says it
            return _decode(path, max_bytes)
    except UnidentifiedImageError:
        raise SkippedFile("not_image") from None
    except (SkippedFile, MemoryError):
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own check, should it be back on
        raise SkippedFile("too_large", describe(exc)) from None
    except Exception as exc:  # truncated or corrupt image data; a plugin's odd error
        raise SkippedFile("unreadable_image", describe(exc)) from None


def _decode(path: Path, max_bytes: int) -> tuple[np.ndarray, str]:
    with Image.open(path) as image:
        width, height = image.size
        if width < 1 or height < 1:
            raise SkippedFile("unreadable_image", f"{width} x {height} pixels")
        what = f"a {width} x {height} {image.mode} image"
        check_size(declared_bytes(image), path.stat().st_size, max_bytes, what)
        image.load()
        return to_grayscale(image), image.mode
