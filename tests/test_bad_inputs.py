"""The bad-input sweep: one table of broken inputs across the whole pipeline.

For every case the command must exit non-zero with exactly one ``error:`` line that
names the problem, print no traceback, and leave behind no output that a later run
could mistake for a good one. The README's reliability section quotes ``len(CASES)``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lungct.params import merge, parse_params
from stages.convert import convert
from stages.download import download
from tests.conftest import ROOT, TINY, project_params
from tests.dvc_project import dvc_project


@dataclass(frozen=True)
class Case:
    id: str
    prepare: Callable[[Path], None]  # builds the broken project in an empty folder
    command: list[str]  # after `python -m`
    says: str  # the error line must contain this
    absent: list[str] = field(default_factory=list)  # outputs that must not exist after
    exit_code: int | None = None  # None: any non-zero


def write_params(root: Path, override: dict | None = None, text: str | None = None) -> None:
    params = merge(merge(project_params(), TINY), override or {})
    (root / "params.yaml").write_text(text if text is not None else yaml.safe_dump(params))


def params_without(section: str, key: str) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        params = merge(project_params(), TINY)
        del params[section][key]
        (root / "params.yaml").write_text(yaml.safe_dump(params))

    return prepare


def params_with(override: dict) -> Callable[[Path], None]:
    return lambda root: write_params(root, override)


def source_folder(build: Callable[[Path], None]) -> Callable[[Path], None]:
    """params.yaml reading data from ``<root>/incoming``, built by ``build``."""

    def prepare(root: Path) -> None:
        incoming = root / "incoming"
        incoming.mkdir()
        build(incoming)
        write_params(root, {"data": {"source": "path", "path": str(incoming)}})

    return prepare


def chest_ct_pngs(classes: list[str], garbage: bool = False) -> Callable[[Path], None]:
    """A Chest CT-Scan-style tree (``train/<class>/``) of small PNGs, or of non-images."""

    def build(incoming: Path) -> None:
        rng = np.random.default_rng(0)
        for name in classes:
            folder = incoming / "train" / name
            folder.mkdir(parents=True)
            for i in range(3):
                if garbage:
                    (folder / f"{i}.png").write_bytes(b"not a png at all " * 4)
                else:
                    pixels = rng.integers(0, 255, (40, 40), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i}.png")

    return build


def empty_zip(incoming: Path) -> None:
    with zipfile.ZipFile(incoming / "data.zip", "w"):
        pass


def source_archive(root: Path) -> None:
    source_folder(empty_zip)(root)
    write_params(root, {"data": {"source": "path", "path": str(root / "incoming/data.zip")}})


def downloaded(
    override: dict | None = None,
    then_convert: bool = False,
    edit: Callable[[dict], None] = lambda params: None,
):
    """params.yaml (the tiny one, overridden, then edited) and data/raw (and data/converted)
    made by the real stages, in-process."""

    def prepare(root: Path) -> None:
        params = merge(merge(project_params(), TINY), override or {})
        edit(params)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        cwd = os.getcwd()
        os.chdir(root)
        try:
            params = parse_params(yaml.safe_load((root / "params.yaml").read_text()))
            download(params)
            if then_convert:
                convert(params.convert)
        finally:
            os.chdir(cwd)

    return prepare


def downloaded_folder(build: Callable[[Path], None]) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        source_folder(build)(root)
        incoming = str(root / "incoming")
        downloaded({"data": {"source": "path", "path": incoming}})(root)

    return prepare


def trained(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """A copy of the session's tiny trained project, without its eval.json, then damaged."""

    def prepare(root: Path) -> None:
        project = dvc_project()
        for part in ("params.yaml", "data/splits", "models", "metrics"):
            source, target = project / part, root / part
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy(source, target)
        (root / "metrics/eval.json").unlink()
        damage(root)

    return prepare


def truncate_model(root: Path) -> None:
    model = root / "models/model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])


def data_is_a_file(root: Path) -> None:
    write_params(root)
    (root / "data").write_text("a file where the data folder should be\n")


