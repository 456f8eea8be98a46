"""How far the headline metrics move with ``train.precision`` and ``base.seed`` on one
machine, and whether one configuration trained twice gives the same bytes.

Run from the repository root::

    python -m benchmarks.reproduction [--seeds 42 43 44] [--precisions auto float32]
                                      [--rev HEAD] [--set KEY=VALUE ...] [--no-twice]
                                      [--out reproduction.json]

In one clone of this repository at ``--rev`` (``git clone`` into a temporary folder:
what a user gets, no data, no DVC cache), for each seed (``base.seed``: the phantom, the
split and the weights all change) and each precision (``train.precision``), ``dvc repro
evaluate``: download, convert and split run once per seed, and a change of precision
reruns only cv, train and evaluate (their ``dvc.yaml`` params), as DVC decides. ``--set``
changes params for every run (``train.seeds=1`` for one model instead of three; the
documented figures use none). Where ``auto`` resolves to a precision also listed (float32
on a CPU without bfloat16 maths, ``lungct.model.runtime.compute_dtype``), that run is not
repeated: the two are the same training.

Prints, as Markdown:

* one row per run: the headline figures of ``metrics/eval.json``
  (``lungct.evaluation.metrics.HEADLINE``, the flag ``leaky`` left out), ``epochs`` of
  ``metrics/train.json`` (the first seed-ensemble member's) and the wall time;
* the spreads per figure: the **precision effect**, max - min over the precisions at each
  seed (|float32 - auto| with the default two), and the **seed effect**, max - min over
  the seeds at each precision, then the largest of them: a change smaller than that in
  ``dvc metrics diff`` is within what this machine's precision and seed choices move;
* **twice**: the first precision at the first seed trained and evaluated again (``dvc
  repro -f -s train``, then ``-s evaluate``): whether ``models/model.keras``'s sha256,
  ``metrics/predictions.csv``, ``metrics/eval.json`` and ``metrics/train.json`` came out
  identical; and, where a run's params are the committed ones, whether the clone's
  ``dvc.lock`` and metrics came out as committed (``git status``).

Figures and cost: docs/benchmarks.md (Reproduction: precision and seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.host import machine
from benchmarks.whole import clone, environment, minutes, set_params, timed
from lungct.artifacts import LEAKY
from lungct.evaluation.metrics import HEADLINE

FIGURES = tuple(name for name in HEADLINE if name != LEAKY)  # the numeric headline figures
COLUMNS = (*FIGURES, "epochs")
# What "trained twice" compares: the model's bytes and what evaluate and train wrote.
TWICE_FILES = (
    "models/model.keras",
    "metrics/predictions.csv",
    "metrics/eval.json",
    "metrics/train.json",
)


def cpu_model() -> str:
    """The CPU's model name and whether it does bfloat16 maths (``/proc/cpuinfo``)."""
    from lungct.model.runtime import cpu_has_bfloat16

    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    name = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    return f"{name}, {'with' if cpu_has_bfloat16() else 'without'} bfloat16 maths"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_figures(project: Path) -> dict:
    """The row of one run: the headline figures and the epochs trained."""
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    train = json.loads((project / "metrics" / "train.json").read_text())
    return {**{name: evaluation[name] for name in FIGURES}, "epochs": train["epochs"]}


def spreads(runs: dict[tuple[str, int], dict]) -> dict:
    """Max - min of each column of :data:`COLUMNS` over ``runs`` ({(precision, seed): row}):
    ``precision`` {seed: {column: spread over the precisions at that seed}}, ``seed``
    {precision: {column: spread over the seeds at that precision}}, each only where two
    runs or more vary it; ``largest`` {column: the largest of them all}."""

    def spread(rows: list[dict], column: str) -> float:
        values = [row[column] for row in rows if row.get(column) is not None]
        return max(values) - min(values) if len(values) > 1 else 0.0

    precisions = list(dict.fromkeys(p for p, _ in runs))
    seeds = list(dict.fromkeys(s for _, s in runs))
    out: dict = {"precision": {}, "seed": {}, "largest": {}}
    for axis, keys, pick in (
        ("precision", seeds, lambda key, k: key[1] == k),
        ("seed", precisions, lambda key, k: key[0] == k),
    ):
        for k in keys:
            rows = [row for key, row in runs.items() if pick(key, k)]
            if len(rows) > 1:
                out[axis][k] = {column: spread(rows, column) for column in COLUMNS}
    for column in COLUMNS:
        found = [by[column] for axis in ("precision", "seed") for by in out[axis].values()]
        out["largest"][column] = max(found, default=0.0)
    return out


