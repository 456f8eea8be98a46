"""8-bit image helpers shared by convert, predict and the app: decoding to grayscale,
resizing, PNG writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lungct.errors import SkippedFile


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
        values = np.asarray(image, dtype=np.int64)
        return (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0, 255).round().astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def read_image(path: Path) -> tuple[np.ndarray, str]:
    """Decode a PNG/JPG/... file to 8-bit grayscale; return it and the original mode.

    Raises :class:`SkippedFile` (``not_image`` or ``unreadable_image``) for files PIL
    cannot identify or decode.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return to_grayscale(image), image.mode
    except UnidentifiedImageError:
        raise SkippedFile("not_image") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt image data
        raise SkippedFile("unreadable_image", f"{type(exc).__name__}: {exc}") from None
