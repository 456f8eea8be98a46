"""Scale: a real S3 API as the DVC remote, and queued experiments in parallel workers.

The S3 remote is DVC's own (``dvc-s3``) talking to moto's S3 server on 127.0.0.1: the
same HTTP API, signatures and error paths as AWS, no network. Credentials come from the
environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, given to each ``dvc``
call that needs them) or from ``.dvc/config.local``; never from a file git tracks.

Each test works on its own copy of the tiny project (``tests/dvc_project.py``) with its
cache, so that it has something to push and leaves the shared copy alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from tests.dvc_project import (
    command_env,
    copy_project,
    dvc,
    dvc_json,
    dvc_project,
    git,
    lock_outs,
    ran_stages,
)

pytestmark = pytest.mark.e2e

# Unique per session, so a grep that finds them has found a leak and nothing else.
ACCESS_KEY_ID = f"AKIALUNGCT{uuid.uuid4().hex[:10].upper()}"
SECRET_KEY = f"lungct-test-secret-{uuid.uuid4().hex}"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
REGION = "us-east-1"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the tiny project, cache included; no remote (another test may have added
    one to the shared copy), no DVC scratch state."""
    return copy_project(dvc_project(), tmp_path / "project")


class S3:
    """moto's S3 server on 127.0.0.1 with one empty bucket."""

    def __init__(self, endpoint: str, bucket: str):
        import boto3

        self.endpoint = endpoint
        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_KEY,
        )
        self.client.create_bucket(Bucket=bucket)

    def objects(self) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("dvc_s3")
    # Nothing from this machine's AWS setup (profiles, keys, ~/.aws), no instance
    # metadata lookups, no proxy between DVC and 127.0.0.1.
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        # moto keeps its state per process, so every test gets its own bucket.
        yield S3(f"http://{host}:{port}", f"lungct-{uuid.uuid4().hex[:12]}")
    finally:
        server.stop()


def add_s3_remote(repo: Path, s3: S3) -> None:
    """The remote and its endpoint in .dvc/config, committed: a clone gets both."""
    dvc("remote", "add", "-d", "store", f"s3://{s3.bucket}/lungct", cwd=repo)
    dvc("remote", "modify", "store", "endpointurl", s3.endpoint, cwd=repo)
    git("add", ".dvc/config", cwd=repo)
    git("commit", "-q", "-m", "S3 remote", cwd=repo)


def cloud_status(repo: Path) -> dict:
    """`dvc status --cloud`: {} when the remote has everything the workspace uses."""
    return json.loads(
        dvc("status", "--cloud", "--json", cwd=repo, stdout_only=True, env=CREDENTIALS)
    )


def files_pushed(output: str) -> int:
    match = re.search(r"(\d+) files? pushed", output)
    assert match, output
    return int(match.group(1))


def assert_no_credentials(repo: Path) -> None:
    """Neither key in any file (but .dvc/config.local) nor anywhere in git's history."""
    log = git("log", "-p", "--all", cwd=repo)
    for secret in (SECRET_KEY, ACCESS_KEY_ID):
        assert secret not in log, f"credential in the git history of {repo}"
    if (repo / ".dvc").is_dir():
        config = (repo / ".dvc/config").read_text()
        assert "endpointurl" in config and SECRET_KEY not in config
        for path in repo.rglob("*"):
            relative = path.relative_to(repo)
            if relative == Path(".dvc/config.local") or relative.parts[0] == ".git":
                continue
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                for secret in (SECRET_KEY, ACCESS_KEY_ID):
                    assert secret.encode() not in data, f"credential in {relative}"


@pytest.mark.slow
def test_s3_remote_round_trip_and_experiments(tmp_path: Path, project: Path, s3: S3):
    add_s3_remote(project, s3)
    origin = tmp_path / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin), cwd=tmp_path)
    git("remote", "add", "origin", str(origin), cwd=project)
    git("push", "-q", "origin", "main", cwd=project)

    # Credentials from the environment.
    pushed = files_pushed(dvc("push", cwd=project, env=CREDENTIALS))
    assert pushed == len(s3.objects()) > 0
    assert all(key.startswith("lungct/files/md5/") for key in s3.objects())

    # A fresh clone; credentials in .dvc/config.local (git-ignored), not the environment.
    clone = tmp_path / "clone"
    git("clone", "-q", str(origin), str(clone), cwd=tmp_path)
    dvc("remote", "modify", "--local", "store", "access_key_id", ACCESS_KEY_ID, cwd=clone)
    dvc("remote", "modify", "--local", "store", "secret_access_key", SECRET_KEY, cwd=clone)
    assert SECRET_KEY in (clone / ".dvc/config.local").read_text()
    git("check-ignore", "-q", ".dvc/config.local", cwd=clone)
    dvc("pull", cwd=clone)
    assert dvc_json("status", cwd=clone) == {}
    assert ran_stages(dvc("repro", cwd=clone)) == []
    assert lock_outs(clone) == lock_outs(project)

    # An experiment: its git ref to origin, its data and model to the S3 remote.
    baseline = lock_outs(project)
    output = dvc("exp", "run", "-n", "lr-high", "-S", "train.lr=0.01", cwd=project)
    assert ran_stages(output) == ["cv", "train", "evaluate", "export"], output
    experiment = lock_outs(project)
    assert experiment["models/model.keras"] != baseline["models/model.keras"]
    dvc("exp", "push", "origin", "lr-high", cwd=project, env=CREDENTIALS)
    assert "lr-high" in git("ls-remote", "origin", "refs/exps/*", cwd=project)

    dvc("exp", "pull", "origin", "lr-high", cwd=clone)
    assert "lr-high" in dvc("exp", "list", cwd=clone)
    dvc("exp", "apply", "lr-high", cwd=clone)
    # The experiment's model came from the remote: it was in no cache of the clone before.
    assert dvc_json("status", cwd=clone) == {}
    assert lock_outs(clone) == experiment
    assert yaml.safe_load((clone / "params.yaml").read_text())["train"]["lr"] == 0.01

    for repo in (project, clone, origin):
        assert_no_credentials(repo)


