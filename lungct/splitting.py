"""Leakage-free splitting: whole groups (patients) go to one split, stratified by class."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungct.errors import UserError

SPLITS = ("train", "val", "test")


def near_duplicate_components(phashes: list[str], distance: int) -> np.ndarray:
    """Connected components of images whose 64-bit perceptual hashes differ in at most
    ``distance`` bits (chains included). Returns, per image, the index of the first
    image of its component, so equal inputs give equal labels."""
    values = np.array([int(h, 16) for h in phashes], dtype=np.uint64)
    parent = np.arange(len(values))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for i in range(len(values) - 1):
        close = np.nonzero(np.bitwise_count(values[i] ^ values[i + 1 :]) <= distance)[0] + i + 1
        for j in close:
            a, b = root(i), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(len(values))], dtype=np.int64)


def group_classes(images: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """One class per group, for stratification, from a table with ``group`` and ``class``.

    A group whose images carry several classes (near duplicates filed under two
    classes) stays whole and counts as its most frequent class; such groups are
    returned too, to be reported. Returns (class per group, mixed groups).
    """
    counts = images.groupby(["group", "class"]).size().reset_index(name="n")
    counts = counts.sort_values(["group", "n", "class"], ascending=[True, False, True])
    majority = counts.drop_duplicates("group").set_index("group")["class"].sort_index()
    per_group = counts.groupby("group")["class"].nunique()
    return majority, sorted(per_group.index[per_group > 1].astype(str))


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


def _as_uint64(phashes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in phashes], dtype=np.uint64)


def close_pairs(
    phashes_a: list[str], phashes_b: list[str], distance: int, chunk: int = 1024
) -> list[tuple[int, int]]:
    """Index pairs (i in a, j in b) whose perceptual hashes differ in at most ``distance``
    bits; compared a chunk of rows at a time so memory stays small."""
    a, b = _as_uint64(phashes_a), _as_uint64(phashes_b)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(a), chunk):
        close = np.bitwise_count(a[start : start + chunk, None] ^ b[None, :]) <= distance
        rows, cols = np.nonzero(close)
        pairs.extend(zip((rows + start).tolist(), cols.tolist(), strict=True))
    return pairs


def leakage_pairs(table: pd.DataFrame, distance: int) -> pd.DataFrame:
    """Near-duplicate image pairs that sit in two different splits.

    Images with a patient id are compared by exact content (``content`` column): a
    perceptual hash cannot tell one patient's CT slice from another's (on the phantom,
    34 pairs of different patients' slices share a pHash). Images without ids are
    compared by pHash within ``distance`` bits, as they were grouped.
    Returns columns ``a``, ``b`` (row labels of ``table``, ``a`` in the earlier split).
    """
    order = {name: i for i, name in enumerate(SPLITS)}
    found: set[tuple[object, object]] = set()
    for _, same in table.groupby("content"):
        for a in same.index:
            for b in same.index:
                if order[table.at[a, "split"]] < order[table.at[b, "split"]]:
                    found.add((a, b))
    anonymous = table[~table["has_id"]]
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        left = anonymous[anonymous["split"] == first]
        right = anonymous[anonymous["split"] == second]
        if left.empty or right.empty:
            continue
        for i, j in close_pairs(left["phash"].tolist(), right["phash"].tolist(), distance):
            found.add((left.index[i], right.index[j]))
    return pd.DataFrame(sorted(found), columns=["a", "b"])
