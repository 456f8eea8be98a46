"""A recipe search driven by cross-validation only, then one test evaluation per seed.

Run from the repository root::

    python -m benchmarks.sweep --data path/to/chest-ctscan-images.zip
                               [--folds 3] [--recipes default,augment,...]
                               [--seeds 42,43,44] [--out sweep.json]

In a temporary project folder, with the project's own stages as subprocesses (exactly as
``dvc repro`` runs them) and ``params.yaml`` = the repo's params with ``data.source:
path`` and ``data.path: --data``:

1. download once; convert and split (``split.folds: --folds``, ``--task``, ``--split``)
   once per input size;
2. **search**: for each recipe of :data:`RECIPES` (overrides of the repo's ``train``
   params, or of ``convert.image_size``), the cv stage only: per-fold validation balanced
   accuracy, macro F1 and loss on the train+val images; the test split is never read.
   One table row per recipe with the mean and standard deviation over the folds and the
   wall time of the run (convert and split included where the input size changed; a new
   input size regroups the images, so its folds differ a little);
3. **choice**: the recipe with the highest :func:`robust_score`, the lower of its mean
   validation balanced accuracy and the same with the held-out images re-framed (the cv
   stage's ``reframed`` scores; ties: the lower mean loss);
4. **test, once per seed**: for each of ``--seeds`` (``base.seed``: the split, the
   weights and the shuffling all change), split, train and evaluate the chosen recipe
   (and, with ``--ensemble``, the cross-validation ensemble of that seed too), and print
   the test balanced accuracy with its patient-bootstrap 95 % interval, then the mean and
   standard deviation over the seeds.

Everything lands in ``--out`` (JSON), rewritten after each search row and each test seed,
so a run stopped part way keeps what it finished. Figures and cost on the 2-core machine:
docs/benchmarks.md (Recipe search).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.host import machine, stage
from benchmarks.quality import (
    NO_AUGMENT,
    SPLITS,
    balanced_accuracy_text,
    read_metrics,
    write_params,
)
from lungct.atomic import write_json
from lungct.params import merge

ROOT = Path(__file__).resolve().parents[1]

MILD_AUGMENT = {**NO_AUGMENT, "rotation": 0.03, "zoom": 0.1, "translation": 0.05}
# Intensity only: a window a little higher or wider ("intensity jitter").
JITTER = {"contrast": 0.1, "brightness": 0.05}
DOUBLE = {"convs_per_block": 2}
COSINE30 = {"epochs": 30, "lr_schedule": "cosine", "early_stopping_patience": 8}
WIDE4 = {"filters": [32, 64, 128, 256]}
# Scale and position only: the official test folder frames the chest more widely.
ZOOM_SHIFT = {**NO_AUGMENT, "zoom": 0.2, "translation": 0.1}
# Where the first search started from (docs/benchmarks.md, "Schedule, depth, head, input
# size"); it chose cosine30.
PREVIOUS = {
    "train": {
        "epochs": 20,
        "filters": [32, 64, 128],
        "head": "global_max",
        "early_stopping_patience": 5,
        "lr_schedule": "constant",
        "augment": NO_AUGMENT,
        "convs_per_block": 1,
        "seeds": 1,
    },
    "convert": {"image_size": 128, "framing": "image"},
}
# The body recipes: framing body, one conv a block, augmentation off, one model (params.yaml's
# values when they were added, pinned so that they keep their meaning as the defaults move on).
ONE_CONV_BODY = {
    "convert": {"framing": "body"},
    "train": {"convs_per_block": 1, "augment": NO_AUGMENT, "seeds": 1},
}
# Overrides of the repo's params: each recipe is PREVIOUS with one change, or a combination
# (``default``: params.yaml as it is).
RECIPES = {
    "default": {},
    "previous": PREVIOUS,
    "augment": merge(PREVIOUS, {"train": {"augment": MILD_AUGMENT}}),
    "cosine30": merge(PREVIOUS, {"train": COSINE30}),
    "wide4": merge(PREVIOUS, {"train": WIDE4}),
    "avg_head": merge(PREVIOUS, {"train": {"head": "global_average"}}),
    "augment_cosine30": merge(PREVIOUS, {"train": {"augment": MILD_AUGMENT, **COSINE30}}),
    "wide4_cosine30": merge(PREVIOUS, {"train": {**WIDE4, **COSINE30}}),
    "size192": merge(PREVIOUS, {"convert": {"image_size": 192}}),
    # For the official folders (docs/benchmarks.md, "Framing"); the body recipes below
    # start from ONE_CONV_BODY (cosine30, one conv a block), not PREVIOUS.
    "zoom_cosine30": merge(PREVIOUS, {"train": {"augment": ZOOM_SHIFT, **COSINE30}}),
    "wide4_zoom_cosine30": merge(PREVIOUS, {"train": {"augment": ZOOM_SHIFT, **WIDE4, **COSINE30}}),
    # Cosine30, one conv a block, framed to the body or not ("A framing-robust choice")
    "body": ONE_CONV_BODY,  # the binary task's choice
    "image": merge(ONE_CONV_BODY, {"convert": {"framing": "image"}}),
    "wide4_body": merge(ONE_CONV_BODY, {"train": WIDE4}),
    # Body framing with what it frees (scale and position augmentation no longer hides a
    # shortcut the folds reward), chosen by the framing-robust score.
    "body_augment": merge(ONE_CONV_BODY, {"train": {"augment": MILD_AUGMENT}}),
    "body_dropout5": merge(ONE_CONV_BODY, {"train": {"dropout": 0.5}}),
    "body_dense256": merge(ONE_CONV_BODY, {"train": {"dense_units": 256}}),
    "body_size160": merge(ONE_CONV_BODY, {"convert": {"image_size": 160}}),
    # The search with the final grouping: intensity jitter and two convolutions a block
    # (train.augment.contrast / .brightness, train.convs_per_block).
    "body_jitter": merge(ONE_CONV_BODY, {"train": {"augment": JITTER}}),
    "body_double": merge(ONE_CONV_BODY, {"train": DOUBLE}),  # the default's network
    "body_double_jitter": merge(ONE_CONV_BODY, {"train": {**DOUBLE, "augment": JITTER}}),
    "wide4_body_jitter": merge(ONE_CONV_BODY, {"train": {**WIDE4, "augment": JITTER}}),
    "wide4_body_double": merge(ONE_CONV_BODY, {"train": {**WIDE4, **DOUBLE}}),
    # body_double as a seed ensemble of 3 (train.seeds; the default), chosen over one
    # model and the fold ensemble by nested cross-validation
    # (benchmarks.nested): the cv stage fits one model per fold whatever train.seeds is.
    "body_double_seeds3": merge(ONE_CONV_BODY, {"train": {**DOUBLE, "seeds": 3}}),
    # Small lesions (the default with one change): the phantom written at a clinical
    # 512 matrix, so that a benign nodule is drawn at its size in mm rather than a few
    # pixels (``--data synthetic`` only), and a larger input to the network.
    "phantom512": {"data": {"synthetic": {"image_size": 512}}},
    # The lungs' box rather than the body's: a nodule larger at the same input size.
    "lungs": {"convert": {"framing": "lungs"}},
    # A temperature whatever the val patients show (the default keeps one only where it helps
    # those it was not fitted on: train.calibration.temperature auto).
    "temperature_always": {"train": {"calibration": {"temperature": True}}},
    # A 192 px input (the same as ``default`` while params.yaml's input is 192 px; against a
    # 128 px params.yaml, the search of docs/benchmarks.md "Small lesions: the input size"),
    # and one at fewer multiply-adds than 128 px with filters 32-128: a narrower first
    # block and a fourth.
    "input192": {"convert": {"image_size": 192}},
    "size192_4blocks": {"convert": {"image_size": 192}, "train": {"filters": [16, 32, 64, 128]}},
}


def robust_score(details: dict) -> float:
    """What the search chooses by: the lower of the mean fold balanced accuracy as the
    folds are and under the framing shift (``reframed``, :func:`lungct.model.cv.reframed_scores`).
    A recipe is as good as its worse framing: folds drawn from one dataset's exports reward
    a model that reads the export's framing, which another export does not share."""
    return min(
        details["balanced_accuracy"]["mean"], details["reframed"]["balanced_accuracy"]["mean"]
    )