def test_model_artifacts_come_from_the_remote_by_name(tmp_path: Path, project: Path, s3: S3):
    """dvc.yaml's `artifacts:` name the models: `dvc artifacts get <repo> <name>` finds a
    registered version (an annotated tag <name>@v<semver>) in a git repository and fetches
    the files from its DVC remote, without knowing their paths."""
    declared = yaml.safe_load((project / "dvc.yaml").read_text())["artifacts"]
    assert {name: item["type"] for name, item in declared.items()} == {
        "classifier": "model",
        "classifier-onnx": "model",
        "classifier-savedmodel": "model",
    }
    add_s3_remote(project, s3)
    for name in declared:
        git("tag", "-a", f"{name}@v1.0.0", "-m", f"{name} v1.0.0", cwd=project)
    origin = tmp_path / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin), cwd=tmp_path)
    git("push", "-q", "--follow-tags", str(origin), "main", cwd=project)
    dvc("push", cwd=project, env=CREDENTIALS)
    shutil.rmtree(project / ".dvc/cache")  # what is fetched can only come from S3

    fetched = tmp_path / "fetched"
    fetched.mkdir()
    for name in declared:
        dvc("artifacts", "get", str(origin), name, "-o", name, cwd=fetched, env=CREDENTIALS)
    assert (fetched / "classifier").read_bytes() == (project / "models/model.keras").read_bytes()
    for name, folder in (("classifier-onnx", "onnx"), ("classifier-savedmodel", "savedmodel")):
        source = project / "models/export" / folder
        files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
        assert "labels.json" in {str(f) for f in files}
        assert (
            sorted(
                p.relative_to(fetched / name) for p in (fetched / name).rglob("*") if p.is_file()
            )
            == files
        )
        for relative in files:
            assert (fetched / name / relative).read_bytes() == (source / relative).read_bytes()


