"""python -m stages.predict: the trained model on raw files, exactly as evaluate saw them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungct.atomic import atomic_file, check_replaceable, sha256_file
from lungct.contract import Contract, model_version
from lungct.errors import UserError
from stages.predict import predict
from tests.dicom_fixtures import enhanced_ct, sr_document, truncated_pixel_data
from tests.trained import stage_env, trained_project

TOLERANCE = 1e-5


def passed_over(count: int) -> str:
    """predict's stderr line for the metadata files its folder walks passed over."""
    files = "file" if count == 1 else "files"
    return f"note: passed over {count} metadata {files} (.xml, .csv, .json, .txt, .md, DICOMDIR)"


@pytest.fixture(scope="module")
def project() -> Path:
    return trained_project()


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in the trained project, where models/ is, as a user would."""
    monkeypatch.chdir(project)
    return project


def model_args(project: Path) -> list[str]:
    return [
        "--model",
        str(project / "models/model.keras"),
        "--labels",
        str(project / "models/labels.json"),
    ]


def run_predict(args: list[str], out: Path, fmt: str = "csv") -> pd.DataFrame:
    assert predict([*args, "--output", str(out), "--format", fmt]) == 0
    return pd.read_csv(out, keep_default_na=False, comment="#")


def evaluated(project: Path) -> tuple[pd.DataFrame, list[str]]:
    """evaluate's metrics/predictions.csv, with each test image's raw DICOM file."""
    table = pd.read_csv(project / "metrics/predictions.csv", keep_default_na=False)
    classes = [c[2:] for c in table.columns if c.startswith("p_")]
    splits = pd.read_csv(project / "data/splits/splits.csv", keep_default_na=False)
    manifest = pd.read_csv(project / "data/converted/manifest.csv", keep_default_na=False)
    raw = splits.set_index("image")["source"].map(manifest.set_index("output")["source"])
    table["raw"] = [str(project / "data/raw" / raw[image]) for image in table["image"]]
    return table, classes


def test_predict_gives_evaluates_probabilities_for_test_split_files(in_project, tmp_path):
    expected, classes = evaluated(in_project)
    assert len(expected) >= 6
    p_columns = [f"p_{c}" for c in classes]
    # The PNGs evaluate read, as a folder, and the raw DICOM files they were converted from.
    pngs = run_predict(["data/splits/test"], tmp_path / "png.csv")
    raw = run_predict(list(expected["raw"]), tmp_path / "raw.csv")
    assert list(pngs["level"].unique()) == ["image"]  # PNGs have no series
    by_png = pngs.set_index("file")
    for row in expected.itertuples():
        want = np.array([getattr(row, c) for c in p_columns], dtype=float)
        got = by_png.loc[f"data/splits/test/{row.image[len('test/') :]}", p_columns]
        np.testing.assert_allclose(got.to_numpy(dtype=float), want, atol=TOLERANCE)
        assert by_png.loc[f"data/splits/test/{row.image[len('test/') :]}", "predicted"] == (
            row.predicted
        )
    np.testing.assert_allclose(
        raw[p_columns].to_numpy(dtype=float),
        expected[p_columns].to_numpy(dtype=float),
        atol=TOLERANCE,
    )
    assert list(raw["predicted"]) == list(expected["predicted"])


def test_dicom_folder_gets_a_series_row_with_the_mean(in_project, tmp_path):
    expected, classes = evaluated(in_project)
    patient = Path(expected["raw"].iloc[0]).parents[1]  # data/raw/<patient>/<series>/<n>.dcm
    table = run_predict([str(patient)], tmp_path / "p.csv")
    images, series = table[table["level"] == "image"], table[table["level"] == "series"]
    assert len(series) == 1 and len(images) >= 2
    row = series.iloc[0]
    assert row["file"] == str(patient) and row["images"] == len(images)
    assert row["series_uid"] == images["series_uid"].iloc[0] != ""
    p_columns = [f"p_{c}" for c in classes]
    mean = images[p_columns].to_numpy(dtype=float).mean(axis=0)
    np.testing.assert_allclose(row[p_columns].to_numpy(dtype=float), mean, atol=2e-6)
    assert row["predicted"] == classes[int(mean.argmax())]
    # As evaluate's patient-level mean of the same slices:
    mine = expected[expected["group"] == patient.name][p_columns].to_numpy(dtype=float)
    np.testing.assert_allclose(
        row[p_columns].to_numpy(dtype=float), mine.mean(axis=0), atol=TOLERANCE
    )


def test_multiframe_file_gives_a_row_per_frame(in_project, tmp_path):
    enhanced_ct(tmp_path / "study")
    table = run_predict([str(tmp_path / "study")], tmp_path / "p.csv")
    assert list(table["level"]) == ["image"] * 3 + ["series"]
    assert list(table["frame"]) == ["0", "1", "2", ""] and table["images"].iloc[3] == 3


def test_bad_inputs_one_line_each_and_the_rest_still_run(project, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = sorted((project / "data/splits/test").rglob("*.png"))[0]
    (folder / "good.png").write_bytes(good.read_bytes())
    (folder / "notes.txt").write_text("passed over: metadata by its name")
    (folder / "scan.bin").write_text("not an image")
    (tmp_path / "notes.txt").write_text("not an image, and given by name: read")
    sr = sr_document(folder).path
    truncated = truncated_pixel_data(folder).path
    (folder / ".hidden").write_text("left out")
    result = subprocess.run(
        [sys.executable, "-m", "stages.predict", str(folder), str(tmp_path / "missing.dcm")]
        + [str(tmp_path / "notes.txt")]
        + model_args(project)
        + ["--workers", "2"],  # reader processes forked before TensorFlow loads, as by default
        cwd=tmp_path,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    warning, *lines = result.stderr.strip().splitlines()
    # The tiny project's model was trained on the phantom: predict says so first.
    assert warning.startswith("warning: this model was trained on the built-in synthetic")
    expected = [  # each line starts so; the detail may say more
        f"{folder / 'scan.bin'}: not_image: neither a DICOM file nor an image format Pillow can read",
        f"{sr}: not_ct: SOP class Basic Text SR Storage",
        f"{truncated}: truncated_pixel_data: 440 bytes of pixel data",
        f"{tmp_path / 'missing.dcm'}: not_found: no such file or folder",
        f"{tmp_path / 'notes.txt'}: not_image: neither a DICOM file nor an image format",
    ]
    assert len(lines) == len(expected) + 2, result.stderr
    for start, line in zip(sorted(expected), sorted(lines[:-2]), strict=True):
        assert line.startswith(start), result.stderr
    assert lines[-2] == passed_over(1)
    assert lines[-1] == "predict: 5 input(s) failed, 1 image(s) predicted"
    table = result.stdout.splitlines()
    assert table[0].split()[:2] == ["file", "predicted"] and len(table) == 2
    assert table[1].startswith(str(folder / "good.png"))


def test_no_model_is_one_line_saying_dvc_repro(project, tmp_path):
    for extra in ([], ["--labels", str(project / "models/labels.json")]):
        result = subprocess.run(
            [sys.executable, "-m", "stages.predict", str(project / "data/splits/test"), *extra],
            cwd=tmp_path,
            env=stage_env(),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: models/") and "run `dvc repro`" in line, line
        assert result.stdout == ""


def test_model_and_labels_must_agree(project, tmp_path):
    labels = json.loads((project / "models/labels.json").read_text())
    bad = tmp_path / "labels.json"
    bad.write_text(json.dumps({**labels, "image_size": labels["image_size"] * 2}))
    args = [str(project / "data/splits/test"), "--model", str(project / "models/model.keras")]
    with pytest.raises(UserError, match="rerun dvc repro"):
        predict([*args, "--labels", str(bad)])
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not a readable model contract"):
        predict([*args, "--labels", str(bad)])
    damaged = tmp_path / "model.keras"
    damaged.write_bytes((project / "models/model.keras").read_bytes()[:1000])
    labels_arg = ["--labels", str(project / "models/labels.json")]
    with pytest.raises(UserError, match=r"model.keras: .*dvc repro"):
        predict([str(project / "data/splits/test"), "--model", str(damaged), *labels_arg])


def test_formats_output_and_batches(project, tmp_path, capsys):
    test_dir = str(project / "data/splits/test")
    args = [test_dir, *model_args(project)]
    csv = run_predict([*args, "--batch-size", "64"], tmp_path / "a.csv")
    one = run_predict([*args, "--batch-size", "1"], tmp_path / "b.csv")
    p_columns = [c for c in csv.columns if c.startswith("p_")]
    np.testing.assert_allclose(csv[p_columns], one[p_columns], atol=TOLERANCE)
    assert list(csv.columns[:6]) == ["file", "level", "frame", "series_uid", "images", "predicted"]

    assert predict([*args, "--output", str(tmp_path / "out.json")]) == 0  # format from suffix
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["failures"] == [] and len(document["predictions"]) == len(csv)
    first = document["predictions"][0]
    assert first["file"] == csv["file"].iloc[0] and first["frame"] is None
    assert first[p_columns[0]] == pytest.approx(csv[p_columns[0]].iloc[0], abs=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv", "out.json"]

    capsys.readouterr()
    assert predict(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "predicted", *(c[2:] for c in p_columns)]
    assert len(lines) == len(csv) + 1


def test_written_files_carry_the_model_and_its_warning(project, tmp_path):
    """JSON: ``model`` (file name, sha256, version, classes, what it was trained on) and
    ``warning``; CSV: the same as leading ``# key: value`` lines that
    ``pandas.read_csv(comment="#")`` skips (a '#' in a file name stays data); a table written
    to a file: the same lines."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for k, png in enumerate(sorted((project / "data/splits/test").rglob("*.png"))[:2]):
        shutil.copy(png, folder / f"scan#{k}.png")
    labels = json.loads((project / "models/labels.json").read_text())
    model = {
        "file": "model.keras",
        "sha256": sha256_file(project / "models/model.keras"),
        "version": model_version(sha256_file(project / "models/model.keras")),
        "classes": labels["classes"],
        "trained_on": Contract.read(project / "models/labels.json").describe_data(),
        "data": labels["data"],
        "uncertain": Contract.read(project / "models/labels.json").describe_uncertain(),
    }
    assert model["trained_on"].startswith("trained on synthetic data (lungct.phantom")
    args = [str(folder), *model_args(project)]
    assert predict([*args, "--output", str(tmp_path / "p.json")]) == 0
    document = json.loads((tmp_path / "p.json").read_text())
    assert document["model"] == model
    assert document["warning"] == labels["warning"] and "not for real CT" in labels["warning"]

    assert predict([*args, "--output", str(tmp_path / "p.csv")]) == 0
    header = (
        "# model_file: model.keras\n"
        f"# model_sha256: {model['sha256']}\n"
        f"# model_version: {model['version']}\n"
        f"# classes: {', '.join(model['classes'])}\n"
        f"# trained_on: {model['trained_on']}\n"
        f"# warning: {labels['warning']}\n"
    )
    text = (tmp_path / "p.csv").read_text()
    assert text.startswith(header + "file,level,")
    table = pd.read_csv(tmp_path / "p.csv", comment="#", keep_default_na=False)
    assert list(table["file"]) == [str(folder / f"scan#{k}.png") for k in range(2)]
    assert list(table["file"]) == [row["file"] for row in document["predictions"]]
    p_columns = [f"p_{c}" for c in model["classes"]]
    np.testing.assert_allclose(
        table[p_columns].to_numpy(dtype=float),
        [[row[c] for c in p_columns] for row in document["predictions"]],
    )
    assert predict([*args, "--output", str(tmp_path / "p.txt")]) == 0  # the table
    assert (tmp_path / "p.txt").read_text().startswith(header + "file ")

    # A contract without the training-data record: no warning, and the lines say so.
    unrecorded = tmp_path / "labels.json"
    unrecorded.write_text(json.dumps({k: v for k, v in labels.items() if k != "data"}))
    args = [str(folder), "--model", model_args(project)[1], "--labels", str(unrecorded)]
    assert predict([*args, "--output", str(tmp_path / "old.csv")]) == 0
    lines = (tmp_path / "old.csv").read_text().splitlines()
    assert lines[4:6] == [
        "# trained_on: training data not recorded (a contract from before it was)",
        f"file,level,frame,series_uid,images,predicted,{','.join(p_columns)}",
    ]