def search_row(name: str, details: dict, seconds: float) -> str:
    ba, f1, loss = (details[k] for k in ("balanced_accuracy", "macro_f1", "loss"))
    shifted, tta = (details[k]["balanced_accuracy"] for k in ("reframed", "tta"))
    epochs = [row["epochs"] for row in details["per_fold"]]
    recall = " ".join(f"{c} {r['mean']:.2f}" for c, r in details.get("recall", {}).items())
    return (
        f"| {name} | {ba['mean']:.3f} +- {ba['std']:.3f} | "
        f"{shifted['mean']:.3f} +- {shifted['std']:.3f} | {robust_score(details):.3f} | "
        f"{tta['mean']:.3f} | {recall} | "
        f"{f1['mean']:.3f} +- {f1['std']:.3f} | {loss['mean']:.3f} | "
        f"{min(epochs)}-{max(epochs)} | {seconds / 60:.1f} min |"
    )


def model_label(params: dict) -> str:
    """What the train stage saves under ``params``: "fold ensemble" (``train.ensemble``, the
    cv stage's fold models), "N seeds" (``train.seeds`` > 1, averaged) or "single"."""
    train = params["train"]
    if train.get("ensemble"):
        return "fold ensemble"
    seeds = int(train["seeds"])
    return f"{seeds} seeds" if seeds > 1 else "single"


