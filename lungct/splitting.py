"""Leakage-free splitting: whole groups (patients) go to one split, stratified by class."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungct.errors import UserError

SPLITS = ("train", "val", "test")


def group_classes(images: pd.DataFrame) -> pd.Series:
    """One class per group from an image table with ``group`` and ``class`` columns.

    A group whose images carry two classes cannot be split without leakage or label
    noise, so it is an error naming the group.
    """
    per_group = images.groupby("group")["class"].unique()
    mixed = per_group[per_group.map(len) > 1]
    if not mixed.empty:
        group = mixed.index[0]
        raise UserError(f"group {group!r} has images of several classes: {sorted(mixed.iloc[0])}")
    return per_group.map(lambda classes: classes[0]).sort_index()


def split_groups(
    classes: pd.Series, val_fraction: float, test_fraction: float, seed: int
) -> pd.Series:
    """Assign every group to train, val or test, per class, with a seeded shuffle.

    Args:
        classes: class of each group, indexed by group id.
        val_fraction: share of each class's groups for validation.
        test_fraction: share of each class's groups for test.
        seed: shuffle seed; same inputs and seed give the same assignment.

    Returns:
        Split name per group, indexed like ``classes`` (sorted).

    Each class keeps at least one group in every split, so a class needs three groups.
    """
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for name in sorted(classes.unique()):
        groups = np.array(sorted(classes.index[classes == name]))
        if len(groups) < len(SPLITS):
            raise UserError(
                f"class {name!r} has {len(groups)} patient(s); at least {len(SPLITS)} are "
                "needed to give train, val and test one each"
            )
        order = groups[rng.permutation(len(groups))]
        n_test = max(1, round(len(groups) * test_fraction))
        n_val = max(1, round(len(groups) * val_fraction))
        n_test = min(n_test, len(groups) - 2)
        n_val = min(n_val, len(groups) - n_test - 1)
        for i, group in enumerate(order):
            assignment[str(group)] = (
                "test" if i < n_test else "val" if i < n_test + n_val else "train"
            )
    return pd.Series(assignment, name="split").sort_index()


def groups_in_several_splits(table: pd.DataFrame) -> list[str]:
    """Groups that appear in more than one split: must be empty for an honest test set."""
    counts = table.groupby("group")["split"].nunique()
    return sorted(counts.index[counts > 1].astype(str))
