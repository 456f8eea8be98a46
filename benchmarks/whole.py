"""The whole pipeline and the test suite at two revisions, timed in one sitting: the
default ``dvc repro`` from a fresh clone, and the test suite, at two revisions of this
repository.

Run from the repository root::

    python -m benchmarks.whole [--before a071c1a] [--after HEAD] [--rounds 1]
                               [--no-tests] [--no-repro] [--set KEY=VALUE ...]

Each revision is cloned (``git clone`` of this repository, then ``git checkout REV``)
into a temporary folder, so what is measured is what a user gets from a fresh clone:
no data, no DVC cache, no ``__pycache__``. In each round, for each revision (their order
turns from round to round, so both see the same moments of a shared machine's load):

* ``dvc repro`` in a new clone: wall time, each stage's wall time (a ``python`` first on
  PATH that times the commands of ``dvc.yaml``), and whether the clone's ``dvc.lock``
  and metrics came out as committed (``git status --porcelain``); ``--set`` changes the
  after revision's params first (the same recipe as before, say);
* the test suite in another new clone, with the revision's own ``pytest`` options
  (``pyproject.toml``: serial before ``pytest-xdist``, ``-n auto`` after): wall time and
  the counts of its summary line.

Both revisions run with this interpreter and its packages (what ``requirements.lock``
installs), not with each revision's own pins. The default ``--before`` is the five-stage
pipeline before the training speed-up (no cv or export stage, Keras' batch norm).
Figures: docs/benchmarks.md (Pipeline and test suite).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.host import machine

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "a071c1a"  # the five-stage pipeline, before the training speed-up
SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?)")


# A ``python`` first on PATH for ``dvc repro`` (dvc.yaml says ``python -m stages.<name>``):
# it runs this interpreter and logs each command's start and end, so the stages are timed
# inside the one ``dvc repro`` that runs them.
TIMING_SHIM = """#!/bin/sh
start=$(date +%s.%N)
"{python}" "$@"
status=$?
echo "$* $start $(date +%s.%N)" >> "{log}"
exit $status
"""


def environment(shim: Path | None = None) -> dict[str, str]:
    """This interpreter (or ``shim``, a folder holding the timing ``python``) first on
    PATH; no DVC analytics."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", TF_CPP_MIN_LOG_LEVEL="2")
    first = shim if shim is not None else Path(sys.executable).parent
    env["PATH"] = (
        f"{first}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    )
    env.pop("PYTHONPATH", None)
    return env


def timing_shim(folder: Path) -> tuple[Path, Path]:
    """A folder with the timing ``python`` and the log it appends to."""
    folder.mkdir()
    log = folder / "times.log"
    script = folder / "python"
    script.write_text(TIMING_SHIM.format(python=sys.executable, log=log))
    script.chmod(0o755)
    return folder, log


def stage_times(log: Path) -> dict[str, float]:
    """Seconds per stage from the shim's log (``-m stages.<name> <start> <end>``)."""
    times: dict[str, float] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        found = re.search(r"-m stages\.(\w+)\b.* ([\d.]+) ([\d.]+)$", line)
        if found:
            name, start, end = found.group(1), float(found.group(2)), float(found.group(3))
            times[name] = times.get(name, 0.0) + end - start
    return times


def clone(rev: str, parent: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix=f"{rev[:12]}-", dir=parent))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    subprocess.run(
        ["git", "-c", "advice.detachedHead=false", "checkout", "-q", rev], cwd=target, check=True
    )
    return target


def timed(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env or environment(), capture_output=True, text=True)
    return time.perf_counter() - start, result