def test_row(seed: int, model: str, ev: dict, seconds: float) -> str:
    """The test figures of one seed: balanced accuracy, macro F1, loss (NLL) and ECE before
    and after the temperature (with the ECE a perfectly calibrated model would show), and
    the share the "uncertain" rule answers with their accuracy."""
    calibration, uncertain = ev["calibration"], ev["uncertain"]
    answered = uncertain["accuracy"]
    before = calibration["before"]
    return (
        f"| {seed} | {model} | {ev['images']} ({ev['groups']}) | {balanced_accuracy_text(ev)} | "
        f"{ev['macro_f1']:.3f} | {before['loss']:.3f} -> {ev['loss']:.3f} | "
        f"{before['ece']:.3f} -> {calibration['ece']:.3f} ({calibration['ece_if_calibrated']:.3f}) | "
        f"{uncertain['coverage']:.3f} ({'-' if answered is None else f'{answered:.3f}'}) | "
        f"{seconds / 60:.1f} min |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="the Chest CT-Scan zip or folder, or: synthetic"
    )
    parser.add_argument("--task", default="default", help="split.classes: default | binary")
    parser.add_argument("--split", default="grouped", choices=sorted(SPLITS))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument(
        "--recipes", default=",".join(name for name in RECIPES if name != "default")
    )
    parser.add_argument("--choose", default=None, help="skip the search: test this recipe")
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--ensemble", action="store_true", help="also test the fold ensemble")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    synthetic = str(args.data) == "synthetic"  # the phantom, as params.yaml makes it
    if not synthetic and not args.data.exists():
        sys.exit(f"{args.data}: not found (pass --data PATH to the Chest CT-Scan zip or folder)")
    unknown = sorted(set(args.recipes.split(",")) - set(RECIPES))
    if unknown or (args.choose and args.choose not in RECIPES):
        sys.exit(f"--recipes/--choose: unknown recipe(s) {unknown or args.choose}")

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    data = {} if synthetic else {"source": "path", "path": str(args.data.resolve())}
    base = merge(
        base,
        {"data": data, "split": {"classes": args.task, "folds": args.folds, **SPLITS[args.split]}},
    )
    out: dict = {"machine": machine(), "task": args.task, "split": args.split, "folds": args.folds}

    def save() -> None:  # after every finished row: a long run stopped part way keeps them
        if args.out:
            write_json(args.out, out)

    print(f"# {out['machine']}; task {args.task}, split {args.split}, {args.folds} folds")
    with tempfile.TemporaryDirectory(prefix="lungct-sweep-") as tmp:
        project = Path(tmp)
        write_params(project, base)
        stage("download", project)

        chosen = args.choose
        if chosen is None:
            print(
                "| recipe | val balanced accuracy | reframed | robust score | with TTA | "
                "val recall | val macro F1 | val loss | epochs | time |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|")
            search = out["search"] = {}
            downloaded, converted = base["data"], None  # the params data/ was made with
            for name in args.recipes.split(","):
                params = merge(base, RECIPES[name])
                write_params(project, params)
                start = time.perf_counter()
                if params["data"] != downloaded:  # a recipe of the phantom's own (its matrix)
                    stage("download", project)
                    downloaded, converted = params["data"], None
                if params["convert"] != converted:
                    stage("convert", project)
                    stage("split", project)
                    converted = params["convert"]
                stage("cv", project)
                seconds = time.perf_counter() - start  # with convert + split where they reran
                details = read_metrics(project, "cv_details.json")
                search[name] = {"seconds": seconds, "cv": details}
                save()
                print(search_row(name, details, seconds), flush=True)
            chosen = max(
                search,
                key=lambda n: (robust_score(search[n]["cv"]), -search[n]["cv"]["loss"]["mean"]),
            )
        out["chosen"] = chosen
        print(f"\nchosen by cross-validation: {chosen} {RECIPES[chosen]}\n")

        print(
            "| seed | model | test images (groups) | balanced accuracy (95 % CI) | macro F1 | "
            "loss before -> after the temperature | ECE before -> after (if calibrated) | "
            "answered (their accuracy) | time |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        tests = out["test"] = []
        for seed in [int(s) for s in args.seeds.split(",") if s]:  # --seeds "": search only
            params = merge(merge(base, {"base": {"seed": seed}}), RECIPES[chosen])
            write_params(project, params)
            start = time.perf_counter()
            if synthetic:  # base.seed draws the phantom too
                stage("download", project)
            stage("convert", project)
            stage("split", project)
            stage("train", project)
            stage("evaluate", project)
            ev = read_metrics(project, "eval_details.json")
            label = model_label(params)
            tests.append({"seed": seed, "model": label, "eval": ev})
            save()
            print(test_row(seed, label, ev, time.perf_counter() - start), flush=True)
            if args.ensemble:
                start = time.perf_counter()
                stage("cv", project)
                params = merge(params, {"train": {"ensemble": True}})
                write_params(project, params)
                stage("train", project)
                stage("evaluate", project)
                ev = read_metrics(project, "eval_details.json")
                label = model_label(params)
                tests.append({"seed": seed, "model": label, "eval": ev})
                save()
                print(test_row(seed, label, ev, time.perf_counter() - start), flush=True)
        for model in sorted({t["model"] for t in tests}):
            values = np.array(
                [t["eval"]["balanced_accuracy"] for t in tests if t["model"] == model]
            )
            print(
                f"\n{model}: test balanced accuracy over {len(values)} seeds: "
                f"{values.mean():.3f} +- {values.std():.3f} (mean +- sd)"
            )
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
