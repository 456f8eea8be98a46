"""Grouping images without ids into patients: ``split.grouping: phash`` (the old rule)
against ``patient_likely`` (``lungct.data.grouping``).

Run from the repository root::

    python -m benchmarks.grouping [--patients 60] [--slices 8] [--data path/to/chest-ctscan-images.zip]

1. **Known identity.** The phantom cohort (``lungct.phantom``: ``--patients`` patients of
   ``--slices`` slices, a clinical series 2.5 mm apart, 256 x 256, the lung window) is
   exported as images without ids in an IQ-OTH/NCCD folder tree, file names shuffled, and
   converted by the convert stage; each rule groups the converted images and is scored
   against the true patients: pairwise precision (of the image pairs put together, the
   share of one patient) and recall (of the pairs of one patient, the share put
   together), group count and largest group. Two exports:

   * ``screenshot`` (Chest CT-Scan-like): each patient is one export of its own, with its
     own crop (0-12 % off each side), scale (1-2.5x) and mode (L, RGB or RGBA), and each
     slice a screenshot of it (the crop moves by up to 1.5 % of the side, the scale by
     4 %);
   * ``plain`` (IQ-OTH/NCCD-like): every slice of every patient the same 256 x 256 export.
     The phantom's patients are one anatomical template with random sizes, vessels and
     nodules, far more alike than real patients: with nothing but anatomy to tell them
     apart, every rule links different patients here (precision well below 0.5).

2. **The real copy** (``--data``): download, convert, and split under each rule in a
   temporary project (``python -m stages.<name>``, as ``dvc repro`` runs them, with the
   repo's params.yaml and ``data.source: path``): groups, largest group, groups holding
   images of several classes (different patients merged, or one image filed twice), test
   images, and the test images within 2 bits of a train or val image by an independent
   pHash (evaluate's, ImageHash's bit for bit) of the split PNGs the model reads: what the
   issue counts as leaks.

Prints one table per part; the script exits 0 unless something crashes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from sklearn.metrics.cluster import pair_confusion_matrix

from benchmarks.host import stage
from lungct.evaluation.metrics import image_phashes, nearest_bits
from lungct.io.windowing import window_channels
from lungct.params import Params, merge, parse_params
from lungct.phantom.cohort import assign_labels, patient_rng
from lungct.phantom.patient import phantom_patient

ROOT = Path(__file__).resolve().parents[1]
RULES = ("phash", "patient_likely")
VARIANTS = ("screenshot", "plain")
FOLDERS = {"benign": "Bengin cases", "malignant": "Malignant cases", "normal": "Normal cases"}
LUNG_WINDOW = (-600.0, 1500.0)
SPACING_MM = 2.5
CROP, CROP_JITTER = 0.12, 0.015  # share of the side cut off, per patient and per slice
SCALE, SCALE_JITTER = (1.0, 2.5), 0.04  # export scale per patient, per slice


def render_cohort(patients: int, slices: int, seed: int, size: int) -> list[tuple[str, np.ndarray]]:
    """(label, 8-bit lung-window slices) of each phantom patient, clinical series."""
    labels = assign_labels(patients, {"normal": 1.0, "benign": 1.0, "malignant": 1.0}, seed)
    return [
        (
            label,
            window_channels(
                phantom_patient(patient_rng(seed, i), label, slices, size, SPACING_MM).hu,
                [LUNG_WINDOW],
            ),
        )
        for i, label in enumerate(labels)
    ]


def export_idless(
    raw: Path, cohort: list[tuple[str, np.ndarray]], variant: str, seed: int
) -> dict[str, str]:
    """Write ``cohort`` as an IQ-OTH/NCCD tree of PNGs without ids under ``raw`` (with the
    ``SOURCE.json`` download writes); returns the true patient of each file (path under
    ``raw``). ``variant``: ``screenshot`` or ``plain`` (module docstring)."""
    rng = np.random.default_rng([seed, 77])
    images = []
    for patient, (label, slices) in enumerate(cohort):
        margins = rng.uniform(0.0, CROP, 4)
        scale = rng.uniform(*SCALE)
        mode = str(rng.choice(["L", "RGB", "RGBA"]))
        for gray in slices:
            image = Image.fromarray(gray)
            if variant == "screenshot":
                side = gray.shape[0]
                cut = np.clip(margins + rng.uniform(-CROP_JITTER, CROP_JITTER, 4), 0, None) * side
                box = (cut[0], cut[1], side - cut[2], side - cut[3])
                factor = scale * rng.uniform(1 - SCALE_JITTER, 1 + SCALE_JITTER)
                width, height = box[2] - box[0], box[3] - box[1]
                size = (round(width * factor), round(height * factor))
                image = image.resize(size, Image.Resampling.BILINEAR, box=box).convert(mode)
            elif variant != "plain":
                raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
            images.append((label, f"P{patient:04d}", image))
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "SOURCE.json").write_text(json.dumps({"layout": "iqothnccd"}))
    truth, counts = {}, dict.fromkeys(FOLDERS, 0)
    for k in rng.permutation(len(images)):
        label, patient, image = images[k]
        counts[label] += 1
        folder = FOLDERS[label]
        rel = f"{folder}/{folder[:-1]} ({counts[label]}).png"
        (raw / folder).mkdir(exist_ok=True)
        image.save(raw / rel)
        truth[rel] = patient
    return truth


def pairwise_scores(predicted: Sequence, truth: Sequence) -> tuple[float, float]:
    """Pairwise precision and recall of a grouping against the true patients: of the
    image pairs it puts together, the share of one patient; of the pairs of one patient,
    the share it puts together (1.0 where there is nothing to count)."""
    if len(predicted) == 0:
        return 1.0, 1.0
    # ordered pairs: rows apart / together in truth, columns apart / together as predicted
    (_, wrongly_joined), (missed, joined) = pair_confusion_matrix(truth, predicted).tolist()
    together, same = joined + wrongly_joined, joined + missed
    return (joined / together if together else 1.0, joined / same if same else 1.0)


def with_grouping(params: Params, grouping: str) -> Params:
    return params.model_copy(
        update={"split": params.split.model_copy(update={"grouping": grouping})}
    )


def score_rules(
    converted: Path, truth: dict[str, str], params: Params
) -> dict[str, dict[str, float | int]]:
    """Pairwise precision and recall, groups and largest group of each rule on converted
    images whose true patients are ``truth`` (keyed by source path)."""
    from lungct.data.split import read_converted

    scores = {}
    for rule in RULES:
        table, _ = read_converted(converted, with_grouping(params, rule).split)
        precision, recall = pairwise_scores(
            table["group"].tolist(),
            [truth[s.removeprefix("images/").removesuffix(".png")] for s in table["source"]],
        )
        sizes = table["group"].value_counts()
        scores[rule] = {
            "precision": round(precision, 3),
            "recall": round(recall, 3),
            "groups": int(len(sizes)),
            "largest": int(sizes.max()),
        }
    return scores


@contextmanager
def inside(folder: Path):
    """Run in ``folder``, as DVC runs a stage in the project root."""
    here = Path.cwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(here)


def known_identity(patients: int, slices: int, seed: int, params: Params) -> list[dict]:
    from stages.convert import convert

    cohort = render_cohort(patients, slices, seed, 256)
    rows = []
    for variant in VARIANTS:
        with tempfile.TemporaryDirectory(prefix="lungct-grouping-") as tmp, inside(Path(tmp)):
            truth = export_idless(Path("data/raw"), cohort, variant, seed)
            convert(params.convert)
            for rule, score in score_rules(Path("data/converted"), truth, params).items():
                rows.append({"variant": variant, "rule": rule, **score})
    return rows


def leaks_within(splits: Path, bits: int = 2) -> tuple[int, int]:
    """Test images, and those within ``bits`` of a train or val image by the pHash of the
    split PNGs (grayscale, as the model reads one window): evaluate's leak sensitivity."""
    table = pd.read_csv(splits / "splits.csv", keep_default_na=False)
    hashes = image_phashes([splits / p for p in table["image"]])
    test = (table["split"] == "test").to_numpy()
    if not test.any() or test.all():
        return int(test.sum()), 0
    nearest = nearest_bits(hashes[test], hashes[~test])
    return int(test.sum()), int((nearest <= bits).sum())


