import io

import imagehash
import numpy as np
import pytest
from PIL import Image

from lungct.io.images import fit_square, hash_values, phash, png_bytes, save_png


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


def smooth(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A uint8 image with structure at several scales (what a hash and a resize see)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize(shape[1::-1], Image.Resampling.BICUBIC))
    noise = rng.integers(-20, 21, shape[:2])
    image = np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)
    return image if len(shape) == 2 else np.repeat(image[..., None], shape[2], axis=-1)


@pytest.mark.parametrize("shape", [(512, 512), (512, 384), (256, 256, 3), (1024, 512)])
def test_fit_square_by_an_integer_factor_is_the_block_mean(shape):
    """512 x 512 -> 128: each pixel the mean of its 4 x 4 block, rounded half up (Pillow's
    reduce), then the black padding as before (issue 17; BILINEAR before)."""
    image = smooth(shape)
    out = fit_square(image, 128)
    factor = max(shape[:2]) // 128
    rows, cols = shape[0] // factor, shape[1] // factor
    blocks = image.reshape(rows, factor, cols, factor, *shape[2:]).astype(int).sum(axis=(1, 3))
    mean = ((blocks + factor * factor // 2) // (factor * factor)).astype(np.uint8)
    top, left = (128 - rows) // 2, (128 - cols) // 2
    assert out.shape == (128, 128, *shape[2:])
    assert np.array_equal(out[top : top + rows, left : left + cols], mean)
    assert out.sum() == mean.astype(int).sum()  # the rest is black


@pytest.mark.parametrize("shape", [(500, 500), (577, 800), (100, 60), (64, 64)])
def test_fit_square_by_any_other_factor_is_bilinear(shape):
    image = smooth(shape)
    scale = 128 / max(shape)
    size = (max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale)))
    bilinear = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    out = fit_square(image, 128)
    top, left = (128 - size[1]) // 2, (128 - size[0]) // 2
    assert np.array_equal(out[top : top + size[1], left : left + size[0]], bilinear)


@pytest.mark.parametrize("shape", [(32, 32), (128, 128), (200, 255), (255, 64), (100, 250)])
def test_phash_is_imagehash_under_256_pixels_a_side(shape):
    for seed in range(5):
        image = smooth(shape, seed)
        assert phash(image) == str(imagehash.phash(Image.fromarray(image)))


@pytest.mark.parametrize("shape", [(512, 512), (600, 800), (256, 300)])
def test_phash_of_a_larger_image_starts_from_pillows_reduce(shape):
    """imagehash.phash of the image reduced by the factor that leaves it 4 times the 32 x 32
    thumbnail or more (Pillow's reducing_gap): a 512 x 512 slice's 4 x 4 block means."""
    image = smooth(shape)
    fx, fy = max(1, shape[1] // 128), max(1, shape[0] // 128)
    reduced = Image.fromarray(image).reduce((fx, fy))
    assert phash(image) == str(imagehash.phash(reduced))


@pytest.mark.parametrize("shape", [(512, 512), (256, 300), (128, 128)])
def test_phash_without_reducing_gap_is_imagehash_at_any_size(shape):
    """The hashes of model-sized images (the split's view and body evidence, evaluate's
    leak sensitivity): imagehash's one LANCZOS resize, whatever ``convert.image_size``."""
    for seed in range(3):
        image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)  # noise:
        expected = str(imagehash.phash(Image.fromarray(image)))  # a reduce() changes it
        assert phash(image, reducing_gap=None) == expected
        assert phash(image, fit_square(image, 128), reducing_gap=None) == expected
        assert hash_values([expected]).tolist() == [int(expected, 16)]
    if shape[0] >= 256:
        assert phash(image) != expected  # the default thumbnail does reduce first


@pytest.mark.parametrize("shape", [(512, 512), (1024, 1024), (512, 384), (520, 520), (128, 128)])
@pytest.mark.parametrize("size", [64, 128, 256])
def test_phash_from_the_model_image_is_the_same(shape, size):
    image = smooth(shape)
    assert phash(image, fit_square(image, size)) == phash(image)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (128, 128), (3, 4, 3), (9, 2, 2), (4, 4, 4)])
def test_png_decodes_to_the_array_in_its_fromarray_mode(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = png_bytes(image)
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.mode == Image.fromarray(image).mode
        assert np.array_equal(np.asarray(decoded), image)
    assert png_bytes(image.copy()) == data


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4), np.float32), np.zeros((4, 4, 5), np.uint8), np.zeros((0, 4), np.uint8)],
)
def test_png_refuses_what_it_cannot_write(image):
    with pytest.raises(ValueError):
        png_bytes(image)


def chest_export(height: int, width: int, top: int, left: int) -> np.ndarray:
    """A chest-like export: a grey body (an ellipse with dark lungs) at (top, left), 120 x
    160, on black, and a thin bright CT table line under it, apart from the body."""
    image = np.zeros((height, width), dtype=np.uint8)
    rows, cols = np.ogrid[:120, :160]
    body = ((rows - 60) / 60) ** 2 + ((cols - 80) / 80) ** 2 <= 1
    lungs = ((rows - 60) / 35) ** 2 + ((abs(cols - 80) - 38) / 25) ** 2 <= 1
    image[top : top + 120, left : left + 160][body] = 150
    image[top : top + 120, left : left + 160][lungs] = 10
    image[top + 130 : top + 132, max(0, left - 20) : left + 180] = 220  # the table
    return image


