import io
import json

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from lungct.errors import UserError
from lungct.io.windowing import window_uint8
from lungct.params import Window
from stages.convert import convert
from stages.download import download
from tests.dicom_fixtures import build_all, ct_basic


@pytest.fixture
def raw(workdir, tiny):
    download(tiny)
    return workdir / "data/raw"


def test_every_file_in_the_manifest_converted_or_skipped(workdir, tiny, raw):
    (raw / "PHANTOM-0001" / "notes.txt").write_text("not DICOM")
    with pytest.raises(
        UserError,
        match=r"1 of 19 files skipped as unreadable or unusable, more than convert.max_skipped",
    ):
        convert(tiny.convert)  # 1/19 > 0.05
    assert not (workdir / "data/converted").exists() and not (workdir / "metrics").exists()
    metrics = convert(tiny.convert.model_copy(update={"max_skipped_fraction": 0.1}))
    manifest = pd.read_csv(workdir / "data/converted/manifest.csv", keep_default_na=False)
    assert len(manifest) == 9 * 2 + 1
    skipped = manifest[manifest["status"] == "skipped"]
    assert skipped["source"].tolist() == ["PHANTOM-0001/notes.txt"]
    assert skipped["reason"].tolist() == ["not_dicom"]
    converted = manifest[manifest["status"] == "converted"]
    assert set(converted["label"]) == {"normal", "benign", "malignant"}
    assert metrics == json.loads((workdir / "metrics/convert.json").read_text())
    assert metrics["converted"] == 18 and metrics["skipped_by_reason"] == {"not_dicom": 1}
    assert metrics["patients"] == 9 and metrics["series"] == 9


def test_pngs_are_windowed_resized_and_padding_is_air(workdir, tiny, raw):
    convert(tiny.convert.model_copy(update={"framing": "image"}))  # the whole slice
    manifest = pd.read_csv(workdir / "data/converted/manifest.csv", keep_default_na=False)
    image = np.asarray(Image.open(workdir / "data/converted" / manifest["output"].iloc[0]))
    assert image.shape == (32, 32) and image.dtype == np.uint8
    # The corner is outside the scanner's field of view: padding (-2000 stored) must become
    # air (-1000 HU, 60 in the lung window), not -3024 HU (0) as a bare rescale would give.
    assert image[0, 0] == window_uint8(np.array([-1000.0]), -600, 1500)[0] == 60
    # Lung window: a chest slice has dark lungs, mid-grey tissue and bright bone.
    assert image.max() >= 200 and (image > 0).mean() > 0.3


def test_unlabelled_patient_is_skipped(workdir, tiny, raw):
    labels = pd.read_csv(raw / "labels.csv")
    labels.iloc[1:].to_csv(raw / "labels.csv", index=False)
    convert(tiny.convert.model_copy(update={"max_skipped_fraction": 0.2}))
    manifest = pd.read_csv(workdir / "data/converted/manifest.csv", keep_default_na=False)
    unlabeled = manifest[manifest["reason"] == "unlabeled"]
    assert len(unlabeled) == 2 and set(unlabeled["patient_id"]) == {labels["PatientID"].iloc[0]}


def test_nothing_convertible_is_an_error_and_writes_nothing(workdir, tiny):
    raw = workdir / "data/raw"
    raw.mkdir(parents=True)
    (raw / "labels.csv").write_text("PatientID,label\n")
    (raw / "SOURCE.json").write_text('{"layout": "dicom"}')
    (raw / "a.txt").write_text("x")
    with pytest.raises(UserError, match="no file could be converted"):
        convert(tiny.convert)
    assert not (workdir / "data/converted").exists()
    assert not (workdir / "metrics").exists()