def set_params(repo: Path, settings: list[str]) -> None:
    """``key.sub=value`` (a YAML value) over the clone's params.yaml."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for setting in settings:
        key, _, value = setting.partition("=")
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        if last not in node:
            sys.exit(f"--set {setting}: no key {key} in params.yaml")
        node[last] = yaml.safe_load(value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def repro(rev: str, parent: Path, settings: list[str] = ()) -> dict:
    repo = clone(rev, parent)
    set_params(repo, list(settings))
    shim, log = timing_shim(Path(tempfile.mkdtemp(dir=parent)) / "shim")
    seconds, result = timed([sys.executable, "-m", "dvc", "repro"], repo, environment(shim))
    output = result.stdout + result.stderr
    changed = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True
    ).stdout.split("\n")
    return {
        "seconds": seconds,
        "ok": result.returncode == 0,
        "stages": re.findall(r"Running stage '(\w+)'", output),
        "stage_seconds": stage_times(log),
        "changed": [line[3:] for line in changed if line.strip() and line[3:] != "params.yaml"],
        "tail": output[-1500:] if result.returncode else "",
    }


def tests(rev: str, parent: Path) -> dict:
    repo = clone(rev, parent)
    seconds, result = timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], repo)
    last = (result.stdout.strip().splitlines() or [""])[-1]
    counts = {kind.rstrip("s"): int(n) for n, kind in SUMMARY.findall(last)}
    return {"seconds": seconds, "ok": result.returncode == 0, "counts": counts, "summary": last}


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-tests", action="store_true")
    parser.add_argument("--no-repro", action="store_true")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params.yaml value for the after revision's dvc repro (repeatable)",
    )
    args = parser.parse_args(argv)
    revs = {}
    for name in (args.before, args.after):
        found = subprocess.run(
            ["git", "rev-parse", "--short=12", f"{name}^{{commit}}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if found.returncode:
            sys.exit(f"{name}: not a commit of this repository")
        revs[name] = found.stdout.strip()
    print(f"# {machine()}")
    print(f"# before {args.before} ({revs[args.before]}), after {args.after} ({revs[args.after]})")
    kinds = [k for k, off in (("repro", args.no_repro), ("tests", args.no_tests)) if not off]
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="lungct-whole-") as tmp:
        for r in range(args.rounds):
            order = [args.before, args.after] if r % 2 == 0 else [args.after, args.before]
            for kind in kinds:
                for name in order:
                    if kind == "repro":
                        settings = args.set if name == args.after else []
                        run = repro(revs[name], Path(tmp), settings)
                    else:
                        run = tests(revs[name], Path(tmp))
                    results.setdefault((kind, name), []).append(run)
                    detail = (
                        ", ".join(f"{k} {v:.1f} s" for k, v in run["stage_seconds"].items())
                        + f"; changed {run['changed'] or 'nothing'}"
                        if kind == "repro"
                        else run["summary"]
                    )
                    status = "" if run["ok"] else " FAILED"
                    print(
                        f"round {r + 1} {kind} {name}: {minutes(run['seconds'])}{status}; {detail}"
                    )
                    if run.get("tail"):
                        print(run["tail"])
    print()
    print("| what | before | after | after / before |")
    print("|---|---|---|---|")
    for kind in kinds:
        before = statistics.median(run["seconds"] for run in results[(kind, args.before)])
        after = statistics.median(run["seconds"] for run in results[(kind, args.after)])
        label = "default `dvc repro`, fresh clone" if kind == "repro" else "test suite"
        if kind == "tests":
            count = {n: results[(kind, n)][-1]["counts"].get("passed", 0) for n in revs}
            label += f" ({count[args.before]} -> {count[args.after]} tests passed)"
        print(f"| {label} | {minutes(before)} | {minutes(after)} | {after / before:.2f} |")
        if kind == "repro":
            names = list(
                dict.fromkeys(
                    name
                    for rev in (args.before, args.after)
                    for run in results[(kind, rev)]
                    for name in run["stage_seconds"]
                )
            )
            for name in names:
                before_s, after_s = (
                    statistics.median(
                        run["stage_seconds"].get(name, 0.0) for run in results[(kind, rev)]
                    )
                    for rev in (args.before, args.after)
                )
                ratio = f"{after_s / before_s:.2f}" if before_s else "(new)"
                print(f"| stage {name} | {before_s:.1f} s | {after_s:.1f} s | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
