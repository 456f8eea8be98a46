import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungct.errors import UserError
from stages.convert import convert
from stages.download import download
from stages.split import split


def test_split_by_patient_writes_tree_table_and_proof(workdir, tiny):
    download(tiny)
    convert(tiny.convert)
    metrics = split(tiny)
    table = pd.read_csv(workdir / "data/splits/splits.csv", keep_default_na=False)
    assert list(table.columns) == ["image", "class", "split", "group", "source", "fold"]
    assert len(table) == 18
    assert (table.groupby("group")["split"].nunique() == 1).all()
    for image, name, part, source in zip(
        table["image"], table["class"], table["split"], table["source"], strict=True
    ):
        path = workdir / "data/splits" / image
        assert path.parent.name == name and path.parent.parent.name == part
        assert path.read_bytes() == (workdir / "data/converted" / source).read_bytes()
    assert metrics == json.loads((workdir / "metrics/split.json").read_text())
    assert metrics["groups_in_several_splits"] == 0
    assert metrics["groups"] == {"train": 3, "val": 3, "test": 3}
    assert metrics["images_per_class"]["test"] == {"benign": 2, "malignant": 2, "normal": 2}

    before = (workdir / "data/splits/splits.csv").read_bytes()
    split(tiny)
    assert (workdir / "data/splits/splits.csv").read_bytes() == before


# --------------------------------------------------------------------------- images without ids

FOLDERS = {
    "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib": "adenocarcinoma",
    "large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa": "large.cell.carcinoma",
    "squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa": "squamous.cell.carcinoma",
    "normal": "normal",
}


def chest_ctscan(raw: Path) -> dict[str, Path]:
    """A Chest CT-Scan tree of noise images (distinct pHashes), with one image of the
    official train split copied (pixel for pixel, other size) into valid and test."""
    rng = np.random.default_rng(0)
    raw.mkdir(parents=True)
    (raw / "SOURCE.json").write_text('{"layout": "chest-ctscan"}')
    for folder, test_folder in FOLDERS.items():
        for part, name, count in (
            ("train", folder, 6),
            ("valid", folder, 3),
            ("test", test_folder, 3),
        ):
            for i in range(count):
                path = raw / "Data" / part / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(path)
    original = raw / "Data/train/normal/0.png"
    copies = {
        "valid": raw / "Data/valid/normal/copy.png",
        "test": raw / "Data/test/normal/copy.png",
    }
    for copy in copies.values():
        Image.open(original).resize((48, 48), Image.Resampling.NEAREST).save(copy)
    return {"train": original, **copies}


def with_split(tiny, **split_params):
    return tiny.model_copy(update={"split": tiny.split.model_copy(update=split_params)})


@pytest.fixture
def images_converted(workdir, tiny):
    paths = chest_ctscan(workdir / "data/raw")
    convert(tiny.convert)
    return paths


def splits_table(workdir):
    return pd.read_csv(workdir / "data/splits/splits.csv", keep_default_na=False)


def test_grouped_keeps_injected_duplicates_together(workdir, tiny, images_converted):
    metrics = split(tiny)
    table = splits_table(workdir)
    copies = table[table["source"].str.contains("Data/train/normal/0.png|normal/copy.png")]
    assert len(copies) == 3 and copies["split"].nunique() == 1 and copies["group"].nunique() == 1
    assert metrics["strategy"] == "grouped" and metrics["leaky"] is False
    assert metrics["groups_in_several_splits"] == 0
    assert metrics["cross_split_near_duplicate_pairs"] == 0
    assert metrics["images_with_near_duplicates"] == 3
    assert set(table["class"]) == {"adenocarcinoma", "large_cell", "squamous", "normal"}
    assert (workdir / "metrics/split_samples.png").exists()
    grid = Image.open(workdir / "metrics/split_samples.png")
    assert grid.size[1] == 4 * 96  # one row per class


def test_binary_classes(workdir, tiny, images_converted):
    split(with_split(tiny, classes="binary"))
    assert set(splits_table(workdir)["class"]) == {"with_cancer", "without_cancer"}


def test_official_split_fails_on_leaks_by_default(workdir, tiny, images_converted):
    with pytest.raises(
        UserError,
        match=r"3 near-duplicate pair\(s\) and 1 group\(s\) cross splits under strategy 'official'",
    ):
        split(with_split(tiny, strategy="official"))
    assert not (workdir / "data/splits").exists()


def test_official_split_warns_and_labels_the_metrics_leaky(workdir, tiny, images_converted):
    metrics = split(with_split(tiny, strategy="official", leakage="warn"))
    table = splits_table(workdir)
    assert table.groupby("split").size().to_dict() == {"test": 13, "train": 24, "val": 13}
    assert metrics["leaky"] is True and metrics["cross_split_near_duplicate_pairs"] == 3
    assert metrics["groups_in_several_splits"] == 1


def test_official_split_drops_the_later_copies(workdir, tiny, images_converted):
    metrics = split(with_split(tiny, strategy="official", leakage="drop"))
    dropped = pd.read_csv(workdir / "data/splits/dropped.csv")
    assert sorted(dropped["source"]) == [
        "images/Data/test/normal/copy.png.png",
        "images/Data/valid/normal/copy.png.png",
    ]
    assert metrics["dropped"] == 2 and metrics["leaky"] is False
    assert metrics["found_cross_split_pairs"] == 3
    assert metrics["cross_split_near_duplicate_pairs"] == 0
    assert "copy.png" not in " ".join(splits_table(workdir)["source"])


def test_random_split_is_labelled_leaky(workdir, tiny, images_converted):
    metrics = split(with_split(tiny, strategy="random", leakage="warn"))
    assert metrics["strategy"] == "random" and metrics["leaky"] is True


def test_official_needs_official_folders(workdir, tiny):
    download(tiny)
    convert(tiny.convert)
    with pytest.raises(UserError, match="'official' needs the dataset's own"):
        split(with_split(tiny, strategy="official"))


def test_unmapped_label_is_listed(workdir, tiny, images_converted):
    with pytest.raises(UserError, match=r"no class for raw label\(s\) \['large.cell"):
        split(
            with_split(
                tiny, classes={"adenocarcinoma": "a", "squamous.cell.carcinoma": "s", "normal": "n"}
            )
        )
