"""Annotated CT through the stages: the phantom written as LIDC-IDRI, LUNA16 (DICOM and
MetaImage) and Lung-PET-CT-Dx, detected, labelled slice by slice, cropped around lesions,
stacked with neighbouring slices (2.5-D), and, end to end, trained and predicted on.

The label rules themselves are tested case by case in tests/test_annotations.py; here
each form goes through download, convert and split as a user's data would.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungct.annotations import REASONS
from lungct.data.tables import read_manifest
from lungct.errors import UserError
from lungct.params import Params, merge, parse_params
from lungct.phantom import FORM_LAYOUTS, write_cohort
from lungct.serving.inference import restack
from stages.convert import convert
from stages.download import download
from stages.predict import predict
from stages.split import split
from tests.conftest import TINY
from tests.dvc_project import new_project

# Enough slices of a clinical series (1-2.5 mm) for the margins to matter.
ANNOTATED = {"data": {"synthetic": {"patients": 12, "slices": 8, "image_size": 64}}}


def params_for(tiny_raw: dict, form: str, **convert_params) -> Params:
    override = merge(ANNOTATED, {"data": {"synthetic": {"annotations": form}}})
    return parse_params(merge(merge(tiny_raw, override), {"convert": convert_params}))


def converted(params: Params) -> pd.DataFrame:
    download(params)
    convert(params.convert, seed=params.base.seed)
    return read_manifest()


@pytest.mark.parametrize("form", ["lidc", "luna16", "luna16-mhd", "voc"])
def test_each_form_is_labelled_slice_by_slice(workdir, tiny_raw, form):
    manifest = converted(params_for(tiny_raw, form))
    source = json.loads(Path("data/raw/SOURCE.json").read_text())
    assert source["layout"] == FORM_LAYOUTS[form] == manifest["layout"].iloc[0]
    # Annotation files are metadata, not inputs: no row for an XML, CSV or .raw file.
    assert not manifest["source"].str.endswith((".xml", ".csv", ".raw")).any()
    done = manifest[manifest["status"] == "converted"]
    skipped = manifest[manifest["status"] == "skipped"]
    assert len(done) and (done["label"] != "").all() and (done["slice_key"] != "").all()
    assert (done["label_source"] != "").all()
    # Every other slice says why, with a reason of the label rules (never silently).
    assert set(skipped["reason"]) <= set(REASONS), set(skipped["reason"])
    if form == "lidc":
        scores = pd.to_numeric(done["score"])  # normal slices: no score
        labels = done["label"]
        assert (scores[labels == "malignant"] > 3).all() and (scores[labels == "benign"] < 3).all()
        assert (scores[labels == "indeterminate"] == 3).all()
        assert (done.loc[labels != "normal", "readers"].astype(int) >= 2).all()
        assert {"malignant", "benign", "normal"} <= set(labels)
    elif form.startswith("luna16"):
        assert set(done["label"]) == {"nodule", "normal"}
        with Path("data/raw/annotations.csv").open() as stream:
            nodules = list(csv.DictReader(stream))
        for row in done[done["label"] == "nodule"].itertuples():
            near = [n for n in nodules if n["seriesuid"] == row.series_uid]
            position = float(row.slice_position)
            assert any(
                abs(position - float(n["coordZ"])) <= float(n["diameter_mm"]) / 2 + 1e-6
                for n in near
            )
    else:  # voc: a letter per annotated slice, from the file named by its SOP UID
        assert set(done["label"]) <= {"A", "B", "E", "G"}
        for row in done.itertuples():
            assert row.label_source.endswith(f"{row.slice_key}.xml")


def test_non_ct_series_beside_annotated_ct_are_outcomes_not_failures(workdir, tiny_raw):
    """Lung-PET-CT-Dx ships PET series beside the CT: skipped as not_ct, and (unlike a
    broken file) not counted against convert.max_skipped_fraction."""
    from tests.dicom_fixtures import mr_image

    params = params_for(tiny_raw, "voc")
    download(params)
    for i in range(12):  # 12 of 108 files: over the 5 % a broken file may make
        mr_image(Path("data/raw/PET") / f"{i}", patient_id=f"PET-{i}")
    metrics = convert(params.convert, seed=params.base.seed)
    assert metrics["skipped_by_reason"]["not_ct"] == 12


def test_annotated_layouts_are_detected_from_a_folder(workdir, tiny_raw):
    for form in ("lidc", "luna16-mhd", "voc"):
        incoming = workdir / f"incoming-{form}"
        write_cohort(
            incoming,
            patients=3,
            slices=4,
            image_size=32,
            seed=1,
            annotations=form,
            class_balance={"normal": 1.0, "benign": 1.0, "malignant": 1.0},
        )
        params = parse_params(
            merge(tiny_raw, {"data": {"source": "path", "path": str(incoming), "layout": "auto"}})
        )
        download(params)
        assert (
            json.loads(Path("data/raw/SOURCE.json").read_text())["layout"] == (FORM_LAYOUTS[form])
        )


def test_lidc_split_keeps_patients_whole_and_drops_indeterminate(workdir, tiny_raw):
    params = params_for(tiny_raw, "lidc")
    converted(params)
    metrics = split(parse_params(merge(params.model_dump(), {"split": {"classes": "binary"}})))
    assert metrics["groups_in_several_splits"] == 0
    table = pd.read_csv("data/splits/splits.csv", keep_default_na=False)
    assert set(table["class"]) == {"with_cancer", "without_cancer"}
    assert table["group"].str.startswith("PHANTOM-").all()  # groups are PatientIDs


def test_lesion_crops_are_centred_and_reproducible(workdir, tiny_raw):
    params = params_for(tiny_raw, "lidc", crop="lesion", crop_mm=40.0, framing="image")
    manifest = converted(params)
    done = manifest[manifest["status"] == "converted"]
    assert (done["crop_center"] != "").all()  # nodules: the lesion; normal: a lung point
    first = Path("data/converted/manifest.csv").read_bytes()
    convert(params.convert, seed=params.base.seed)
    assert Path("data/converted/manifest.csv").read_bytes() == first
    # A nodule crop shows the nodule at its centre: denser than lung around it.
    row = done[done["label"] == "malignant"].iloc[0]
    image = np.asarray(Image.open(Path("data/converted") / row["output"]), dtype=float)
    size = image.shape[0]
    centre = image[size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2].mean()
    assert centre > np.median(image)


def test_a_crop_needs_an_annotated_layout(workdir, tiny):
    download(tiny)
    with pytest.raises(UserError, match="convert.crop: 'lesion' needs an annotated layout"):
        convert(tiny.convert.model_copy(update={"crop": "lesion"}))


def test_context_stacks_the_neighbours_in_series_order(workdir, tiny_raw):
    """Each 2.5-D image is (previous, slice, next) of the single-slice images, the series
    ends repeating the edge slice."""
    # framing image: body framing frames each slice by itself (params allow no context)
    tiny = merge(tiny_raw, {"data": {"synthetic": {"slices": 4}}, "convert": {"framing": "image"}})
    params = parse_params(tiny)
    download(params)
    single = convert(params.convert)
    alone = read_manifest()
    images = {
        r.output: np.asarray(Image.open(f"data/converted/{r.output}")) for r in alone.itertuples()
    }
    stacked = convert(params.convert.model_copy(update={"context_slices": 1}))
    assert stacked["converted"] == single["converted"]
    manifest = read_manifest()
    for _, series in manifest.groupby("series_uid"):
        order = series.sort_values("slice_index")["output"].tolist()
        for i, output in enumerate(order):
            image = np.asarray(Image.open(f"data/converted/{output}"))
            assert image.shape[-1] == 3
            near = [order[max(i - 1, 0)], output, order[min(i + 1, len(order) - 1)]]
            for channel, neighbour in enumerate(near):
                np.testing.assert_array_equal(image[..., channel], images[neighbour])


def test_predict_restacks_a_folder_like_convert():
    rng = np.random.default_rng(0)
    slices = [rng.integers(0, 255, (4, 4), dtype=np.uint8) for _ in range(3)]
    from lungct.contract import Preprocessing

    prep = Preprocessing(((-600.0, 1500.0),), False, 16, context_slices=1)  # 16: the least
    alone = [np.stack([s] * 3, axis=-1) for s in slices]  # what a lone file gives
    # given out of order: positions 2, 0, 1 of one series, and a PNG (no series)
    held = [(None, alone[2], "s", 2.0), (None, alone[0], "s", 0.0), (None, alone[1], "s", 1.0)]
    held.append((None, alone[0], "", None))
    out = restack(held, prep)
    np.testing.assert_array_equal(out[1], np.stack([slices[0], slices[0], slices[1]], axis=-1))
    np.testing.assert_array_equal(out[2], np.stack([slices[0], slices[1], slices[2]], axis=-1))
    np.testing.assert_array_equal(out[0], np.stack([slices[1], slices[2], slices[2]], axis=-1))
    np.testing.assert_array_equal(out[3], alone[0])


@pytest.mark.e2e
def test_lidc_2_5d_end_to_end_through_dvc_repro(tmp_path, monkeypatch):
    """dvc repro on the phantom as LIDC-IDRI, 2.5-D input; predict on a raw series folder
    gives evaluate's probabilities for its test slices (the same neighbours)."""
    override = merge(
        merge(TINY, ANNOTATED),
        {
            "data": {"synthetic": {"annotations": "lidc"}},
            "convert": {"context_slices": 1, "framing": "image"},
            "split": {"classes": "binary"},
        },
    )
    project = new_project(override, prefix="lungct-lidc-")
    contract = json.loads((project / "models/labels.json").read_text())
    assert contract["channels"] == 3 and contract["context_slices"] == 1
    table = pd.read_csv(project / "metrics/predictions.csv", keep_default_na=False)
    splits = pd.read_csv(project / "data/splits/splits.csv", keep_default_na=False)
    manifest = pd.read_csv(project / "data/converted/manifest.csv", keep_default_na=False)
    manifest = manifest[manifest["status"] == "converted"]
    raw = splits.set_index("image")["source"].map(manifest.set_index("output")["source"])
    table["raw"] = [str(project / "data/raw" / raw[i]) for i in table["image"]]
    series_folder = Path(table["raw"].iloc[0]).parent
    monkeypatch.chdir(project)
    out = tmp_path / "p.csv"
    # The series folder also holds the readers' XML, which predict passes over (metadata).
    assert predict([str(series_folder), "--output", str(out), "--format", "csv"]) == 0
    got = pd.read_csv(out, keep_default_na=False, comment="#")
    got = got[got["level"] == "image"]
    got = got.set_index("file")
    classes = [c[2:] for c in table.columns if c.startswith("p_")]
    checked = 0
    for row in table.itertuples():
        if Path(row.raw).parent == series_folder:
            want = [getattr(row, f"p_{c}") for c in classes]
            np.testing.assert_allclose(
                got.loc[row.raw, [f"p_{c}" for c in classes]].to_numpy(float), want, atol=1e-5
            )
            checked += 1
    assert checked >= 1
