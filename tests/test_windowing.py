import numpy as np
import pytest

from lungct.io.windowing import is_window, window_channels, window_lookup, window_uint8


def test_lung_window_hand_computed():
    # Lung window L -600 W 1500 spans -1350..150 HU: 0.25, 0.5, 0.75 of it are 63.75,
    # 127.5, 191.25 of 255, rounded half up.
    hu = np.array([-2000, -1350, -975, -600, -225, 150, 1000], dtype=np.int16)
    assert window_uint8(hu, -600, 1500).tolist() == [0, 0, 64, 128, 191, 255, 255]


def test_window_output_dtype_and_no_integer_wraparound():
    hu = np.array([[40000, 0]], dtype=np.uint16)  # arithmetic must not wrap
    out = window_uint8(hu, 40, 400)
    assert out.dtype == np.uint8 and out.shape == (1, 2)
    assert out.ravel().tolist() == [255, 102]  # 0 HU is 0.4 of the window: 102.0


def test_zero_width_is_rejected():
    with pytest.raises(ValueError, match="positive"):
        window_uint8(np.zeros(3), 0, 0)


@pytest.mark.parametrize(
    ("center", "width"), [(float("nan"), 400), (40, float("nan")), (40, float("inf")), (np.inf, 1)]
)
def test_non_finite_window_is_rejected_not_black_or_white(center, width):
    assert not is_window(center, width)
    with pytest.raises(ValueError, match="finite"):
        window_uint8(np.zeros(3, np.float32), center, width)


@pytest.mark.parametrize(("center", "width"), [(-600, 1500), (50, 350), (400, 1800), (40, 1)])
def test_window_is_the_linear_map_rounded(center, width):
    """The float32 buffer gives the linear map of the window onto 0..255, clipped and
    rounded half up, computed exactly (float64)."""
    hu = np.linspace(-3000, 3000, 60001, dtype=np.float32)
    fast = window_uint8(hu, center, width)
    unit = np.clip((hu.astype(np.float64) - (center - width / 2)) / width, 0.0, 1.0)
    exact = np.floor(unit * 255.0 + 0.5).astype(np.uint8)
    assert np.abs(fast.astype(int) - exact).max() <= 1  # float rounding at exact .5 only
    assert (fast != exact).mean() < 1e-3


def test_lookup_of_a_window_table_is_the_window():
    """A window applied as a table indexed by stored value (issue 17): the table is
    window_uint8 of each value's HU, so a lookup gives window_channels of the HU."""
    codes = np.random.default_rng(0).integers(0, 2**16, (64, 48), dtype=np.uint16)
    hu_of_code = (np.arange(2**16, dtype=np.uint16).view(np.int16) * 0.5 - 1024.25).astype(
        np.float32
    )
    windows = [(-600.0, 1500.0), (50.0, 350.0), (400.0, 1800.0)]
    tables = [window_uint8(hu_of_code, c, w) for c, w in windows]
    hu = hu_of_code[codes]
    assert np.array_equal(window_lookup(codes, tables[:1]), window_channels(hu, windows[:1]))
    lookup = window_lookup(codes, tables)
    assert lookup.shape == (64, 48, 3) and lookup.dtype == np.uint8
    assert np.array_equal(lookup, window_channels(hu, windows))
