import numpy as np
from PIL import Image

from lungct.images import fit_square, save_png


def test_fit_square_keeps_aspect_and_pads_black():
    image = np.full((50, 100), 200, dtype=np.uint8)
    out = fit_square(image, 40)
    assert out.shape == (40, 40) and out.dtype == np.uint8
    assert (out[:10] == 0).all() and (out[30:] == 0).all()
    assert (out[10:30] == 200).all()


def test_fit_square_same_size_is_identity():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert fit_square(image, 4) is image


def test_png_roundtrip_and_stable_bytes(tmp_path):
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    save_png(tmp_path / "a" / "x.png", image)
    save_png(tmp_path / "y.png", image)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "x.png")), image)
    assert (tmp_path / "a" / "x.png").read_bytes() == (tmp_path / "y.png").read_bytes()
