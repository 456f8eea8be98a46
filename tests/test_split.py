import json

import pandas as pd

from stages.convert import convert
from stages.download import download
from stages.split import split


def test_split_by_patient_writes_tree_table_and_proof(workdir, tiny):
    download(tiny)
    convert(tiny.convert)
    metrics = split(tiny)
    table = pd.read_csv(workdir / "data/splits/splits.csv", keep_default_na=False)
    assert list(table.columns) == ["image", "class", "split", "group", "source"]
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
