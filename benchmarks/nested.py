"""One model or an ensemble (folds, seeds)? Nested cross-validation decides, not the test split.

Run from the repository root::

    python -m benchmarks.nested --data path/to/chest-ctscan-images.zip
                                [--task default] [--split grouped|official]
                                [--folds 3] [--recipe default] [--seed 42] [--out F.json]

``--data synthetic``: the phantom, as params.yaml makes it.

The cv stage cannot answer this question: its folds *are* the ensemble, so nothing is
left to score the ensemble on. Here, in a temporary project folder (download, convert and
split run as the project's own stages, with ``split.folds: --folds``), every outer fold
of the train+val images plays the test split in turn, and the rest plays train+val:

* **single**: what ``train`` does with ``train.ensemble: false``: one model fitted on the
  rest's train images, stopping early on the rest's val images (the split stage's, or the
  dataset's own folders with ``--split official``);
* **ensemble**: what ``train.ensemble: true`` does: the rest is cut again into ``--folds``
  grouped, stratified inner folds (:func:`lungct.data.split.assign_folds`), one model
  fitted per inner fold as the cv stage fits it (:func:`lungct.model.train.fit_model`), and
  their softmaxes averaged (:func:`lungct.model.network.ensemble`);
* **seeds** (``--seed-members N`` > 1): what ``train.seeds: N`` does: the single model and
  N - 1 more fitted like it from seeds ``--seed`` + 1, ..., averaged;

and each is scored on the outer fold: balanced accuracy, macro F1 and loss, as they are
and re-framed (:func:`lungct.model.cv.reframed_scores`; the search's robust score is the lower
of the two), with the inner members' own mean beside them. The test split is never read.
Cost: ``--folds`` x (``--folds`` + ``--seed-members``) fits. Figures on the 2-core machine:
docs/benchmarks.md ("One model or an ensemble").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.host import machine, stage
from benchmarks.quality import SPLITS, write_params
from benchmarks.sweep import RECIPES
from lungct.params import merge, parse_params

ROOT = Path(__file__).resolve().parents[1]
# members: the inner fold models' mean score; seeds (--seed-members): the single model with
# others fitted on the same images from other seeds, averaged
MODELS = ("single", "ensemble", "members", "seeds")


def _scores(model, contract, held_out, classes, params) -> dict:
    from lungct.evaluation.metrics import classification_metrics
    from lungct.model.cv import SCORES, predict_images, reframed_scores

    probabilities = predict_images(model, contract, held_out[0], params)
    plain = classification_metrics(np.asarray(held_out[1]), probabilities, classes)
    return {
        **{key: plain[key] for key in SCORES},
        "reframed": reframed_scores(model, contract, held_out, classes, params),
    }


def _mean(rows: list[dict]) -> dict:
    from lungct.model.cv import SCORES

    return {
        **{key: float(np.mean([r[key] for r in rows])) for key in SCORES},
        "reframed": {key: float(np.mean([r["reframed"][key] for r in rows])) for key in SCORES},
    }


def outer_fold(params, table, fold: int, splits_dir: Path, seed_members: int = 1) -> dict:
    """Single model and inner-fold ensemble fitted without outer fold ``fold``, scored on it;
    with ``seed_members`` > 1 also the seed ensemble: the single model and
    ``seed_members`` - 1 more fitted like it from seeds ``base.seed`` + 1, ..., averaged."""
    from lungct.contract import Contract
    from lungct.data.split import assign_folds
    from lungct.data.tables import fold_images, split_images, train_classes
    from lungct.model.network import ensemble
    from lungct.model.saving import inference_model
    from lungct.model.train import fit_model

    classes = train_classes(table, splits_dir)
    contract = Contract.from_params(params, classes, None)
    seed = params.base.seed
    _, held_out = fold_images(table, fold, classes, splits_dir)
    folds = table["fold"].astype(int)
    rest = table[(table["split"] != "test") & (folds != fold)].copy()
    result: dict = {"fold": fold, "held_out_images": len(held_out[0])}

    fitted = fit_model(
        params.train,
        contract,
        seed,
        split_images(rest, "train", classes, splits_dir),
        split_images(rest, "val", classes, splits_dir),
        name=f"outer {fold}: single",
    )
    single = inference_model(fitted.model)
    result["single"] = _scores(single, contract, held_out, classes, params)
    if seed_members > 1:
        seeded = [single]
        for offset in range(1, seed_members):
            fitted = fit_model(
                params.train,
                contract,
                seed + offset,
                split_images(rest, "train", classes, splits_dir),
                split_images(rest, "val", classes, splits_dir),
                name=f"outer {fold}: single, seed {seed + offset}",
            )
            seeded.append(inference_model(fitted.model))
        result["seeds"] = _scores(ensemble(seeded), contract, held_out, classes, params)

    k = params.split.folds
    rest["fold"] = assign_folds(rest, k, seed)
    members, member_scores = [], []
    for inner in range(1, k + 1):
        train, val = fold_images(rest, inner, classes, splits_dir)
        fitted = fit_model(
            params.train, contract, seed, train, val, name=f"outer {fold}: inner {inner}/{k}"
        )
        member = inference_model(fitted.model)
        members.append(member)
        member_scores.append(_scores(member, contract, held_out, classes, params))
    result["ensemble"] = _scores(ensemble(members), contract, held_out, classes, params)
    result["members"] = _mean(member_scores)
    return result


def row(result: dict, seconds: float) -> str:
    cells = [
        f"{result[m]['balanced_accuracy']:.3f} / {result[m]['reframed']['balanced_accuracy']:.3f}"
        for m in MODELS
        if m in result
    ]
    return f"| {result['fold']} | {result['held_out_images']} | {' | '.join(cells)} | {seconds / 60:.1f} min |"


def summary(results: list[dict]) -> dict:
    """Mean and standard deviation over the outer folds of each model's balanced accuracy
    (plain, re-framed and robust = the lower of the two), and of each ensemble - single."""

    def robust(r: dict) -> float:
        return min(r["balanced_accuracy"], r["reframed"]["balanced_accuracy"])

    out: dict = {}
    for model in (m for m in MODELS if m in results[0]):
        for view, value in (
            ("plain", lambda r: r["balanced_accuracy"]),
            ("reframed", lambda r: r["reframed"]["balanced_accuracy"]),
            ("robust", robust),
        ):
            values = np.array([value(r[model]) for r in results])
            out[f"{model}_{view}"] = {"mean": float(values.mean()), "std": float(values.std())}
    for model in ("ensemble", "seeds"):
        if model in results[0]:
            gain = np.array([robust(r[model]) - robust(r["single"]) for r in results])
            out[f"{model}_minus_single_robust"] = {
                "mean": float(gain.mean()),
                "std": float(gain.std()),
                "folds_better": int((gain > 0).sum()),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="zip or folder, or: synthetic")
    parser.add_argument("--task", default="default", help="split.classes: default | binary")
    parser.add_argument("--split", default="grouped", choices=sorted(SPLITS))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--seed-members", type=int, default=1, help="> 1: also the seed ensemble of this many"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    synthetic = str(args.data) == "synthetic"
    if not synthetic and not args.data.exists():
        sys.exit(f"{args.data}: not found (pass --data PATH, or --data synthetic)")
    if args.folds < 2:
        sys.exit("--folds: at least 2")

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    data = {} if synthetic else {"source": "path", "path": str(args.data.resolve())}
    split = {"classes": args.task, "folds": args.folds, **SPLITS[args.split]}
    raw = merge(
        merge(base, {"data": data, "split": split, "base": {"seed": args.seed}}),
        RECIPES[args.recipe],
    )
    out: dict = {"machine": machine(), **{k: v for k, v in vars(args).items() if k != "out"}}
    out["data"] = str(args.data)
    print(f"# {out['machine']}")
    print(
        f"# task {args.task}, split {args.split}, {args.folds} folds, recipe {args.recipe}, "
        f"seed {args.seed}"
    )
    with tempfile.TemporaryDirectory(prefix="lungct-nested-") as tmp:
        project = Path(tmp)
        write_params(project, raw)
        for name in ("download", "convert", "split"):
            stage(name, project)
        from lungct.data.tables import read_splits

        splits_dir = project / "data" / "splits"
        table = read_splits(splits_dir)
        params = parse_params(raw)
        seeds = f" {args.seed_members} seeds |" if args.seed_members > 1 else ""
        print(
            "| outer fold | held-out images | single (plain / reframed) | fold ensemble | "
            f"inner members' mean |{seeds} time |"
        )
        print("|---|---|---|---|---|---|" + ("---|" if seeds else ""))
        results = []
        for fold in range(1, args.folds + 1):
            start = time.perf_counter()
            result = outer_fold(params, table, fold, splits_dir, args.seed_members)
            result["seconds"] = time.perf_counter() - start
            results.append(result)
            print(row(result, result["seconds"]), flush=True)
    out["outer_folds"] = results
    out["summary"] = summary(results)
    s = out["summary"]
    for model in (m for m in MODELS if f"{m}_robust" in s):
        print(
            f"{model}: robust {s[f'{model}_robust']['mean']:.3f} +- "
            f"{s[f'{model}_robust']['std']:.3f} (plain {s[f'{model}_plain']['mean']:.3f}, "
            f"reframed {s[f'{model}_reframed']['mean']:.3f})"
        )
    for model in ("ensemble", "seeds"):
        gain = s.get(f"{model}_minus_single_robust")
        if gain:
            print(
                f"{model} - single (robust): {gain['mean']:+.3f} +- {gain['std']:.3f}, "
                f"better on {gain['folds_better']} of {args.folds} outer folds"
            )
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
