"""Leakage-free splitting (docs/splitting.md): whole groups (patients, or for images
without ids likely patients or near duplicates, ``split.grouping``) go to one split,
stratified by class, as ``split.strategy`` says; then the leakage gate counts groups and
near-duplicate pairs across splits and applies ``split.leakage`` (:func:`apply_leakage_policy`).
A class with fewer than :data:`MIN_GROUPS_PER_CLASS` patients in a split is warned of
(:func:`warn_few_groups`).
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungct.artifacts import EVIDENCE_COLUMNS, MANIFEST, SPLITS
from lungct.atomic import sha256_file
from lungct.data.grouping import (
    Evidence,
    Rule,
    block_pairs,
    connected,
    duplicate_pairs,
    first_index,
    likely_patients,
    manifest_evidence,
)
from lungct.data.layouts import DROPPED, OFFICIAL_SPLITS, class_mapping, map_labels
from lungct.data.tables import read_manifest
from lungct.errors import UserError
from lungct.io.images import hash_values
from lungct.params import Params, SplitParams

log = logging.getLogger("split")

# A class with fewer patients (groups) than this in one split gets a warning: its figures
# there, or what the model learns of it, rest on too few patients.
MIN_GROUPS_PER_CLASS = 5
CLASSES_DOC = "docs/data.md#layouts-and-classes"  # split.classes: presets and mappings
FILL_ORDERS = 1000  # random orders a held-out split is drawn from (fill_to)


def near_duplicate_components(phashes: list[str], distance: int) -> np.ndarray:
    """Per image, the index of the first image of its connected component of images whose
    pHashes differ in at most ``distance`` bits (chains included)."""
    pairs = close_pairs(phashes, phashes, distance)
    return first_index(connected(len(phashes), pairs))


def group_classes(images: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """(class per group, mixed groups) of a table with ``group`` and ``class``, for
    stratification: a group whose images carry several classes (near duplicates filed
    under two) stays whole, counts as its most frequent class, and is reported."""
    counts = images.groupby(["group", "class"]).size().reset_index(name="n")
    counts = counts.sort_values(["group", "n", "class"], ascending=[True, False, True])
    majority = counts.drop_duplicates("group").set_index("group")["class"].sort_index()
    per_group = counts.groupby("group")["class"].nunique()
    return majority, sorted(per_group.index[per_group > 1].astype(str))


def split_groups(
    classes: pd.Series,
    sizes: pd.Series,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> pd.Series:
    """The split (train, val or test) of every group (``classes``: the class of each,
    ``sizes``: its images, both indexed by group id), whole groups stratified by class so
    that each split holds about its fraction of each class's images: test, then val, is
    drawn from the class's groups by :func:`fill_to` with a generator seeded by ``seed``,
    and train keeps the rest. Equal sizes give the fractions' group counts (halves rounded
    down). Each class keeps at least one group in every split, so a class needs three
    groups. Indexed like ``classes`` (sorted)."""
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for name in sorted(classes.unique()):
        groups = np.array(sorted(classes.index[classes == name]))
        if len(groups) < len(SPLITS):
            raise UserError(
                f"class {name!r} has {len(groups)} patient(s); at least {len(SPLITS)} are "
                "needed to give train, val and test one each: bring more patients, or map "
                f"its raw labels together with another class's (split.classes, {CLASSES_DOC})"
            )
        free = [(str(g), int(n)) for g, n in zip(groups, sizes[groups].to_numpy(), strict=True)]
        total = sum(n for _, n in free)
        for split, fraction, keep in (("test", test_fraction, 2), ("val", val_fraction, 1)):
            taken = fill_to(free, fraction * total, len(free) - keep, rng)
            assignment.update(dict.fromkeys(taken, split))
            free = [(g, n) for g, n in free if g not in taken]
        assignment.update(dict.fromkeys((g for g, _ in free), "train"))
    return pd.Series(assignment, name="split").sort_index()


def fill_to(
    groups: list[tuple[str, int]], target: float, most: int, rng: np.random.Generator
) -> set[str]:
    """At least one and at most ``most`` of ``groups`` ((id, images)) whose images come
    closest to ``target``: the prefix closest to it of the first of up to
    :data:`FILL_ORDERS` orders drawn from ``rng`` that does best (a sum within half an
    image ends the draws). A prefix of a random order takes large and small groups alike; taking every
    group that still fits would pass over the large ones near the target, and fill the
    held-out splits with small groups, which without patient ids are often the images
    no rule could tie to others."""
    ids = [group for group, _ in groups]
    sizes = np.array([n for _, n in groups], dtype=np.float64)
    most = max(1, min(most, len(ids)))
    slack = 1e-9 * max(target, 1.0)  # a fraction of a total is not exact in floating point
    best, best_error = None, np.inf
    for _ in range(FILL_ORDERS):
        order = rng.permutation(len(ids))[:most]
        sums = np.cumsum(sizes[order])
        k = int(np.argmin(np.abs(sums - target)))  # the first of two as close: halves down
        error = abs(sums[k] - target)
        if best is None or error < best_error - slack:
            best, best_error = order[: k + 1], error
            if best_error <= 0.5 + slack:  # as close as whole images get
                break
    return {ids[i] for i in best}


def groups_in_several_splits(table: pd.DataFrame) -> list[str]:
    """Groups that appear in more than one split: must be empty for an honest test set."""
    counts = table.groupby("group")["split"].nunique()
    return sorted(counts.index[counts > 1].astype(str))


def close_pairs(phashes_a: list[str], phashes_b: list[str], distance: int) -> list[tuple[int, int]]:
    """Index pairs (i in a, j in b) whose perceptual hashes differ in at most ``distance`` bits."""
    a, b = hash_values(phashes_a), hash_values(phashes_b)
    return block_pairs(len(a), len(b), lambda rows: np.bitwise_count(a[rows, None] ^ b) <= distance)


def near_duplicate_pairs(
    left: pd.DataFrame, right: pd.DataFrame, cfg: SplitParams
) -> list[tuple[int, int]]:
    """Position pairs (i in left, j in right) of near duplicates among images without ids,
    as ``split.grouping`` defines them: pHash within ``near_duplicate_distance`` bits
    (``phash``), or :func:`lungct.data.grouping.duplicate_pairs` (``patient_likely``)."""
    if cfg.grouping == "phash":
        return close_pairs(
            left["phash"].tolist(), right["phash"].tolist(), cfg.near_duplicate_distance
        )
    return duplicate_pairs(_evidence(left), _evidence(right), Rule.of(cfg))


def _evidence(table: pd.DataFrame) -> Evidence:
    return Evidence(
        hash_values(table["phash"].tolist()),
        hash_values(table["view_phash"].tolist()),
        np.stack(table["thumb"].tolist()),
        hash_values(table["body_phash"].tolist()),
    )


def leakage_pairs(table: pd.DataFrame, cfg: SplitParams) -> pd.DataFrame:
    """Near-duplicate image pairs in two different splits: columns ``a``, ``b`` (row labels
    of ``table``, ``a`` in the earlier split). Images with a patient id are compared by
    exact ``content``: a pHash cannot tell one patient's CT slice from another's (34 pairs
    on the phantom); images without ids as they were grouped (:func:`near_duplicate_pairs`).
    """
    order = {name: i for i, name in enumerate(SPLITS)}
    found: set[tuple[object, object]] = set()
    for _, same in table.groupby("content"):
        for a, b in itertools.permutations(same.index, 2):
            if order[table.at[a, "split"]] < order[table.at[b, "split"]]:
                found.add((a, b))
    anonymous = table[~table["has_id"]]
    for first, second in itertools.combinations(SPLITS, 2):
        left = anonymous[anonymous["split"] == first]
        right = anonymous[anonymous["split"] == second]
        if left.empty or right.empty:
            continue
        for i, j in near_duplicate_pairs(left, right, cfg):
            found.add((left.index[i], right.index[j]))
    return pd.DataFrame(sorted(found), columns=["a", "b"])


def join_identical(components: np.ndarray, content: list[str], rows: np.ndarray) -> np.ndarray:
    """``components`` (a group label per image) with the groups of the images ``rows`` whose
    model views are identical (``content``: their PNGs' hashes) joined, named by their first
    image's label: one picture is one group, as the leakage gate checks (with ``framing:
    body`` one slice exported with two margins has two whole images, one framed view)."""
    first: dict[str, int] = {}
    pairs = []
    for i in rows.tolist():
        j = first.setdefault(content[i], i)
        if components[j] != components[i]:
            pairs.append((i, j))
    if not pairs:
        return components
    # Each image joined to the first of its group, and to its identical first image.
    pairs += list(enumerate(first_index(components).tolist()))
    return components[first_index(connected(len(components), pairs))]


def read_converted(converted: Path, params: SplitParams) -> tuple[pd.DataFrame, str]:
    """Converted images with their class (mapped from the raw label), group and hashes."""
    manifest = read_manifest(converted)
    rows = manifest[manifest["status"] == "converted"].sort_values("output")
    if rows.empty:
        raise UserError(f"{converted}: no converted images to split")
    layout = rows["layout"].iloc[0]
    mapping = class_mapping(layout, params.classes, sorted(set(rows["label"])))
    classes = map_labels(rows["label"].tolist(), mapping)
    kept = [c != DROPPED for c in classes]
    left_out: list[str] = []
    if not all(kept):  # raw labels the mapping leaves out (LIDC-IDRI's indeterminate, say)
        left_out = sorted(set(rows.loc[[not k for k in kept], "label"]))
        log.info("split: %d image(s) left out by split.classes: %s", kept.count(False), left_out)
        rows = rows[kept]
        classes = [c for c in classes if c != DROPPED]
    missing = sorted(set(mapping.values()) - set(classes) - {DROPPED})
    if missing and rows.empty:  # every image left out: no groups to count
        none = pd.DataFrame({"class": [], "group": []})
        raise UserError(missing_classes(converted, missing, none, left_out, layout, params))
    # Patients where the data has ids; likely patients or near-duplicate groups where it has none.
    anonymous = np.nonzero((rows["patient_id"] == "").to_numpy())[0]
    thumb = [None] * len(rows)  # patient_likely: the normalised thumbnails the gate compares
    if params.grouping == "patient_likely":
        evidence = manifest_evidence(
            *(rows[column].to_numpy()[anonymous].tolist() for column in EVIDENCE_COLUMNS),
            converted / MANIFEST,
        )
        components = np.arange(len(rows))
        components[anonymous] = anonymous[likely_patients(evidence, Rule.of(params))]
        for k, i in enumerate(anonymous):
            thumb[i] = evidence.thumb[k]
        name = "likely-patient"
    else:
        components = near_duplicate_components(
            rows["phash"].tolist(), params.near_duplicate_distance
        )
        name = "near-duplicates"
    # Identical pixels give identical PNG bytes (same encoder, no timestamps).
    content = [sha256_file(converted / out) for out in rows["output"]]
    components = join_identical(components, content, anonymous)
    groups = [
        patient if patient else f"{name}-{component:05d}"
        for patient, component in zip(rows["patient_id"], components, strict=True)
    ]
    table = pd.DataFrame(
        {
            "source": rows["output"].to_numpy(),
            "class": classes,
            "group": groups,
            "has_id": (rows["patient_id"] != "").to_numpy(),
            "phash": rows["phash"].to_numpy(),
            "view_phash": rows["view_phash"].to_numpy(),  # the manifest's evidence
            "thumb": thumb,
            "body_phash": rows["body_phash"].to_numpy(),
            "official": rows["official_split"].to_numpy(),
            "content": content,
        }
    )
    if missing:  # said once the groups are known: the message counts patients per class
        labels = rows["label"].tolist()
        raise UserError(missing_classes(converted, missing, table, labels, layout, params))
    return table, layout


def missing_classes(
    where: Path,
    missing: list[str],
    table: pd.DataFrame,
    labels: Sequence[str],
    layout: str,
    params: SplitParams,
) -> str:
    """The one line for classes of ``split.classes`` without images: the classes the data
    has, with their patients (groups), and what to do (``labels``: the raw label of each
    row of ``table``; of the images left out when it has none)."""
    preset = params.classes if isinstance(params.classes, str) else "custom"
    patients = table.groupby("class")["group"].nunique()
    has = ", ".join(f"{name} ({n} patient{'' if n == 1 else 's'})" for name, n in patients.items())
    hints = [
        f"bring patients with {' or '.join(missing)} images (each class needs images of at "
        f"least {len(SPLITS)} patients: one each for train, val and test)"
    ]
    fits = not table.empty and _preset_fits(layout, "binary", labels, table["group"])
    if preset != "binary" and fits:
        hints.append("set split.classes: binary")
    hints.append(
        f"map the raw labels {sorted(set(labels))} to the classes you want "
        f"(split.classes: {{raw label: class}}, {CLASSES_DOC})"
    )
    return (
        f"{where}: no images of class(es) {missing} (split.classes: {preset}); the data has "
        f"{has or 'no class'}: " + ", or ".join(hints)
    )


def _preset_fits(layout: str, preset: str, labels: Sequence[str], groups: pd.Series) -> bool:
    """Whether the layout has the preset and it would give each of its classes images of
    enough patients for a split (``labels``: raw labels, ``groups``: their groups)."""
    try:
        mapping = class_mapping(layout, preset, sorted(set(labels)))
        classes = map_labels(list(labels), mapping)
    except UserError:
        return False
    per_class = pd.DataFrame({"class": classes, "group": groups.to_numpy()})
    patients = per_class[per_class["class"] != DROPPED].groupby("class")["group"].nunique()
    wanted = set(mapping.values()) - {DROPPED}
    return wanted <= set(patients.index) and bool((patients >= len(SPLITS)).all())


def assign(images: pd.DataFrame, params: Params, layout: str) -> pd.Series:
    """The split of every image under ``split.strategy``."""
    cfg = params.split
    if cfg.strategy == "official":
        unknown = sorted(set(images["official"]) - set(OFFICIAL_SPLITS))
        if unknown:
            raise UserError(
                f"split.strategy: 'official' needs the dataset's own train/valid/test folders; "
                f"layout '{layout}' has images outside them ({unknown[:3]})"
            )
        return images["official"].map(OFFICIAL_SPLITS)
    if cfg.strategy == "random":  # every image its own group: the notebook projects' leaky protocol
        alone = pd.Series(images["class"].to_numpy(), index=images.index.astype(str))
        by_image = split_groups(
            alone,
            pd.Series(1, index=alone.index),
            cfg.val_fraction,
            cfg.test_fraction,
            params.base.seed,
        )
        return pd.Series(by_image[images.index.astype(str)].to_numpy(), index=images.index)
    classes, mixed = group_classes(images)
    if mixed:
        log.warning(
            "split: %d group(s) hold images of several classes, kept whole (e.g. %s)",
            len(mixed),
            mixed[0],
        )
    sizes = images.groupby("group").size()
    by_group = split_groups(classes, sizes, cfg.val_fraction, cfg.test_fraction, params.base.seed)
    return images["group"].map(by_group)


NO_FOLD = 0  # the fold of test images, and of every image when cross-validation is off


def assign_folds(images: pd.DataFrame, folds: int, seed: int) -> pd.Series:
    """The cross-validation fold (1..``folds``) of every train and val image, whole groups
    per fold, stratified by class (scikit-learn's ``StratifiedGroupKFold``, shuffled from
    ``seed``); :data:`NO_FOLD` for test images, and for all when ``folds`` is 0."""
    result = pd.Series(NO_FOLD, index=images.index, dtype=int)
    if not folds:
        return result
    from sklearn.model_selection import StratifiedGroupKFold

    pool = images[images["split"] != "test"]
    n_groups = pool["group"].nunique()
    if n_groups < folds:
        raise UserError(
            f"split.folds: {folds} folds need at least {folds} groups (patients) in train and "
            f"val; there are {n_groups}"
        )
    per_class = pool.groupby("class")["group"].nunique()
    thin = per_class[per_class < folds]
    if len(thin):
        log.warning(
            "split: class(es) %s have fewer groups than split.folds (%d): some folds "
            "validate without them",
            dict(thin),
            folds,
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the thin-class warning, said above in our words
        parts = splitter.split(np.zeros(len(pool)), pool["class"], pool["group"])
        for fold, (_, held_out) in enumerate(parts, start=1):
            result.loc[pool.index[held_out]] = fold
    return result


def leakage(images: pd.DataFrame, cfg: SplitParams) -> tuple[list[str], pd.DataFrame]:
    """Groups found in several splits, and near-duplicate pairs across splits."""
    return groups_in_several_splits(images), leakage_pairs(images, cfg)


@dataclass
class LeakageOutcome:
    """The images after ``split.leakage`` was applied, and what the gate found."""

    images: pd.DataFrame
    dropped: pd.DataFrame  # the removed later-split copies, with a reason
    found_groups: int  # groups across splits before the policy
    found_pairs: int  # near-duplicate pairs across splits before the policy
    groups: list[str]  # groups still across splits
    pairs: pd.DataFrame  # near-duplicate pairs still across splits


def apply_leakage_policy(images: pd.DataFrame, cfg: SplitParams) -> LeakageOutcome:
    """The leakage gate: ``fail`` raises, ``warn`` logs and keeps the leak, ``drop``
    removes the later-split side of every leak (:func:`drop_leaks`)."""
    shared, pairs = leakage(images, cfg)
    found = len(shared), len(pairs)
    dropped = images.iloc[:0].assign(reason="")
    if shared or len(pairs):
        summary = (
            f"split: {len(pairs)} near-duplicate pair(s) and {len(shared)} group(s) cross "
            f"splits under strategy '{cfg.strategy}'"
        )
        if cfg.leakage == "fail":
            raise UserError(f"{summary}; set split.leakage to 'drop' or 'warn' to go on")
        if cfg.leakage == "warn":
            log.warning("%s; the test numbers will be optimistic", summary)
        else:
            images, dropped = drop_leaks(images, cfg)
            log.warning("%s; dropped %d later-split copies", summary, len(dropped))
        shared, pairs = leakage(images, cfg)
    return LeakageOutcome(images, dropped, *found, shared, pairs)


def drop_leaks(images: pd.DataFrame, cfg: SplitParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove the later-split side of every leak (val after train, test after both)."""
    kept = images
    dropped = []
    for later in ("val", "test"):
        earlier = kept[kept["split"].map(SPLITS.index) < SPLITS.index(later)]
        shared = kept.index[(kept["split"] == later) & kept["group"].isin(earlier["group"])]
        _, pairs = leakage(kept, cfg)
        paired = [
            b
            for a, b in zip(pairs["a"], pairs["b"], strict=True)
            if kept.at[b, "split"] == later and a in earlier.index
        ]
        gone = sorted(set(shared) | set(paired))
        dropped.append(kept.loc[gone].assign(reason="near_duplicate_in_earlier_split"))
        kept = kept.drop(index=gone)
    return kept, pd.concat(dropped)