CASES = [
    Case(
        "params-yaml-syntax",
        lambda root: write_params(root, text="base: {seed: 42\n"),
        ["stages.download"],
        "params.yaml: not valid YAML",
        ["data/raw"],
        2,
    ),
    Case(
        "params-wrong-type",
        params_with({"train": {"epochs": "ten"}}),
        ["stages.download"],
        "train.epochs",
        ["data/raw"],
        2,
    ),
    Case(
        "params-unknown-key",
        params_with({"train": {"lrr": 0.1}}),
        ["stages.download"],
        "train.lrr: unknown key",
        ["data/raw"],
        2,
    ),
    Case(
        "params-missing-key",
        params_without("evaluate", "bootstrap"),
        ["stages.download"],
        "evaluate.bootstrap",
        ["data/raw"],
        2,
    ),
    Case(
        "params-file-missing",
        lambda root: None,
        ["stages.download"],
        "params.yaml: not found",
        ["data/raw"],
        2,
    ),
    Case(
        "dataset-folder-empty",
        source_folder(lambda incoming: None),
        ["stages.download"],
        "holds no files",
        ["data/raw"],
        2,
    ),
    Case(
        "dataset-archive-empty",
        source_archive,
        ["stages.download"],
        "data.zip",
        ["data/raw"],
        2,
    ),
    Case(
        "dataset-path-missing",
        params_with({"data": {"source": "path", "path": "/nonexistent/chest-ct.zip"}}),
        ["stages.download"],
        "/nonexistent/chest-ct.zip: not found",
        ["data/raw"],
        2,
    ),
    Case(
        "all-files-unreadable",
        downloaded_folder(chest_ct_pngs(["adenocarcinoma", "normal"], garbage=True)),
        ["stages.convert"],
        "skipped",
        ["data/converted", "metrics/convert.json"],
        2,
    ),
    Case(
        "one-class-missing",
        downloaded(
            then_convert=True,
            edit=lambda params: params["data"]["synthetic"]["class_balance"].pop("benign"),
        ),
        ["stages.split"],
        "no images of class(es) ['benign']",
        ["data/splits", "metrics/split.json"],
        2,
    ),
    Case(
        "output-folder-not-writable",
        data_is_a_file,
        ["stages.download"],
        "data",
        ["data/raw"],
        1,
    ),
    Case(
        "splits-missing-for-train",
        lambda root: write_params(root),
        ["stages.train"],
        "splits.csv: not found",
        ["models/model.keras", "metrics/train.json"],
        2,
    ),
    Case(
        "model-truncated-for-evaluate",
        trained(truncate_model),
        ["stages.evaluate"],
        "models/model.keras: not a Keras model file",
        ["metrics/eval.json"],
        2,
    ),
    Case(
        "model-missing-for-evaluate",
        trained(lambda root: (root / "models/model.keras").unlink()),
        ["stages.evaluate"],
        "dvc repro",
        ["metrics/eval.json"],
        2,
    ),
    Case(
        "model-truncated-for-predict",
        trained(truncate_model),
        ["stages.predict", "data/splits/test", "--output", "predictions.csv"],
        "models/model.keras: not a Keras model file",
        ["predictions.csv"],
        2,
    ),
    Case(
        "model-missing-for-predict",
        trained(lambda root: shutil.rmtree(root / "models")),
        ["stages.predict", "data/splits/test", "--output", "predictions.csv"],
        "dvc repro",
        ["predictions.csv"],
        2,
    ),
]

TF_NOISE = ("I0000", "W0000", "E0000", "WARNING: All log messages")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(case: Case, tmp_path: Path):
    case.prepare(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", *case.command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    if case.exit_code is not None:
        assert result.returncode == case.exit_code, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert case.says in errors[0], output
    other = [
        line
        for line in result.stderr.splitlines()
        if line and not line.startswith(("error:", *TF_NOISE)) and "cuda" not in line.lower()
    ]
    assert not any("Error" in line or "Exception" in line for line in other), output
    for path in case.absent:
        assert not (tmp_path / path).exists(), f"{path} left behind:\n{output}"
    leftovers = [p for p in tmp_path.rglob(".*.tmp-*")]
    assert not leftovers, leftovers


def test_readme_counts_the_cases():
    readme = (ROOT / "README.md").read_text()
    assert f"walks a table of {len(CASES)} broken inputs" in readme