@pytest.mark.parametrize(
    ("height", "width", "top", "left"), [(300, 400, 60, 100), (130, 170, 4, 5)]
)
def test_body_box_is_the_body_not_the_table_nor_the_margin(height, width, top, left):
    from lungct.io.images import body_box

    image = chest_export(height + 10, width, top, left)
    box = body_box(image > 40)
    assert box is not None
    # Found on every k-th pixel (k = 2 for the larger image): the body's to within k.
    assert abs(box[0] - top) <= 2 and abs(box[1] - (top + 120)) <= 2
    assert abs(box[2] - left) <= 2 and abs(box[3] - (left + 160)) <= 2
    assert box[1] < top + 130  # the table is not in it


def test_body_framing_shows_one_body_at_one_scale_whatever_the_margin():
    from lungct.io.images import framed

    tight = fit_square(framed(chest_export(140, 170, 2, 5), "body"), 64)
    wide = fit_square(framed(chest_export(400, 600, 150, 220), "body"), 64)
    assert np.abs(tight.astype(int) - wide.astype(int)).mean() < 8  # resampling differs
    # Without framing the same body is at two scales.
    plain = [
        fit_square(chest_export(140, 170, 2, 5), 64),
        fit_square(chest_export(400, 600, 150, 220), 64),
    ]
    assert np.abs(plain[0].astype(int) - plain[1].astype(int)).mean() > 20


@pytest.mark.parametrize(
    ("height", "width", "top", "left"), [(300, 400, 60, 100), (130, 170, 4, 5)]
)
def test_lung_box_is_the_lungs_with_a_margin(height, width, top, left):
    """Framing lungs: the dark regions inside the body's outline (an export: darker than the
    body's Otsu threshold), LUNG_MARGIN of their side wider, inside the body's box."""
    from lungct.io.images import LUNG_MARGIN, body_box, lung_box

    image = chest_export(height + 10, width, top, left)
    box = lung_box(image > 40, gray=image)
    assert box is not None
    rows, cols = np.nonzero(image == 10)  # the lungs
    lung_rows, lung_cols = rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()
    expected = (
        rows.min() - LUNG_MARGIN * lung_rows,
        rows.max() + 1 + LUNG_MARGIN * lung_rows,
        cols.min() - LUNG_MARGIN * lung_cols,
        cols.max() + 1 + LUNG_MARGIN * lung_cols,
    )
    assert np.allclose(box, expected, atol=3)  # every k-th pixel (k = 2 here), and an opening
    body = body_box(image > 40)
    assert body[0] < box[0] and box[1] < body[1] and body[2] < box[2] and box[3] < body[3]


def test_lung_framing_shows_the_lungs_larger_at_one_scale_whatever_the_margin():
    from lungct.io.images import framed

    tight = fit_square(framed(chest_export(140, 170, 2, 5), "lungs"), 64)
    wide = fit_square(framed(chest_export(400, 600, 150, 220), "lungs"), 64)
    assert np.abs(tight.astype(int) - wide.astype(int)).mean() < 8
    body = fit_square(framed(chest_export(140, 170, 2, 5), "body"), 64)
    assert (tight == 10).sum() > 1.3 * (body == 10).sum()  # the lungs fill more of the input


def test_lung_framing_without_lungs_is_the_body():
    """A slice with no lungs in the body (above or below them) is framed to the body."""
    from lungct.io.images import framed

    solid = chest_export(300, 400, 60, 100)
    solid[solid == 10] = 150
    np.testing.assert_array_equal(framed(solid, "lungs"), framed(solid, "body"))


@pytest.mark.parametrize("image", [np.zeros((50, 80), np.uint8), np.full((50, 80), 255, np.uint8)])
@pytest.mark.parametrize("framing", ["body", "lungs"])
def test_no_body_or_all_body_leaves_the_image_whole(image, framing):
    from lungct.io.images import framed

    assert framed(image, framing).shape == image.shape
    speck = image.copy()
    speck[10:13, 10:13] = 200 if image.max() == 0 else 0
    assert framed(speck if image.max() == 0 else image, framing).shape == image.shape


@pytest.mark.parametrize("margin", [0.15, 0.3])
def test_reframe_shows_an_image_as_a_wider_export_would(margin):
    """The cv stage's framing shift (lungct.io.images.reframe): with framing image the body
    shrinks by 1 / (1 + 2 margin) in the same square; with framing body it is cropped back,
    so a body-framed model sees nearly the image it was scored on."""
    from lungct.io.images import framed, reframe

    view = fit_square(framed(chest_export(140, 170, 2, 5), "body"), 64)
    wider = reframe(view, margin, "image")
    assert wider.shape == view.shape and wider.dtype == np.uint8
    assert (wider > 40).sum() == pytest.approx((view > 40).sum() / (1 + 2 * margin) ** 2, rel=0.1)
    assert np.abs(reframe(view, margin, "body").astype(int) - view.astype(int)).mean() < 4
    rgb = np.repeat(view[..., None], 3, axis=-1)  # channels last: every channel alike
    np.testing.assert_array_equal(reframe(rgb, margin, "image")[..., 2], wider)