def number(value: float | int | None, column: str) -> str:
    if value is None:
        return "-"
    return str(int(value)) if column == "epochs" else f"{value:.3f}"


def runs_table(runs: dict[tuple[str, int], dict], resolved: str) -> list[str]:
    lines = [
        "| seed | train.precision | " + " | ".join(COLUMNS) + " | time |",
        "|---|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for (precision, seed), row in runs.items():
        label = f"{precision} (= {resolved})" if precision == "auto" else precision
        figures = " | ".join(number(row.get(c), c) for c in COLUMNS)
        time = row.get("time", "")
        lines.append(f"| {seed} | {label} | {figures} | {time} |")
    return lines


def spreads_table(found: dict) -> list[str]:
    heads = [f"precision effect, seed {s}" for s in found["precision"]]
    heads += [f"seed effect, {p}" for p in found["seed"]]
    lines = [
        "| figure | " + " | ".join(heads) + " | largest |",
        "|---|" + "---|" * (len(heads) + 1),
    ]
    for column in COLUMNS:
        cells = [
            number(by[column], column)
            for axis in ("precision", "seed")
            for by in found[axis].values()
        ]
        lines.append(
            f"| {column} | "
            + " | ".join(cells)
            + f" | {number(found['largest'][column], column)} |"
        )
    return lines


def dvc(repo: Path, *arguments: str) -> tuple[float, list[str]]:
    """``dvc ARGUMENTS`` in ``repo``: its wall time and the stages it ran; exits with the
    output's tail when it fails."""
    seconds, result = timed([sys.executable, "-m", "dvc", *arguments], repo, environment())
    output = result.stdout + result.stderr
    if result.returncode:
        sys.exit(f"error: dvc {' '.join(arguments)} failed in {repo}:\n{output[-2000:]}")
    return seconds, re.findall(r"Running stage '(\w+)'", output)


def outputs(repo: Path) -> dict[str, str]:
    return {name: sha256(repo / name) for name in TWICE_FILES}


def lock_outputs(text: str) -> dict[str, str]:
    """{output path: its hash} of every stage in a ``dvc.lock`` text."""
    stages = (yaml.safe_load(text) or {}).get("stages", {})
    return {
        out["path"]: out.get("md5", "")
        for stage in stages.values()
        for out in stage.get("outs", [])
    }


def changed_from_commit(repo: Path) -> dict[str, list[str]]:
    """What the clone holds that its commit does not: ``files``, the tracked files that
    differ (params.yaml, rewritten by :func:`set_params`, left out; dvc.lock also differs
    where the commit's code hashes are stale), and ``outputs``, the ``dvc.lock`` outputs
    (data, model, metrics) whose hash differs from the committed lock's."""

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", *arguments], cwd=repo, capture_output=True, text=True, check=True
        ).stdout

    status = git("status", "--porcelain", "--untracked-files=no")
    committed = lock_outputs(git("show", "HEAD:dvc.lock"))
    now = lock_outputs((repo / "dvc.lock").read_text())
    return {
        "files": [line[3:] for line in status.splitlines() if line[3:] != "params.yaml"],
        "outputs": sorted(path for path in committed if now.get(path) != committed[path]),
    }


# The clone's own check of its params.yaml (its code, not this checkout's): the first
# thing every stage does.
CHECK_PARAMS = (
    "from lungct.errors import run_stage; from lungct.params import load_params; "
    "run_stage(load_params)"
)


