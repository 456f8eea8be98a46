import pandas as pd
import pytest

from lungct.data.split import (
    group_classes,
    groups_in_several_splits,
    near_duplicate_components,
    split_groups,
)
from lungct.errors import UserError


def cohort(per_class: dict[str, int]) -> pd.Series:
    rows = {}
    for name, count in per_class.items():
        for i in range(count):
            rows[f"{name}-{i:02d}"] = name
    return pd.Series(rows)


def one_image_each(classes: pd.Series) -> pd.Series:
    return pd.Series(1, index=classes.index)


def test_every_group_in_exactly_one_split_and_stratified():
    classes = cohort({"normal": 20, "benign": 10, "malignant": 15})
    split = split_groups(classes, one_image_each(classes), 0.2, 0.2, seed=1)
    assert list(split.index) == sorted(classes.index)
    assert set(split) == {"train", "val", "test"}
    for name, count in {"normal": 20, "benign": 10, "malignant": 15}.items():
        counts = split[classes[split.index] == name].value_counts()
        assert counts["test"] == round(count * 0.2)
        assert counts["val"] == round(count * 0.2)
        assert counts["train"] == count - 2 * round(count * 0.2)


def test_same_seed_same_split_other_seed_other_split():
    classes = cohort({"normal": 12, "malignant": 12})
    first = split_groups(classes, one_image_each(classes), 0.25, 0.25, seed=7)
    assert first.equals(split_groups(classes, one_image_each(classes), 0.25, 0.25, seed=7))
    assert not first.equals(split_groups(classes, one_image_each(classes), 0.25, 0.25, seed=8))


def test_tiny_classes_keep_one_group_per_split():
    classes = cohort({"a": 3, "b": 3})
    split = split_groups(classes, one_image_each(classes), 0.05, 0.05, seed=0)
    assert split.value_counts().to_dict() == {"train": 2, "val": 2, "test": 2}


def test_class_with_too_few_groups_is_an_error():
    with pytest.raises(UserError, match="class 'b' has 2 patient"):
        classes = cohort({"a": 5, "b": 2})
        split_groups(classes, one_image_each(classes), 0.2, 0.2, seed=0)


def test_group_with_two_classes_counts_as_its_majority_and_is_reported():
    images = pd.DataFrame(
        {"group": ["p1", "p1", "p1", "p2", "p3"], "class": ["b", "a", "b", "a", "c"]}
    )
    classes, mixed = group_classes(images)
    assert classes.to_dict() == {"p1": "b", "p2": "a", "p3": "c"}
    assert mixed == ["p1"]


def test_near_duplicate_components_chain_and_threshold():
    hashes = ["0000000000000000", "0000000000000003", "000000000000000f", "ffffffffffffffff"]
    assert near_duplicate_components(hashes, 0).tolist() == [0, 1, 2, 3]
    # 0 -- 2 bits -- 1 -- 2 bits -- 2: one chain at distance 2, even though 0 and 2 differ by 4.
    assert near_duplicate_components(hashes, 2).tolist() == [0, 0, 0, 3]
    assert near_duplicate_components(["abcd" * 4, "abcd" * 4], 0).tolist() == [0, 0]


def test_leak_detection():
    table = pd.DataFrame(
        {"group": ["p1", "p1", "p2", "p2"], "split": ["train", "test", "val", "val"]}
    )
    assert groups_in_several_splits(table) == ["p1"]