def test_a_download_folders_metadata_is_passed_over_and_counted(project, tmp_path, capsys):
    """A download as TCIA's come: the readers' XML beside the slices, a manifest, notes and a
    DICOMDIR: every slice predicted, nothing failed (exit 0), the metadata counted on one
    stderr line. The same XML given by name is read, and is no image."""
    series = sorted((project / "data/raw").rglob("*.dcm"))[0].parent
    download = tmp_path / "download"
    shutil.copytree(series, download / "LIDC-IDRI-0001" / "series")
    metadata = [
        "LIDC-IDRI-0001/series/069.xml",
        "LIDC-IDRI-0001/series/README.MD",
        "LIDC-IDRI-0001/DICOMDIR",
        "LIDC-IDRI-0001/dicomdir",
        "manifest-1600709154662/metadata.CSV",
        "manifest-1600709154662/LICENSE.txt",
        "study.json",
    ]
    for name in metadata:
        (download / name).parent.mkdir(parents=True, exist_ok=True)
        (download / name).write_text("<LidcReadMessage/>")
    args = [*model_args(project), "--format", "json"]
    capsys.readouterr()
    assert predict([str(download), *args]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["failures"] == []
    images = [row["file"] for row in document["predictions"] if row["level"] == "image"]
    slices = sorted(series.glob("*.dcm"))
    assert images == [str(download / "LIDC-IDRI-0001/series" / f.name) for f in slices]
    warning, *lines = captured.err.strip().splitlines()
    assert warning.startswith("warning: ") and lines == [passed_over(len(metadata))]

    xml = download / metadata[0]
    assert predict([str(xml), *args]) == 1
    assert f"{xml}: not_image" in capsys.readouterr().err


def test_usage_errors_exit_2(project):
    with pytest.raises(SystemExit) as stop:
        predict([str(project), "--batch-size", "0"])
    assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        predict([])
    assert stop.value.code == 2


def test_reader_processes_give_the_same_rows_and_failures(project, tmp_path, capsys):
    folder = tmp_path / "inputs"
    shutil.copytree(project / "data/raw", folder)
    (folder / "zz-notes.txt").write_text("metadata, by its name")  # as labels.csv, SOURCE.json
    (folder / "zz-scan.bin").write_text("not an image")
    args = [str(folder), *model_args(project), "--format", "json"]
    outputs = []
    for workers in ("0", "2"):
        capsys.readouterr()
        assert predict([*args, "--workers", workers]) == 1
        captured = capsys.readouterr()
        outputs.append(json.loads(captured.out))
        assert f"{folder / 'zz-scan.bin'}: not_image" in captured.err
        assert passed_over(3) in captured.err.splitlines()
    alone, pooled = outputs
    assert [r["file"] for r in alone["predictions"]] == [r["file"] for r in pooled["predictions"]]
    assert alone["failures"] == pooled["failures"] and len(alone["failures"]) == 1
    for a, b in zip(alone["predictions"], pooled["predictions"], strict=True):
        assert a == pytest.approx(b, abs=TOLERANCE)
    assert sum(r["level"] == "series" for r in pooled["predictions"]) == 9  # TINY's patients


@pytest.mark.parametrize("kind", ["folder", "link", "dangling-link", "fifo", "socket"])
def test_output_is_a_new_path_or_a_regular_file(project, tmp_path, kind):
    out = tmp_path / "out.csv"
    kept = tmp_path / "kept.csv"
    kept.write_text("mine\n")
    if kind == "folder":
        out.mkdir()
    elif kind == "link":
        out.symlink_to(kept)
    elif kind == "dangling-link":
        out.symlink_to(tmp_path / "nowhere.csv")
    elif kind == "fifo":
        os.mkfifo(out)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(out))
        server.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [str(project / "data/splits/test"), *model_args(project), "--output", str(out)]
    words = {"folder": "a folder", "fifo": "a FIFO", "socket": "a socket"}
    with pytest.raises(UserError, match=f"out.csv: is {words.get(kind, 'a symbolic link')}"):
        predict(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left
    assert kept.read_text() == "mine\n"


def test_device_is_never_replaced():
    # The check alone: a failure here must not go on to replace /dev/null.
    with pytest.raises(UserError, match="/dev/null: is a device"):
        check_replaceable(Path("/dev/null"))


def test_replace_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    def fail(src, dst):
        raise IsADirectoryError(21, "Is a directory", str(dst))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(IsADirectoryError), atomic_file(tmp_path / "out.csv") as tmp:
        tmp.write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_fifos_and_links_in_inputs_are_reported_never_opened(project, tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = sorted((project / "data/splits/test").rglob("*.png"))[0]
    (folder / "good.png").write_bytes(good.read_bytes())
    os.mkfifo(folder / "pipe.dcm")  # opening it would block
    os.mkfifo(tmp_path / "arg.dcm")
    (folder / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    (folder / "gone.png").symlink_to(tmp_path / "nothing.png")
    (folder / "link.png").symlink_to(folder / "good.png")  # a link to a file is read
    args = [str(folder), str(tmp_path / "arg.dcm"), *model_args(project), "--format", "csv"]
    assert predict(args) == 1
    captured = capsys.readouterr()
    warning, *lines = captured.err.strip().splitlines()
    assert warning.startswith("warning: this model was trained on the built-in synthetic")
    assert sorted(lines[:-1]) == sorted(
        [
            f"{folder / 'elsewhere'}: not_a_file: a link to a folder (not followed)",
            f"{folder / 'gone.png'}: not_found: a broken symbolic link",
            f"{folder / 'pipe.dcm'}: not_a_file: a FIFO, not a regular file",
            f"{tmp_path / 'arg.dcm'}: not_a_file: a FIFO, not a regular file",
        ]
    )
    assert lines[-1] == "predict: 4 input(s) failed, 2 image(s) predicted"
