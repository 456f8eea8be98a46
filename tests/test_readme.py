"""The commands of the README and of docs/params.md, run as written.

Every command line of a document's code blocks is in its table (``COMMANDS`` for the
README, ``PARAMS_COMMANDS`` for docs/params.md): either run here, in document order, in a
copy of the tiny project (a few with a substitution the table names), or skipped with the
reason and the test that covers it instead. A command missing from its table fails the
first test, so the documents cannot drift from what runs. Lines
of the form ``$ command`` are transcripts: the lines after them are what the command
prints, and the test checks that it does.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.dvc_project import (
    command_env,
    copy_project,
    dvc_json,
    dvc_project,
    git,
    ran_stages,
)

README = ROOT / "README.md"
PARAMS_DOC = ROOT / "docs/params.md"

RUN = "run"
SERVE = "serve"  # started in the background, stopped after the next command
COVERED = "skip"  # COMMANDS value: (COVERED, why and where it is tested)

TEST_SPLIT_VIEW = (
    "dvc exp show --only-changed --drop 'Created|(data|models|lungct|stages)/|"
    "metrics/(split|train|cv)|(metrics/eval.json:)?(accuracy|ci_|loss|macro_f1|leaky)'"
)
CV_VIEW = (
    "dvc exp show --only-changed --sort-by metrics/cv.json:balanced_accuracy --sort-order desc"
    " --drop 'Created|(data|models|lungct|stages)/|metrics/(split|train|eval)|accuracy|ci_|ece|"
    "leaky|roc_auc|(metrics/cv.json:)?(loss|macro_f1)'"
)
BRANCH_EDIT = "# edit params.yaml: train.filters: [32, 64, 128, 256]"

COMMANDS: dict[str, str | tuple[str, str]] = {
    # Quick start
    "python3.11 -m venv .venv && . .venv/bin/activate && pip install -r requirements.lock"
    " && dvc repro": (
        COVERED,
        ".ci/run installs requirements.lock in a fresh venv; tests/dvc_project.py runs"
        " `dvc repro` on every stage",
    ),
    "pytest": (COVERED, "the suite itself"),
    # The pipeline's diagram
    "download -> convert -> split -> cv -> train -> evaluate": (COVERED, "a diagram"),
    "                                          \\-> export": (COVERED, "a diagram"),
    "dvc metrics show": RUN,
    "dvc plots show": RUN,
    "python -m stages.predict data/raw/PHANTOM-0001": RUN,
    "streamlit run app.py": (COVERED, "tests/test_app.py starts it with .streamlit/config.toml"),
    # Real data: the internet, or a dataset kept outside the repository
    "dvc exp run -S data.source=kaggle -S data.kaggle_handle=mohamedhanyyy/chest-ctscan-images": (
        COVERED,
        "needs the internet; tests/test_download.py serves Kaggle's API on loopback",
    ),
    "dvc exp run -S data.source=path -S data.path=path/to/chest-ctscan-images.zip": (
        COVERED,
        "a user's copy; tests/test_folders_layout.py and tests/test_download.py",
    ),
    "dvc exp run -S data.source=path -S data.path=path/to/LIDC-IDRI": (
        COVERED,
        "a user's copy; tests/test_annotated.py runs the phantom's LIDC-IDRI form",
    ),
    # Experiments
    "dvc exp run -S train.lr=0.0003 -S train.epochs=20": RUN,
    TEST_SPLIT_VIEW: RUN,
    "git checkout -b wider": RUN,
    BRANCH_EDIT: RUN,
    'dvc repro && git add -A && git commit -m "wider CNN"': RUN,
    "dvc metrics diff main": RUN,
    "dvc params diff main": RUN,
    "dvc plots diff main": RUN,
    "dvc exp run -S split.folds=5": RUN,
    "dvc exp run -S split.folds=5 -S train.ensemble=true": RUN,
    CV_VIEW: RUN,
    # Predict and deploy
    "python -m stages.predict PATH [PATH ...] [--format table|csv|json] [--output FILE]": (
        COVERED,
        "a synopsis; tests/test_predict.py runs every format",
    ),
    "python -m stages.serve --port 8000": SERVE,
    "curl -F files=@slice.dcm -F files=@series.zip http://127.0.0.1:8000/predict": RUN,
    'docker build -t lungct-serve . && docker run -p 8000:8000 -v "$PWD/models:/app/models:ro"'
    " lungct-serve": (COVERED, "no Docker here; tests/test_deploy.py checks the image's recipe"),
    # Development
    'pytest -m "not e2e"': (COVERED, "the suite itself"),
    "pytest -n 0 tests/test_cv.py": (COVERED, "the suite itself"),
    "ruff check . && ruff format --check .": (COVERED, ".ci/run runs ruff check"),
}

# docs/params.md, "Errors": a misspelled key, one added with DVC's `+`, and the way back.
PARAMS_COMMANDS: dict[str, str | tuple[str, str]] = {
    "dvc exp run -S train.lrr=0.1": RUN,
    "dvc exp run -S +train.lrr=0.1": RUN,
    "git checkout params.yaml && dvc exp run": RUN,
}
DOCUMENTS = {"README.md": (README, COMMANDS), "docs/params.md": (PARAMS_DOC, PARAMS_COMMANDS)}

# The tiny project has 9 patients: two folds, not five.
TINY_SUBSTITUTIONS = {"split.folds=5": "split.folds=2"}


@dataclass(frozen=True)
class Line:
    command: str
    expected: tuple[str, ...] = ()  # what a `$ ` transcript says the command prints


def command_lines(text: str) -> list[Line]:
    """The command lines of a Markdown document's indented code blocks, in order: comments dropped
    (but an instruction such as ``# edit params.yaml: ...`` on a line of its own is kept),
    and each ``$ `` transcript with the output lines that follow it in its block."""
    result: list[Line] = []
    in_block = False
    transcript = False
    previous_blank = True
    for raw in text.splitlines():
        if raw.startswith("    ") and (in_block or previous_blank):
            in_block = True
            line = raw[4:].rstrip()
            if line.startswith("$ "):
                result.append(Line(line[2:]))
                transcript = True
            elif transcript:
                last = result[-1]
                result[-1] = Line(last.command, (*last.expected, line.strip()))
            elif line.startswith("# edit "):
                result.append(Line(line))
            elif not line.startswith("#"):
                result.append(Line(re.sub(r"\s+#\s.*$", "", line)))
        else:
            in_block = transcript = False
        previous_blank = raw.strip() == ""
    return result


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_command_is_run_or_covered(document: str):
    path, table = DOCUMENTS[document]
    commands = [line.command for line in command_lines(path.read_text())]
    assert commands, f"no code blocks found in {document}"
    unknown = [c for c in commands if c not in table]
    assert not unknown, (
        f"{document} commands this test neither runs nor names a cover for: {unknown}"
    )
    stale = sorted(set(table) - set(commands))
    assert not stale, f"the table lists commands {document} no longer has: {stale}"


def _shown(expected: list[str], printed: list[str]) -> bool:
    """``printed`` is ``expected``, where a line ``...`` stands for any lines."""
    if not expected:
        return not printed
    if expected[0] == "...":
        return any(_shown(expected[1:], printed[i:]) for i in range(len(printed) + 1))
    return bool(printed) and printed[0] == expected[0] and _shown(expected[1:], printed[1:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _fits(output: str, width: int = 120) -> None:
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= width, output
    assert "…" not in output, output  # no column squeezed to an ellipsis


def _wait_for(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[1]
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer")


def _curl_fixtures(repo: Path) -> None:
    """The two files the README's curl sends: one DICOM slice and a zipped series."""
    series = sorted(p for p in (repo / "data/raw/PHANTOM-0001").iterdir() if p.is_dir())[0]
    slices = sorted(series.iterdir())
    (repo / "slice.dcm").write_bytes(slices[0].read_bytes())
    with zipfile.ZipFile(repo / "series.zip", "w") as archive:
        for path in slices:
            archive.write(path, f"{series.name}/{path.name}")


@pytest.mark.e2e
@pytest.mark.parametrize("document", DOCUMENTS)
def test_commands_run_as_written(document: str, tmp_path: Path):
    path, table = DOCUMENTS[document]
    repo = copy_project(dvc_project(), tmp_path / "project")
    env = command_env({"COLUMNS": "120"})
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell has
    port = _free_port()
    server: subprocess.Popen | None = None
    ran: list[str] = []
    try:
        for line in command_lines(path.read_text()):
            action = table[line.command]
            if isinstance(action, tuple):
                continue
            command = line.command
            for old, new in TINY_SUBSTITUTIONS.items():
                command = command.replace(old, new)
            command = command.replace("8000", str(port))
            ran.append(line.command)
            if command == BRANCH_EDIT:
                params = yaml.safe_load((repo / "params.yaml").read_text())
                params["train"]["filters"] = [32, 64, 128, 256]
                (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                continue
            if action == SERVE:
                _curl_fixtures(repo)
                server = subprocess.Popen(
                    ["bash", "-c", f"exec {command}"],
                    cwd=repo,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                _wait_for(f"http://127.0.0.1:{port}/health", server)
                continue
            result = _shell(command, repo, env)
            output = result.stdout + result.stderr
            if line.expected:  # a transcript: it fails, and says what the README says
                assert result.returncode != 0, output
                printed = [text.strip() for text in output.splitlines() if text.strip()]
                expected = [text for text in line.expected if text]
                assert _shown(expected, printed), (
                    f"{document} shows {expected}, the command printed {printed}"
                )
                CHECKS.get(line.command, lambda *_: None)(repo, result.stdout)
                continue
            assert result.returncode == 0, f"{command}\n{output}"
            CHECKS.get(line.command, lambda *_: None)(repo, result.stdout)
            if server is not None and command.startswith("curl"):
                server.terminate()
                server.wait(timeout=30)
                server = None
    finally:
        if server is not None:
            server.kill()
            server.wait()
    assert ran, "nothing ran"


def _metrics_show(repo: Path, out: str) -> None:
    _fits(out)
    rows = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    assert rows == ["metrics/cv.json", "metrics/eval.json"], out


def _predict(repo: Path, out: str) -> None:
    assert "PHANTOM-0001" in out and "malignant" in out, out


def _columns(out: str) -> list[str]:
    return out.splitlines()[1].split()


def _experiment(repo: Path, out: str) -> None:
    """A `train.*` change reruns only the stages that read it."""
    assert ran_stages(out) == ["cv", "train", "evaluate", "export"], out


def _test_split_view(repo: Path, out: str) -> None:
    """The changed params, and of the metrics only the three the view keeps (each shown
    where its values differ between the rows)."""
    _fits(out)
    columns = _columns(out)
    assert {"train.lr", "train.epochs"} <= set(columns), out
    metrics = [c for c in columns[1:] if "." not in c]
    assert metrics and set(metrics) <= {"balanced_accuracy", "ece", "roc_auc"}, out


def _branch_committed(repo: Path, out: str) -> None:
    """`git add -A` took what the README says it takes, and nothing else."""
    assert git("status", "--porcelain", cwd=repo) == ""
    files = git("show", "--name-only", "--format=", "HEAD", cwd=repo).split()
    assert {"params.yaml", "dvc.lock", "metrics/eval.json"} <= set(files), files
    assert all(f in ("params.yaml", "dvc.lock") or f.startswith("metrics/") for f in files), files


def _metrics_diff(repo: Path, out: str) -> None:
    diff = dvc_json("metrics", "diff", "main", cwd=repo)
    assert set(diff) == {"metrics/eval.json"}  # the one declared metrics file that changed
    details = dvc_json("metrics", "diff", "main", "--targets", "metrics/train.json", cwd=repo)
    assert details["metrics/train.json"]["epochs"]["old"] == 1


def _params_diff(repo: Path, out: str) -> None:
    changed = dvc_json("params", "diff", "main", cwd=repo)["params.yaml"]
    assert yaml.safe_load(str(changed["train.filters"]["new"])) == [32, 64, 128, 256]
    assert float(changed["train.lr"]["new"]) == 0.0003


def _plots_diff(repo: Path, out: str) -> None:
    assert (repo / "dvc_plots/index.html").is_file()
    assert git("status", "--porcelain", cwd=repo) == "", "dvc_plots/ is not ignored"
    plots = dvc_json("plots", "diff", "main", "--split", cwd=repo)["data"]
    for plot in ("loss", "accuracy", "confusion", "confusion_normalized"):
        assert plot in plots, sorted(plots)
    assert plots["loss"][0]["revisions"] == ["workspace", "main"]


def _folds(repo: Path, out: str) -> None:
    cv = dvc_json("metrics", "show", cwd=repo)[""]["data"]["metrics/cv.json"]["data"]
    assert set(cv) == {"balanced_accuracy", "macro_f1", "loss"}


def _ensemble(repo: Path, out: str) -> None:
    """The switch refits nothing: the cv stage does not read it."""
    assert ran_stages(out) == ["train", "evaluate", "export"], out
    assert json.loads((repo / "metrics/train.json").read_text())["members"] == 2


def _cv_view(repo: Path, out: str) -> None:
    _fits(out)
    columns = _columns(out)
    assert {"metrics/cv.json:balanced_accuracy", "split.folds", "train.ensemble"} <= set(columns), (
        out
    )
    assert all(c.startswith(("metrics/cv.json:", "split.", "train.")) for c in columns[1:]), out


def _key_added(repo: Path, out: str) -> None:
    """What docs/params.md says: the key stays, and the stopped stage's model is gone."""
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lrr"] == 0.1
    assert not (repo / "models/model.keras").exists()


def _recovered(repo: Path, out: str) -> None:
    assert "lrr" not in yaml.safe_load((repo / "params.yaml").read_text())["train"]
    assert (repo / "models/model.keras").is_file()
    assert dvc_json("status", cwd=repo) == {}


def _curl(repo: Path, out: str) -> None:
    answer = json.loads(out)
    assert {row["file"] for row in answer["predictions"]} >= {"slice.dcm"}, out


CHECKS = {
    "dvc metrics show": _metrics_show,
    "python -m stages.predict data/raw/PHANTOM-0001": _predict,
    "dvc exp run -S train.lr=0.0003 -S train.epochs=20": _experiment,
    TEST_SPLIT_VIEW: _test_split_view,
    'dvc repro && git add -A && git commit -m "wider CNN"': _branch_committed,
    "dvc metrics diff main": _metrics_diff,
    "dvc params diff main": _params_diff,
    "dvc plots diff main": _plots_diff,
    "dvc exp run -S split.folds=5": _folds,
    "dvc exp run -S split.folds=5 -S train.ensemble=true": _ensemble,
    CV_VIEW: _cv_view,
    "dvc exp run -S +train.lrr=0.1": _key_added,
    "git checkout params.yaml && dvc exp run": _recovered,
    "curl -F files=@slice.dcm -F files=@series.zip http://127.0.0.1:8000/predict": _curl,
}