def write_tree(root, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_image_layout_converts_every_mode_and_labels_by_folder(workdir, tiny):
    raw = workdir / "data/raw"
    adeno = "Data/train/adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib"
    rgba = Image.new("RGBA", (60, 30), (255, 255, 255, 0))  # transparent white -> black
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    write_tree(
        raw,
        {
            "SOURCE.json": b'{"layout": "chest-ctscan"}',
            f"{adeno}/a.png": encoded(rgba),
            f"{adeno}/b.jpg": encoded(Image.new("RGB", (40, 80), (200, 100, 50)), "JPEG"),
            "Data/test/normal/c.png": encoded(Image.new("L", (32, 32), 77)),
            "Data/test/normal/d.png": encoded(Image.new("I;16", (16, 16), 256 * 200)),
            "Data/test/normal/broken.png": encoded(noise)[: len(encoded(noise)) // 2],
            "Data/readme.txt": b"not an image",
        },
    )
    metrics = convert(tiny.convert.model_copy(update={"max_skipped_fraction": 0.5}))
    manifest = pd.read_csv(
        workdir / "data/converted/manifest.csv", keep_default_na=False
    ).set_index("source")
    assert manifest.loc[f"{adeno}/a.png", "label"] == "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib"
    assert manifest.loc[f"{adeno}/a.png", "official_split"] == "train"
    assert manifest.loc["Data/test/normal/c.png", "official_split"] == "test"
    assert manifest.loc[f"{adeno}/a.png", "mode"] == "RGBA"
    assert [str(v) for v in manifest.loc[f"{adeno}/b.jpg", ["rows", "columns"]]] == ["80", "40"]
    assert manifest.loc["Data/readme.txt", "reason"] == "not_image"
    assert manifest.loc["Data/test/normal/broken.png", "reason"] == "unreadable_image"
    assert metrics["converted"] == 4 and metrics["layout"] == "chest-ctscan"
    assert metrics["skipped_by_reason"] == {"not_image": 1, "unreadable_image": 1}
    assert all(len(h) == 16 for h in manifest.loc[manifest["status"] == "converted", "phash"])

    def png(source):
        return np.asarray(Image.open(workdir / "data/converted" / manifest.loc[source, "output"]))

    assert png(f"{adeno}/a.png").max() == 0  # alpha composited on black
    wide = png(f"{adeno}/b.jpg")  # 40x80 -> 16x32 centred in 32x32, black bars left and right
    assert wide.shape == (32, 32) and wide[:, :7].max() == 0 and wide[:, 9:23].min() > 100
    assert (png("Data/test/normal/c.png") == 77).all()
    assert (png("Data/test/normal/d.png") == 200).all()  # 16-bit: top byte


def test_missing_raw_data_is_a_clear_error(workdir, tiny):
    with pytest.raises(UserError, match="data/raw: not found"):
        convert(tiny.convert)


def test_pool_and_single_process_give_the_same_bytes(workdir, tiny, raw):
    outputs = []
    for workers in (1, 2):
        convert(tiny.convert.model_copy(update={"workers": workers}))
        converted = workdir / "data/converted"
        files = [p for p in converted.rglob("*") if p.is_file()]
        outputs.append({p.relative_to(converted): p.read_bytes() for p in files})
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 9 * 2 + 1  # PNGs and the manifest


def test_every_rule_lands_in_the_manifest_with_its_reason_and_series_flags(workdir, tiny):
    raw = workdir / "data/raw"
    expects = build_all(raw / "mixed")
    (raw / "SOURCE.json").write_text('{"layout": "dicom"}')
    (raw / "labels.csv").write_text("PatientID,label\nFIX-001,malignant\n")
    convert(tiny.convert.model_copy(update={"max_skipped_fraction": 1.0}))
    manifest = pd.read_csv(
        workdir / "data/converted/manifest.csv", dtype=str, keep_default_na=False
    )
    by_source = manifest.groupby("source")
    files = {p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()}
    assert set(manifest["source"]) == files - {"SOURCE.json", "labels.csv"}
    for name, expect in expects.items():
        for path in expect.paths:
            rows = by_source.get_group(path.relative_to(raw).as_posix())
            wanted = "skipped" if expect.reason else "converted"
            assert set(rows["status"]) == {wanted}, name
            assert set(rows["reason"]) == {expect.reason}, name
    rows = manifest.set_index("source")

    def rel(path):
        return path.relative_to(raw).as_posix()

    shuffled = expects["series_shuffled_instances"]
    assert [rows.loc[rel(p), "slice_index"] for p in shuffled.order] == ["0", "1", "2", "3"]
    assert set(rows.loc[[rel(p) for p in shuffled.order], "position_source"]) == {"position"}
    fallback = expects["series_no_position"]
    assert [rows.loc[rel(p), "slice_index"] for p in fallback.order] == ["0", "1", "2"]
    assert set(rows.loc[[rel(p) for p in fallback.order], "position_source"]) == {"instance_number"}
    duplicates = expects["series_duplicate_position"]
    flagged = {p for p in duplicates.paths if rows.loc[rel(p), "duplicate_position"] == "True"}
    assert flagged == set(duplicates.duplicates)
    gap = expects["series_gap"]
    assert [rows.loc[rel(p), "gap"] for p in gap.order] == ["False", "False", "False", "True"]
    tilt = expects["series_gantry_tilt"]
    assert {float(rows.loc[rel(p), "gantry_tilt"]) for p in tilt.order} == {15.0}
    assert rows.loc[rel(expects["ct_rescale_type_not_hu"].path), "rescale_type"] == "US"
    jpeg_ls = rows.loc[rel(expects["ct_jpeg_ls"].path)]
    assert (
        jpeg_ls["status"] == "converted" and "1.2.840.10008.1.2.4.80" in jpeg_ls["transfer_syntax"]
    )
    enhanced = manifest[manifest["source"] == rel(expects["enhanced_ct"].path)]
    assert sorted(enhanced["frame"].astype(int)) == [0, 1, 2]
    assert enhanced["output"].str.endswith((".f0001.png", ".f0002.png", ".f0003.png")).all()
    assert (enhanced["slice_index"].astype(int).sort_values().tolist()) == [0, 1, 2]


def test_three_windows_give_one_channel_each_and_file_window_replaces_the_first(workdir, tiny):
    raw = workdir / "data/raw"
    expect = ct_basic(raw / "p")
    (raw / "SOURCE.json").write_text('{"layout": "dicom"}')
    (raw / "labels.csv").write_text("PatientID,label\nFIX-001,normal\n")
    windows = [Window(center=-600, width=1500), Window(center=50, width=350)] * 2
    params = tiny.convert.model_copy(
        update={"windows": windows[:3], "image_size": 20, "workers": 1, "framing": "image"}
    )
    convert(params)
    manifest = pd.read_csv(workdir / "data/converted/manifest.csv", keep_default_na=False)
    image = np.asarray(Image.open(workdir / "data/converted" / manifest["output"].iloc[0]))
    assert image.shape == (20, 20, 3)
    # 16 x 20 -> 16 x 20 centred in 20 x 20: rows 2..17 hold the slice.
    for channel, window in enumerate(windows[:3]):
        expected = window_uint8(expect.hu, window.center, window.width)
        np.testing.assert_array_equal(image[2:18, :, channel], expected)
    assert manifest["windows"].iloc[0] == "-600/1500;50/350;-600/1500"

    # The file's own window, when asked for, replaces the first one.
    ds_path = ct_basic(raw / "q").path
    ds = pydicom.dcmread(ds_path)
    ds.WindowCenter, ds.WindowWidth = [40, 400], [350, 2000]  # several values: the first counts
    ds.save_as(ds_path)
    convert(params.model_copy(update={"file_window": True}))
    manifest = pd.read_csv(workdir / "data/converted/manifest.csv", keep_default_na=False)
    windows_used = dict(zip(manifest["source"], manifest["windows"], strict=True))
    assert windows_used[ds_path.relative_to(raw).as_posix()] == "40/350;50/350;-600/1500"


def _failing_on(monkeypatch, odd, exc: BaseException) -> None:
    """The CT reader raises ``exc`` on the file ``odd`` (set before the pool forks)."""
    import lungct.data.convert as conversion

    real = conversion.read_ct

    def reader(path, *args):
        if path.resolve() == odd.resolve():
            raise exc
        return real(path, *args)

    monkeypatch.setattr(conversion, "read_ct", reader)


def test_any_exception_on_one_file_is_its_row_and_the_pool_goes_on(workdir, tiny, raw, monkeypatch):
    odd = sorted(raw.rglob("*.dcm"))[0]
    _failing_on(monkeypatch, odd, ZeroDivisionError("a reader bug\nsecond line"))
    params = tiny.convert.model_copy(update={"workers": 2, "max_skipped_fraction": 0.1})
    metrics = convert(params)
    manifest = pd.read_csv(workdir / "data/converted/manifest.csv", keep_default_na=False)
    row = manifest.set_index("source").loc[odd.relative_to(raw).as_posix()]
    assert (row["status"], row["reason"]) == ("skipped", "unreadable")
    assert row["detail"] == "ZeroDivisionError: a reader bug"
    assert metrics["converted"] == 17 and metrics["skipped_by_reason"] == {"unreadable": 1}


def test_running_out_of_memory_is_not_a_file_reason(workdir, tiny, raw, monkeypatch):
    _failing_on(monkeypatch, sorted(raw.rglob("*.dcm"))[0], MemoryError())
    with pytest.raises(MemoryError):
        convert(tiny.convert.model_copy(update={"workers": 1}))
    assert not (workdir / "data/converted").exists()