def configure(repo: Path, settings: list[str]) -> dict:
    """``settings`` over the clone's params.yaml, checked as its stages will check them."""
    set_params(repo, settings)
    check = subprocess.run(
        [sys.executable, "-c", CHECK_PARAMS],
        cwd=repo,
        env=environment(),
        capture_output=True,
        text=True,
    )
    if check.returncode:
        problem = (check.stderr.strip().splitlines() or ["params.yaml: rejected"])[-1]
        sys.exit(f"{problem} (from --set, --seeds or --precisions)")
    return yaml.safe_load((repo / "params.yaml").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--precisions", nargs="+", default=["auto", "float32"])
    parser.add_argument("--rev", default="HEAD", help="the commit to clone (default HEAD)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params.yaml value for every run (repeatable)",
    )
    parser.add_argument(
        "--no-twice", action="store_true", help="skip training the first run a second time"
    )
    parser.add_argument("--out", type=Path, default=None, help="write every figure here (JSON)")
    args = parser.parse_args(argv)
    seeds = list(dict.fromkeys(args.seeds))
    precisions = list(dict.fromkeys(args.precisions))

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lungct.model.runtime import compute_dtype

    resolved = compute_dtype("auto")
    host, cpu = machine(), cpu_model()
    print(f"# {host}")
    print(f"# CPU: {cpu}; train.precision auto resolves to {resolved}")
    print(f"# rev {args.rev}; seeds {seeds}; precisions {precisions}; --set {args.set or 'none'}")
    runs: dict[tuple[str, int], dict] = {}
    report: dict = {"machine": host, "cpu": cpu, "auto": resolved, "runs": []}
    with tempfile.TemporaryDirectory(prefix="lungct-reproduction-") as tmp:
        repo = clone(args.rev, Path(tmp))
        committed = yaml.safe_load((repo / "params.yaml").read_text())
        for seed in seeds:
            for precision in precisions:
                actual = resolved if precision == "auto" else precision
                twin = next(
                    (
                        p
                        for p in precisions
                        if (p, seed) in runs and (resolved if p == "auto" else p) == actual
                    ),
                    None,
                )
                if twin is not None:  # auto is that same training on this CPU
                    runs[(precision, seed)] = {**runs[(twin, seed)], "time": f"= {twin}"}
                    print(f"seed {seed}, {precision}: the same training as {twin}", flush=True)
                    continue
                params = configure(
                    repo, [*args.set, f"base.seed={seed}", f"train.precision={precision}"]
                )
                seconds, stages = dvc(repo, "repro", "evaluate")
                row = {**run_figures(repo), "time": minutes(seconds)}
                runs[(precision, seed)] = row
                entry = {"seed": seed, "precision": precision, "stages": stages, **row}
                print(
                    f"seed {seed}, {precision}: {minutes(seconds)}, ran {', '.join(stages)}",
                    flush=True,
                )
                if params == committed:
                    entry["changed_from_commit"] = changed_from_commit(repo)
                    changed = entry["changed_from_commit"]
                    print(
                        "  the committed params: dvc.lock outputs that differ from the "
                        f"commit's: {changed['outputs'] or 'none'}; tracked files that "
                        f"differ: {changed['files'] or 'none'}",
                        flush=True,
                    )
                if not args.no_twice and "twice" not in report:
                    first = outputs(repo)
                    again, reran = dvc(repo, "repro", "-f", "-s", "train")
                    seconds, evaluated = dvc(repo, "repro", "-f", "-s", "evaluate")
                    again, reran = again + seconds, reran + evaluated
                    second = outputs(repo)
                    same = {name: first[name] == second[name] for name in TWICE_FILES}
                    report["twice"] = {
                        "seed": seed,
                        "precision": precision,
                        "model_sha256": [first[TWICE_FILES[0]], second[TWICE_FILES[0]]],
                        "identical": same,
                        "stages": reran,
                        "seconds": again,
                    }
                    print(
                        f"  again, ran {', '.join(reran)} ({minutes(again)}): "
                        + ", ".join(
                            f"{n} {'identical' if s else 'DIFFERENT'}" for n, s in same.items()
                        ),
                        flush=True,
                    )
                report["runs"].append(entry)
    found = spreads(runs)
    report["spreads"] = found
    print()
    print("\n".join(runs_table(runs, resolved)))
    print()
    print("\n".join(spreads_table(found)))
    if "twice" in report:
        twice = report["twice"]
        verdict = "bit for bit" if all(twice["identical"].values()) else "NOT bit for bit"
        print(
            f"\ntwice ({twice['precision']}, seed {twice['seed']}): {verdict}; "
            f"model.keras sha256 {twice['model_sha256'][0][:16]}... and "
            f"{twice['model_sha256'][1][:16]}..."
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
