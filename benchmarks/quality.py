"""Quality on real data: the default recipe against the baseline CNN, on the same splits.

The baseline CNN is the common Kaggle notebook recipe the notebook projects used.

Run from the repository root::

    python -m benchmarks.quality --data path/to/chest-ctscan-images.zip
                                 [--tasks binary,default] [--splits grouped,official]
                                 [--out quality.json]

One run, in a temporary project folder, with the project's own stages as subprocesses
(``python -m stages.<name>``, exactly as ``dvc repro`` runs them) and ``params.yaml``
= the repo's params with ``data.source: path`` and ``data.path: --data``:

1. download and convert once;
2. for each task (``split.classes``: ``binary``, ``default``) and split
   (``grouped``: whole near-duplicate groups per split; ``official``: the dataset's
   own train/valid/test folders with ``split.leakage: drop``, which removes the later
   split's copy of every image that has a near duplicate in an earlier split), run
   split, then train + evaluate twice on that same split:

   * **default**: the repo's ``train`` section as it is;
   * **baseline**: the baseline CNN's recipe on the same input: three conv blocks (32, 64, 128
     filters) with ReLU and max-pooling, no batch norm, flatten, dense 128, dropout
     0.5, no class weights, no augmentation. Epochs, batch size, learning rate, early
     stopping and seed are the repo's, so only the recipe differs.

Prints one table row per (task, split, recipe) with test accuracy, balanced
accuracy (with the patient/group bootstrap 95 % interval) and group-level balanced
accuracy from ``metrics/eval_details.json``, and writes all of them to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.host import stage
from lungct.params import merge, parse_params

ROOT = Path(__file__).resolve().parents[1]

# Every train.augment transform off (the benchmarks' recipes pin it).
NO_AUGMENT = {
    "flip": False,
    "rotation": 0.0,
    "zoom": 0.0,
    "translation": 0.0,
    "contrast": 0.0,
    "brightness": 0.0,
}
BASELINE_RECIPE = {
    "filters": [32, 64, 128],
    "batch_norm": False,
    "head": "flatten",
    "dense_units": 128,
    "dropout": 0.5,
    "class_weight": "none",
    "augment": NO_AUGMENT,
}
SPLITS = {
    "grouped": {"strategy": "grouped", "leakage": "fail"},
    "official": {"strategy": "official", "leakage": "drop"},
}


def write_params(project: Path, params: dict) -> None:
    parse_params(params)  # fail here, with the key, rather than in a stage
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_metrics(project: Path, name: str) -> dict:
    return json.loads((project / "metrics" / name).read_text())


def balanced_accuracy_text(ev: dict) -> str:
    """``0.842 (0.72-0.90)``: test balanced accuracy and its patient-bootstrap 95 % interval."""
    ci = ev.get("ci95", {}).get("balanced_accuracy", {})
    low, high = ci.get("low", float("nan")), ci.get("high", float("nan"))
    return f"{ev['balanced_accuracy']:.3f} ({low:.2f}-{high:.2f})"


def row(task: str, split: str, recipe: str, ev: dict, seconds: float) -> str:
    return (
        f"| {task} | {split} | {recipe} | {ev['images']} ({ev['groups']}) | "
        f"{ev['accuracy']:.3f} | {balanced_accuracy_text(ev)} | "
        f"{ev['group_level']['balanced_accuracy']:.3f} | {seconds:.0f} s |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the Chest CT-Scan zip or folder")
    parser.add_argument("--tasks", default="binary,default")
    parser.add_argument("--splits", default="grouped,official")
    parser.add_argument("--out", type=Path, default=None, help="write every eval_details.json here")
    args = parser.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"{args.data}: not found (pass --data PATH to the Chest CT-Scan zip or folder)")

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = merge(base, {"data": {"source": "path", "path": str(args.data.resolve())}})
    results = []
    print(
        "| task | split | recipe | test images (groups) | accuracy | balanced accuracy "
        "(95 % CI) | group-level balanced accuracy | train + evaluate |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="lungct-quality-") as tmp:
        project = Path(tmp)
        write_params(project, base)
        stage("download", project)
        stage("convert", project)
        for task in args.tasks.split(","):
            for split in args.splits.split(","):
                split_params = merge(base, {"split": {"classes": task, **SPLITS[split]}})
                write_params(project, split_params)
                stage("split", project)
                summary = read_metrics(project, "split.json")
                for recipe in ("default", "baseline"):
                    train = {} if recipe == "default" else BASELINE_RECIPE
                    write_params(project, merge(split_params, {"train": train}))
                    seconds = stage("train", project) + stage("evaluate", project)
                    ev = read_metrics(project, "eval_details.json")
                    print(row(task, split, recipe, ev, seconds), flush=True)
                    results.append(
                        {
                            "task": task,
                            "split": split,
                            "recipe": recipe,
                            "seconds": seconds,
                            "dropped": summary["dropped"],
                            "eval": ev,
                        }
                    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