def real_copy(data: Path) -> list[dict]:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = merge(base, {"data": {"source": "path", "path": str(data.resolve())}})
    rows = []
    with tempfile.TemporaryDirectory(prefix="lungct-grouping-real-") as tmp:
        project = Path(tmp)
        for i, rule in enumerate(RULES):
            params = merge(base, {"split": {"grouping": rule}})
            parse_params(params)
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            if i == 0:
                stage("download", project)
                stage("convert", project)
            stage("split", project)
            split = json.loads((project / "metrics/split.json").read_text())
            table = pd.read_csv(project / "data/splits/splits.csv", keep_default_na=False)
            test, leaks = leaks_within(project / "data/splits")
            rows.append(
                {
                    "rule": rule,
                    "groups": int(table["group"].nunique()),
                    "largest": int(table["group"].value_counts().max()),
                    "mixed_class_groups": split["groups_spanning_classes"],
                    "test_images": test,
                    "test_within_2_bits": leaks,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="the Chest CT-Scan zip or folder")
    args = parser.parse_args(argv)
    if args.data is not None and not args.data.exists():
        sys.exit(f"{args.data}: not found")
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    print(f"Phantom, {args.patients} patients x {args.slices} slices, exported without ids:\n")
    print("| export | rule | pairwise precision | pairwise recall | groups | largest |")
    print("|---|---|---|---|---|---|")
    for row in known_identity(args.patients, args.slices, args.seed, params):
        print(
            f"| {row['variant']} | {row['rule']} | {row['precision']:.3f} | {row['recall']:.3f} "
            f"| {row['groups']} | {row['largest']} |",
            flush=True,
        )
    if args.data is not None:
        print(f"\n{args.data.name}, split.strategy grouped:\n")
        print(
            "| rule | groups | largest | groups of several classes | test images "
            "| test images within 2 bits of train/val |"
        )
        print("|---|---|---|---|---|---|")
        for row in real_copy(args.data):
            print(
                f"| {row['rule']} | {row['groups']} | {row['largest']} | "
                f"{row['mixed_class_groups']} | {row['test_images']} | {row['test_within_2_bits']} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
