"""The ``folders`` layout: an image dataset in class folders that is none of the named
ones (another three-class lung CT set, say): recognised, labelled by folder, split into
classes named after its folders, its own train/valid/test folders kept for
``split.strategy: official``."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungct.data.layouts import class_mapping, detect_layout, folder_class, label_from_path
from lungct.errors import UserError
from lungct.params import parse_params
from stages.convert import convert
from stages.download import download
from stages.split import split

CLASSES = ("Benign", "Malignant tumour", "Normal")


def write_images(folder: Path, count: int, rng: np.random.Generator, fmt: str = "PNG") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 255, (24, 24), dtype=np.uint8)  # noise: distinct pHashes
        suffix = {"PNG": "png", "JPEG": "jpg"}[fmt]
        Image.fromarray(pixels).save(folder / f"img {i}.{suffix}", format=fmt)


def class_tree(root: Path, official: bool = False) -> None:
    """``Lung set/data/<class>/`` (or ``.../<train|valid|test>/<class>/``), a description
    file at the top."""
    rng = np.random.default_rng(0)
    top = root / "Lung set" / "data"
    top.mkdir(parents=True)
    (root / "Lung set" / "README.txt").write_text("three classes\n")
    for k, name in enumerate(CLASSES):
        fmt = "JPEG" if k == 1 else "PNG"
        if official:
            for part, count in (("train", 8), ("valid", 3), ("test", 3)):
                write_images(top / part / name, count, rng, fmt)
        else:
            write_images(top / name, 14, rng, fmt)


def with_path(tiny_raw: dict, path: Path, **split: object):
    raw = json.loads(json.dumps(tiny_raw))
    raw["data"].update(source="path", path=str(path), layout="auto")
    raw["split"].update(split)
    return parse_params(raw)


def test_class_folders_of_images_are_the_folders_layout(tmp_path):
    class_tree(tmp_path / "set")
    assert detect_layout(tmp_path / "set") == "folders"
    # train/valid/test folders with a Normal class are not the Chest CT-Scan copy by that alone
    class_tree(tmp_path / "split", official=True)
    assert detect_layout(tmp_path / "split") == "folders"
    one = tmp_path / "one"
    write_images(one / "only" / "Normal", 2, np.random.default_rng(1))
    write_images(one / "only" / "test", 2, np.random.default_rng(2))  # a split, not a class
    with pytest.raises(UserError, match=r"images in 1 class folder\(s\), 2 or more needed"):
        detect_layout(one)


def test_labels_come_from_the_folder_and_official_split_from_the_one_above():
    def label(path: str) -> tuple[str, str] | None:
        return label_from_path(PurePosixPath(path), "folders")

    assert label("a/Benign/x.png") == ("Benign", "")
    assert label("a/Validation/Normal/x.png") == ("Normal", "validation")
    assert label("a/Train/Normal/x.png") == ("Normal", "train")
    assert label("README.txt") is None
    assert label("a/test/x.png") is None  # unlabelled images in a split folder: no class "test"
    assert folder_class("Malignant cases") == "malignant_cases"
    assert folder_class("Bengin-Cases ") == "bengin_cases"
    mapping = class_mapping("folders", "default", ["Benign", "benign", "Malignant cases"])
    assert mapping == {"benign": "benign", "malignant cases": "malignant_cases"}
    with pytest.raises(UserError, match="layout 'folders' has no 'binary' preset"):
        class_mapping("folders", "binary", ["Benign"])


def test_a_class_folder_dataset_runs_download_convert_and_split(workdir, tiny_raw):
    class_tree(workdir / "incoming")
    params = with_path(tiny_raw, workdir / "incoming")
    source = download(params)
    assert source["layout"] == "folders" and source["layout_detected"] is True
    convert(params.convert)
    split(params)
    table = pd.read_csv(workdir / "data/splits/splits.csv", keep_default_na=False)
    assert sorted(set(table["class"])) == ["benign", "malignant_tumour", "normal"]
    assert set(table["split"]) == {"train", "val", "test"}
    assert len(table) == 3 * 14  # README.txt is no image, so no row
    # A user mapping still works, and can leave a folder out.
    split(
        with_path(
            tiny_raw,
            workdir / "incoming",
            classes={"Benign": "b", "Malignant tumour": "m", "Normal": ""},
        )
    )
    table = pd.read_csv(workdir / "data/splits/splits.csv", keep_default_na=False)
    assert sorted(set(table["class"])) == ["b", "m"]


def test_its_own_train_valid_test_folders_give_the_official_split(workdir, tiny_raw):
    class_tree(workdir / "incoming", official=True)
    params = with_path(tiny_raw, workdir / "incoming", strategy="official")
    download(params)
    convert(params.convert)
    split(params)
    table = pd.read_csv(workdir / "data/splits/splits.csv", keep_default_na=False)
    counts = table.groupby(["split", "class"]).size()
    for name in ("benign", "malignant_tumour", "normal"):
        assert (counts["train", name], counts["val", name], counts["test", name]) == (8, 3, 3)
