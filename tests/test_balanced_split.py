"""Grouped splits balanced by images: whole groups of very unequal sizes (images without
patient ids grouped as likely patients) still give each split about its fraction of each
class's images, and the split.json shares that show it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungct.artifacts import SPLITS
from lungct.data.split import assign, split_groups, split_metrics
from lungct.errors import UserError

VAL, TEST = 0.2, 0.2
FRACTIONS = {"train": 1 - VAL - TEST, "val": VAL, "test": TEST}


def unequal_cohort(seed: int = 0) -> tuple[pd.Series, pd.Series]:
    """(class, images) per group: class ``a`` has one group of 177 images among 60 groups
    of 1-5, class ``b`` 40 groups of 1-5 and one of 30."""
    rng = np.random.default_rng(seed)
    classes, sizes = {}, {}
    for name, small, big in (("a", 60, 177), ("b", 40, 30)):
        for i in range(small):
            classes[f"{name}-{i:03d}"] = name
            sizes[f"{name}-{i:03d}"] = int(rng.integers(1, 6))
        classes[f"{name}-big"] = name
        sizes[f"{name}-big"] = big
    return pd.Series(classes), pd.Series(sizes)


def image_shares(classes: pd.Series, sizes: pd.Series, split: pd.Series) -> pd.DataFrame:
    """Per class (rows) and split (columns): the split's share of the class's images."""
    table = pd.DataFrame({"class": classes, "n": sizes, "split": split})
    images = table.groupby(["class", "split"])["n"].sum().unstack(fill_value=0)
    return images.div(images.sum(axis=1), axis=0)


def test_the_fixture_breaks_a_split_by_group_count():
    classes, sizes = unequal_cohort()
    a = sizes[classes == "a"]
    # A fifth of a's groups, the 177-image one among them: the group-count rule allows it.
    held_out = a.sort_values(ascending=False).iloc[: round(len(a) * TEST)].sum()
    assert held_out / a.sum() > 0.5


@pytest.mark.parametrize("seed", [0, 1, 2, 42])
def test_each_split_holds_its_fraction_of_each_class_s_images(seed):
    classes, sizes = unequal_cohort()
    split = split_groups(classes, sizes, VAL, TEST, seed)
    shares = image_shares(classes, sizes, split)
    for name in ("a", "b"):
        for part, fraction in FRACTIONS.items():
            assert shares.at[name, part] == pytest.approx(fraction, abs=0.01), (name, part)
    assert split["a-big"] == "train"
    per_class = split.groupby(classes).nunique()
    assert (per_class == len(SPLITS)).all()


def test_held_out_splits_take_large_and_small_groups_alike():
    """Half the groups of each class hold 1 image, half 20: the test split's groups are
    as often large as small (over seeds), while its images stay at the fraction. Taking
    every group that still fits would pass over the large ones (a share near 0.38)."""
    names = [f"{c}-{i:02d}" for c in "ab" for i in range(60)]
    classes = pd.Series({g: g[0] for g in names})
    sizes = pd.Series({g: 1 if int(g[2:]) < 30 else 20 for g in names})
    large = []
    for seed in range(20):
        split = split_groups(classes, sizes, VAL, TEST, seed)
        test = sizes[split == "test"]
        assert test.sum() == round(TEST * sizes.sum())
        large.append((test == 20).mean())
    assert 0.45 <= np.mean(large) <= 0.55


def test_metrics_show_the_image_fractions_and_class_mix():
    classes, sizes = unequal_cohort()
    split = split_groups(classes, sizes, VAL, TEST, seed=0)
    images = pd.DataFrame(
        {
            "group": np.repeat(sizes.index, sizes),
            "class": np.repeat(classes[sizes.index], sizes),
            "split": np.repeat(split[sizes.index], sizes),
            "has_id": False,
        }
    )
    metrics = split_metrics(images)
    assert set(metrics["image_fractions"]) == set(SPLITS)
    for part, fraction in FRACTIONS.items():
        assert metrics["image_fractions"][part] == pytest.approx(fraction, abs=0.01)
    overall = images["class"].value_counts(normalize=True)
    for part in SPLITS:
        mix = metrics["class_mix"][part]
        assert sum(mix.values()) == pytest.approx(1, abs=1e-3)
        for name in ("a", "b"):
            assert mix[name] == pytest.approx(overall[name], abs=0.01), (part, name)
    counts = metrics["images_per_class"]
    assert metrics["class_mix"]["test"]["b"] == round(
        counts["test"]["b"] / metrics["images"]["test"], 4
    )


def test_metrics_of_a_small_table():
    images = pd.DataFrame(
        {
            "group": ["p1", "p1", "p1", "p2", "p3", "p4"],
            "class": ["a", "a", "a", "b", "b", "a"],
            "split": ["train", "train", "train", "train", "val", "test"],
            "has_id": True,
        }
    )
    metrics = split_metrics(images)
    assert metrics["image_fractions"] == {"train": 0.6667, "val": 0.1667, "test": 0.1667}
    assert metrics["class_mix"] == {
        "train": {"a": 0.75, "b": 0.25},
        "val": {"a": 0.0, "b": 1.0},
        "test": {"a": 1.0, "b": 0.0},
    }


def test_same_seed_same_split_other_seed_other_split():
    classes, sizes = unequal_cohort()
    first = split_groups(classes, sizes, VAL, TEST, seed=3)
    assert first.equals(split_groups(classes, sizes, VAL, TEST, seed=3))
    assert not first.equals(split_groups(classes, sizes, VAL, TEST, seed=4))


def test_equal_groups_give_the_fractions_group_counts():
    # The phantom's shape: 40 patients of 6 images per class.
    classes = pd.Series({f"{c}-{i:02d}": c for c in ("n", "b", "m") for i in range(40)})
    split = split_groups(classes, pd.Series(6, index=classes.index), VAL, TEST, seed=42)
    for name in ("n", "b", "m"):
        assert split[classes == name].value_counts().to_dict() == {
            "train": 24,
            "val": 8,
            "test": 8,
        }


@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.2, 0.3])
def test_equal_groups_round_the_group_counts(fraction):
    for n in range(3, 50):
        exact = n * fraction
        if abs(exact - int(exact) - 0.5) < 1e-6:
            continue  # a half: rounded down, where round() goes to even
        classes = pd.Series({f"g{i:02d}": "a" for i in range(n)})
        split = split_groups(classes, pd.Series(3, index=classes.index), fraction, fraction, 0)
        counts = split.value_counts()
        n_test = min(max(1, round(exact)), n - 2)
        n_val = min(max(1, round(exact)), n - n_test - 1)
        assert (counts["test"], counts["val"], counts["train"]) == (
            n_test,
            n_val,
            n - n_test - n_val,
        ), n


def test_three_groups_of_any_size_give_one_per_split():
    classes = pd.Series({"big": "a", "mid": "a", "one": "a"})
    sizes = pd.Series({"big": 177, "mid": 40, "one": 1})
    for val, test in ((0.2, 0.2), (0.01, 0.01), (0.45, 0.45)):
        split = split_groups(classes, sizes, val, test, seed=0)
        assert sorted(split) == sorted(SPLITS), (val, test)


def test_a_class_of_two_groups_is_still_an_error():
    classes = pd.Series({"a1": "a", "a2": "a", "a3": "a", "b1": "b", "b2": "b"})
    sizes = pd.Series({"a1": 1, "a2": 1, "a3": 1, "b1": 177, "b2": 5})
    with pytest.raises(UserError, match="class 'b' has 2 patient"):
        split_groups(classes, sizes, VAL, TEST, seed=0)


def test_assign_weighs_groups_by_their_images(tiny):
    classes, sizes = unequal_cohort()
    images = pd.DataFrame(
        {"group": np.repeat(sizes.index, sizes), "class": np.repeat(classes[sizes.index], sizes)}
    )
    cfg = tiny.split
    assert cfg.strategy == "grouped"
    split = assign(images, tiny, "folders")
    assert (images.assign(split=split).groupby("group")["split"].nunique() == 1).all()
    shares = split.groupby(images["class"]).value_counts(normalize=True)
    fractions = {
        "train": 1 - cfg.val_fraction - cfg.test_fraction,
        "val": cfg.val_fraction,
        "test": cfg.test_fraction,
    }
    for name in ("a", "b"):
        for part, fraction in fractions.items():
            assert shares[(name, part)] == pytest.approx(fraction, abs=0.01), (name, part)