def with_image_paths(images: pd.DataFrame) -> pd.DataFrame:
    """One flat folder per split and class; the source path keeps names unique."""
    images = images.assign(
        image=[
            f"{s}/{c}/{src.removeprefix('images/').replace('/', '__')}"
            for s, c, src in zip(images["split"], images["class"], images["source"], strict=True)
        ],
        order=images["split"].map(SPLITS.index),
    )
    return images.sort_values(["order", "class", "image"]).reset_index(drop=True)


def groups_per_class(images: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Patients (groups) with images of each class, per split: a group whose images carry
    several classes counts in each."""
    counts = images.groupby(["split", "class"])["group"].nunique()
    classes = sorted(images["class"].unique())
    return {s: {c: int(counts.get((s, c), 0)) for c in classes} for s in SPLITS}


def few_groups(counts: dict[str, dict[str, int]]) -> list[str]:
    """``<split>/<class>`` of every class with fewer than :data:`MIN_GROUPS_PER_CLASS`
    patients in a split (``counts``: :func:`groups_per_class`)."""
    return [
        f"{split}/{name}"
        for split, per_class in counts.items()
        for name, n in per_class.items()
        if n < MIN_GROUPS_PER_CLASS
    ]


_TOO_FEW = {  # what a split with too few patients of a class costs
    "train": "the model learns the class from too few patients",
    "val": "validation (early stopping, the best epoch) sees too few patients of the class",
    "test": "the test figures of the class rest on too few patients",
}


def warn_few_groups(counts: dict[str, dict[str, int]]) -> None:
    """One ``warning:`` line per split and class of :func:`few_groups`."""
    for cell in few_groups(counts):
        split, name = cell.split("/", 1)
        n = counts[split][name]
        log.warning(
            "warning: split: %s holds %d patient%s of class %r, fewer than %d: %s (bring "
            "more patients)",
            split,
            n,
            "" if n == 1 else "s",
            name,
            MIN_GROUPS_PER_CLASS,
            _TOO_FEW[split],
        )


def split_metrics(images: pd.DataFrame) -> dict:
    """The counts of metrics/split.json (docs/outputs.md): images, groups and classes per
    split, and each split's share of the images and mix of classes, which show how close
    whole groups came to ``split.val_fraction`` and ``split.test_fraction``."""
    per_class = images.groupby(["split", "class"]).size()
    class_counts = images.groupby("class").size()
    group_sizes = images.groupby("group").size()
    patients = groups_per_class(images)
    per_split = {s: int((images["split"] == s).sum()) for s in SPLITS}
    return {
        "images": per_split,
        "groups": {s: int(images.loc[images["split"] == s, "group"].nunique()) for s in SPLITS},
        "images_per_class": {
            s: {c: int(per_class.get((s, c), 0)) for c in sorted(class_counts.index)}
            for s in SPLITS
        },
        "images_with_near_duplicates": int(group_sizes[group_sizes > 1].sum())
        if not images["has_id"].all()
        else 0,
        "largest_group": int(group_sizes.max()),
        "class_imbalance_ratio": round(float(class_counts.max() / class_counts.min()), 4),
        "groups_per_class": patients,
        "min_groups_per_class": MIN_GROUPS_PER_CLASS,
        "few_groups": few_groups(patients),
        "image_fractions": {s: round(n / len(images), 4) for s, n in per_split.items()},
        "class_mix": {
            s: {
                c: round(float(per_class.get((s, c), 0)) / max(n, 1), 4) for c in class_counts.index
            }
            for s, n in per_split.items()
        },
    }
