"""``python -m stages.predict --format dicom-sr --output DIR``: one DICOM Structured Report
per series or image, referencing its sources, read back with pydicom and highdicom."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from lungct.errors import UserError
from lungct.serving.dicom_sr import check_output_dir
from stages.predict import predict
from tests.dicom_fixtures import enhanced_ct
from tests.trained import trained_project


@pytest.fixture(scope="module")
def project() -> Path:
    return trained_project()


def run(project: Path, capsys, *args: str) -> tuple[int, str, str]:
    """The predict command in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = predict(
        [
            *args,
            "--model",
            str(project / "models/model.keras"),
            "--labels",
            str(project / "models/labels.json"),
        ]
    )
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def references(sr: pydicom.Dataset) -> set[tuple[str, str, str]]:
    """(study, series, SOP instance) of every instance the SR lists as evidence."""
    return {
        (study.StudyInstanceUID, series.SeriesInstanceUID, item.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def values(path: Path) -> tuple[str, dict[str, float], list[tuple[str, tuple | None]]]:
    """Predicted class, probabilities and source images (SOP UID, frames) of an SR."""
    (group,) = hd.sr.srread(path).content.get_image_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name.value == "predicted_class"
    probabilities = {m.name.value: m.value for m in group.get_measurements()}
    assert {m.unit.value for m in group.get_measurements()} == {"1"}
    sources = [
        (s.referenced_sop_instance_uid, getattr(s, "referenced_frame_numbers", None))
        for s in group.source_images
    ]
    return evaluation.value.value, probabilities, sources


def test_one_sr_per_series_or_image_with_references_and_values(
    project: Path, tmp_path: Path, capsys
):
    series = sorted((project / "data/raw").iterdir())[0]
    series_files = sorted(series.rglob("*.dcm"))
    alone = sorted((project / "data/raw").rglob("*.dcm"))[-1]
    png = sorted((project / "data/splits/test").rglob("*.png"))[0]
    volume = enhanced_ct(tmp_path / "volume").path  # a multi-frame file: one SR per frame
    inputs = [str(series), str(alone), str(png), str(volume)]
    status, out, err = run(project, capsys, *inputs, "--format", "json")
    assert status == 0, err
    expected = json.loads(out)
    reports = tmp_path / "reports"

    status, out, err = run(
        project, capsys, *inputs, "--format", "dicom-sr", "--output", str(reports)
    )
    assert status == 0, err
    assert f"note: {png}: no DICOM SR: an exported image has no Study" in err
    written = [Path(line) for line in out.splitlines()]
    assert sorted(written) == sorted(reports.iterdir())
    assert not list(tmp_path.glob(".*.tmp-*"))
    # Rows: the series' slices and its series row, the lone file, the PNG, three frames.
    rows = expected["predictions"]
    series_row = next(r for r in rows if r["level"] == "series")
    alone_row = next(r for r in rows if r["file"] == str(alone))
    frame_rows = [r for r in rows if r["file"] == str(volume)]
    assert len(written) == 1 + 1 + len(frame_rows) == 5

    def check(path: Path, row: dict, sources: list[Path], frames: list[int] | None = None):
        sr = pydicom.dcmread(path)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
        assert sr.Modality == "SR" and sr.Manufacturer == "lungct"
        assert references(sr) == {uids(source) for source in sources}
        study, _, _ = uids(sources[0])
        assert sr.StudyInstanceUID == study and sr.SeriesInstanceUID != uids(sources[0])[1]
        predicted, probabilities, images = values(path)
        assert predicted == row["predicted"]
        for name in expected["classes"]:
            assert probabilities[f"p_{name}"] == pytest.approx(row[f"p_{name}"], abs=1e-6)
        assert [uid for uid, _ in images] == [uids(s)[2] for s in sources]
        if frames is not None:
            assert [tuple(f) for _, f in images] == [tuple(frames)]

    by_name = {path.name: path for path in written}
    series_uid = uids(series_files[0])[1]
    check(by_name[f"series-{series_uid}.dcm"], series_row, series_files)
    check(by_name[f"image-{uids(alone)[2]}.dcm"], alone_row, [alone])
    for row in frame_rows:
        frame = row["frame"] + 1
        check(by_name[f"image-{uids(volume)[2]}-frame-{frame}.dcm"], row, [volume], [frame])
    # The algorithm says what the model is, and what it was trained on.
    sr = pydicom.dcmread(by_name[f"image-{uids(alone)[2]}.dcm"])
    texts = [e.value for e in sr.iterall() if e.keyword == "TextValue"]
    assert "lungct CNN" in texts and any("not for real CT" in t for t in texts)


def test_output_must_be_a_new_or_empty_folder(project: Path, tmp_path: Path, capsys):
    dicom = str(sorted((project / "data/raw").rglob("*.dcm"))[0])
    a_file = tmp_path / "out.dcm"
    a_file.write_text("keep me")
    full = tmp_path / "full"
    full.mkdir()
    (full / "other.txt").write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "empty", target_is_directory=True)
    cases = [(a_file, "is not a folder"), (full, "is not empty"), (link, "is a symbolic link")]
    for target, says in cases:
        with pytest.raises(UserError) as err:  # before the model loads
            run(project, capsys, dicom, "--format", "dicom-sr", "--output", str(target))
        assert str(err.value).startswith(f"{target}: {says}"), err.value
    assert a_file.read_text() == "keep me" and (full / "other.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as stop:
        run(project, capsys, dicom, "--format", "dicom-sr")
    assert stop.value.code == 2
    assert "--format dicom-sr needs --output DIR" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")  # an empty folder is taken (and replaced whole)
    check_output_dir(tmp_path / "new")
