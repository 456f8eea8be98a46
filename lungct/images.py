"""8-bit image helpers shared by convert and (later) predict: resizing and PNG I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to ``size x size``, keeping its aspect ratio and padding
    the short side with black, centred."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    height, width = image.shape
    if (height, width) == (size, size):
        return image
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(
        Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8
    )
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 grayscale image as PNG (no timestamps: same pixels, same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