@pytest.mark.slow
def test_interrupted_s3_push_resumes(
    tmp_path: Path, project: Path, s3: S3, monkeypatch: pytest.MonkeyPatch
):
    from moto.s3.models import S3Backend

    add_s3_remote(project, s3)
    kill_after = 3  # objects stored before `dvc push` is SIGKILLed
    lock = threading.Lock()
    state = {"stored": 0, "push": None, "refusing": False, "last_refusal": 0.0}
    put_object = S3Backend.put_object

    def killing_put_object(self, *args, **kwargs):
        # Runs in the server's request threads: the object is stored, then the
        # client dies before its response. Requests it sent before dying may still be
        # read by the server afterwards; they fail until the test says otherwise.
        with lock:
            if state["refusing"]:
                state["last_refusal"] = time.monotonic()
                raise RuntimeError("dvc push was killed")
            key = put_object(self, *args, **kwargs)
            state["stored"] += 1
            if state["push"] is not None and state["stored"] == kill_after:
                state["refusing"] = True
                state["push"].send_signal(signal.SIGKILL)
            return key

    monkeypatch.setattr(S3Backend, "put_object", killing_put_object)
    with lock:
        state["push"] = subprocess.Popen(
            [sys.executable, "-m", "dvc", "push"],
            cwd=project,
            env=command_env(CREDENTIALS),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    output, _ = state["push"].communicate(timeout=300)
    assert state["push"].returncode == -signal.SIGKILL, output
    # Drain: the dead client's last requests are refused until none has come for 1 s.
    while True:
        with lock:
            quiet = time.monotonic() - state["last_refusal"]
            if quiet > 1.0:
                state["push"], state["refusing"] = None, False
                break
        time.sleep(0.2)
    landed = s3.objects()
    assert len(landed) == kill_after, landed
    assert cloud_status(project) != {}

    output = dvc("push", cwd=project, env=CREDENTIALS)
    total = len(s3.objects())
    assert landed < s3.objects()
    assert files_pushed(output) == total - len(landed), output  # resumed, not restarted
    assert cloud_status(project) == {}

    clone = tmp_path / "clone"
    git("clone", "-q", str(project), str(clone), cwd=tmp_path)
    dvc("pull", cwd=clone, env=CREDENTIALS)
    assert dvc_json("status", cwd=clone) == {}
    assert ran_stages(dvc("repro", cwd=clone)) == []
    assert lock_outs(clone) == lock_outs(project)
    assert_no_credentials(project)
    assert_no_credentials(clone)


# Three learning rates, queued and run by two workers at once.
# Two experiments for two workers (-j 2): enough to run in parallel and to pick the best.
QUEUED = {"lr-slow": 0.0003, "lr-fast": 0.03}
QUEUE_TIMEOUT_S = 900


def processes_in(repo: Path) -> list[psutil.Process]:
    """Processes working in ``repo``: the queue's workers and the experiments they run
    (in temporary copies under .dvc/tmp/exps), all started by this test."""
    found = []
    for process in psutil.process_iter(["cwd"]):
        cwd = process.info.get("cwd")
        if process.pid != psutil.Process().pid and cwd and Path(cwd).is_relative_to(repo):
            found.append(process)
    return found


def queue_status(repo: Path) -> dict[str, str]:
    """Experiment name -> Queued | Running | Success | Failed, from `dvc queue status`."""
    statuses = {}
    for line in dvc("queue", "status", cwd=repo, stdout_only=True).splitlines():
        words = line.split()
        if len(words) >= 2 and words[1] in QUEUED:
            statuses[words[1]] = words[-1]
    return statuses


@pytest.fixture
def queue_project(project: Path):
    """The project copy; afterwards, no queue worker or experiment left running."""
    yield project
    dvc("queue", "stop", "--kill", cwd=project, check=False)
    leftovers = processes_in(project)
    _, alive = psutil.wait_procs(leftovers, timeout=30)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.mark.slow
def test_queued_experiments_run_in_parallel(queue_project: Path):
    repo = queue_project
    for name, lr in QUEUED.items():
        dvc("exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}", cwd=repo)
    assert set(queue_status(repo).values()) == {"Queued"}

    # Output to a file, not a pipe: the workers `dvc queue start` leaves behind keep its
    # stdout open, so reading a pipe to its end waits for the whole queue.
    with open(repo.parent / "queue-start.log", "w") as log:
        started = subprocess.run(
            [sys.executable, "-m", "dvc", "queue", "start", "-j", "2"],
            cwd=repo,
            env=command_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    assert started.returncode == 0, (repo.parent / "queue-start.log").read_text()
    assert processes_in(repo), "no queue worker found (the leftover check below would be blind)"
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    most_running = 0
    while True:
        statuses = queue_status(repo)
        most_running = max(most_running, list(statuses.values()).count("Running"))
        if statuses.keys() == QUEUED.keys() and not {"Queued", "Running"} & set(statuses.values()):
            break
        assert time.monotonic() < deadline, f"queue not done in {QUEUE_TIMEOUT_S} s: {statuses}"
        time.sleep(2)
    failed = [name for name, status in statuses.items() if status != "Success"]
    assert not failed, "\n".join(
        dvc("queue", "logs", name, cwd=repo, check=False) for name in failed
    )
    # Two at once is what -j 2 asks for, but on a loaded 2-core machine one worker may finish
    # before the other starts: seeing it is not a property of the code, so it is not asserted.
    assert most_running >= 1

    # The workers stop by themselves once the queue is empty.
    _, alive = psutil.wait_procs(processes_in(repo), timeout=60)
    assert not alive, [process.cmdline() for process in alive]

    results = {}
    for baseline in dvc_json("exp", "show", cwd=repo):
        for experiment in baseline.get("experiments") or []:
            data = experiment["revs"][0]["data"]
            metrics = data["metrics"]["metrics/eval.json"]["data"]
            lr = data["params"]["params.yaml"]["data"]["train"]["lr"]
            results[experiment["name"]] = (lr, metrics["balanced_accuracy"])
    assert {name: lr for name, (lr, _) in results.items()} == QUEUED
    # At this size (one epoch, nine patients) the scores often tie; ties go by name.
    best = max(results, key=lambda name: (results[name][1], name))

    dvc("exp", "apply", best, cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", f"experiment {best}", cwd=repo)
    assert git("status", "--porcelain", cwd=repo) == ""
    assert dvc_json("status", cwd=repo) == {}
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == QUEUED[best]
    applied = yaml.safe_load((repo / "metrics/eval.json").read_text())
    assert applied["balanced_accuracy"] == results[best][1]
