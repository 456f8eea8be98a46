"""``train.strategy: multi_worker``: the cluster of TF_CONFIG, and two workers on 127.0.0.1.

The slow tests start two ``python -m stages.train`` processes (the train stage's own entry
point), each in its own copy of one workspace, as two machines would be: they train
together, only the chief writes, two runs give the same bytes, and a worker killed half
way makes the chief fail with one line and leave nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lungct.errors import UserError
from lungct.model.distributed import (
    DEFAULT_PEER_TIMEOUT_S,
    is_chief,
    parse_cluster,
    peer_problem,
    peer_timeout,
    shard,
    step_batches,
)
from lungct.params import merge, parse_params
from stages.convert import convert
from stages.download import download
from stages.split import split
from tests.conftest import ROOT, TINY, project_params


def tf_config(workers: list[str], index: int, task_type: str = "worker", **extra) -> str:
    return json.dumps(
        {"cluster": {"worker": workers, **extra}, "task": {"type": task_type, "index": index}}
    )


TWO = ["127.0.0.1:2222", "127.0.0.1:2223"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "not set"),
        ("", "not set"),
        ("{cluster", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "cluster: missing"),
        (json.dumps({"cluster": {"ps": TWO}, "task": {}}), "job 'ps' is not a training job"),
        (json.dumps({"cluster": {"worker": []}}), "non-empty list"),
        (json.dumps({"cluster": {"worker": ["localhost"]}}), "is not host:port"),
        (json.dumps({"cluster": {"worker": ["h:99999"]}}), "is not host:port"),
        (json.dumps({"cluster": {"worker": [TWO[0], TWO[0]]}}), "listed twice"),
        (json.dumps({"cluster": {"worker": TWO, "chief": ["a:1", "b:1"]}}), "one task at most"),
        (json.dumps({"cluster": {"worker": TWO}}), "task: missing"),
        (tf_config(TWO, 0, "chief"), "task.type: 'chief' is not a job"),
        (tf_config(TWO, 2), "task.index: 2 is out of range"),
        (tf_config(TWO, -1), "out of range"),
        (tf_config(TWO, "1"), "task.index: '1' is not a whole number"),
        (tf_config(TWO, True), "not a whole number"),
        # hostile values: bounded before and while JSON is read, each address checked
        ("[" * 5000 + "]" * 5000, "not valid JSON (nested deeper than"),
        (tf_config(TWO, 0).replace('"index": 0', '"index": ' + "9" * 5000), "5000 digits"),
        ("[" + " " * 2**24 + "]", "bytes, over the"),
        (tf_config(TWO, 0).replace('"index": 0', '"index": ' + "9" * 4000), "is out of range"),
        (tf_config(TWO, 0).replace('"index": 0', '"index": 1e999'), "past the float range"),
        (
            json.dumps({"cluster": {"worker": ["127.0.0.1\x00:2222"]}}),
            "the host is not an IP address",
        ),
        (json.dumps({"cluster": {"worker": ["-bad-:2222"]}}), "the host is not an IP address"),
        (json.dumps({"cluster": {"worker": ["a b:2222"]}}), "the host is not an IP address"),
        (json.dumps({"cluster": {"worker": ["h:0"]}}), "is not host:port"),
        (json.dumps({"cluster": {"worker": ["h:" + "9" * 300]}}), "is not host:port"),
        (json.dumps({"cluster": {"worker": ["h:\u0661\u0662"]}}), "is not host:port"),
        (json.dumps({"cluster": {"worker": [{"a": [[1]]}]}}), "is not a host:port string"),
        (json.dumps({"cluster": {"worker": ["x" * 5000 + ":1"]}}), "the host is not"),
    ],
)
def test_a_bad_tf_config_is_one_line_naming_it(text, says):
    with pytest.raises(UserError) as err:
        parse_cluster(text)
    message = str(err.value)
    assert message.startswith("TF_CONFIG: ") and says in message
    assert "\n" not in message and "\x00" not in message and len(message) < 300


def test_hosts_of_a_cluster():
    from lungct.model.distributed import valid_host

    for good in ("10.200.0.1", "localhost", "node-1.example.org", "[::1]", "[fe80::1]"):
        assert valid_host(good), good
    for bad in ("", "a..b", "-a", "a-", "a_b", "[::1", "[10.0.0.1]", "x" * 64, "h\x00"):
        assert not valid_host(bad), bad
    cluster = parse_cluster(tf_config(["[::1]:2222", "node-1:2223"], 1))
    assert cluster.jobs["worker"] == ["[::1]:2222", "node-1:2223"]


def test_the_chief_is_the_chief_task_or_else_worker_0():
    assert is_chief({"TF_CONFIG": tf_config(TWO, 0)})
    assert not is_chief({"TF_CONFIG": tf_config(TWO, 1)})
    with_chief = {"chief": ["127.0.0.1:2221"]}
    assert is_chief({"TF_CONFIG": tf_config(TWO, 0, "chief", **with_chief)})
    assert not is_chief({"TF_CONFIG": tf_config(TWO, 0, **with_chief)})
    # ranks: the chief first, as TensorFlow numbers the replicas
    cluster = parse_cluster(tf_config(TWO, 1, **with_chief))
    assert (cluster.size, cluster.rank, cluster.is_chief) == (3, 2, False)
    with pytest.raises(UserError, match="TF_CONFIG: not set"):
        is_chief({})


def test_peer_timeout_from_the_environment():
    assert peer_timeout({}) == DEFAULT_PEER_TIMEOUT_S
    assert peer_timeout({"LUNGCT_PEER_TIMEOUT": "45"}) == 45
    assert peer_timeout({"LUNGCT_PEER_TIMEOUT": "2.5"}) == 2.5
    assert peer_timeout({"LUNGCT_PEER_TIMEOUT": "86400"}) == 86400
    hostile = ("9" * 30, "nan", "inf", "1e9", "86401", "0.5", "1" + "0" * 5000, "4\x00")
    for bad in ("0", "-3", "soon", *hostile):
        with pytest.raises(UserError, match="LUNGCT_PEER_TIMEOUT"):
            peer_timeout({"LUNGCT_PEER_TIMEOUT": bad})


def test_the_train_stage_checks_the_cluster_before_tensorflow(tmp_path):
    """A bad TF_CONFIG or LUNGCT_PEER_TIMEOUT stops the stage with one line, exit 2,
    before TensorFlow is imported (lungct.model.distributed.writes_outputs)."""
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            merge(merge(project_params(), TINY), {"train": {"strategy": "multi_worker"}})
        )
    )
    probe = (
        "import sys, runpy\n"
        "try:\n"
        "    runpy.run_module('stages.train', run_name='__main__')\n"
        "finally:\n"
        "    sys.stderr.write('tensorflow imported: %s\\n' % ('tensorflow' in sys.modules))\n"
    )
    bad = {
        "TF_CONFIG": ("[" * 5000 + "]" * 5000, {}),
        "LUNGCT_PEER_TIMEOUT": (tf_config(TWO, 0), {"LUNGCT_PEER_TIMEOUT": "9" * 30}),
    }
    for name, (config, extra) in bad.items():
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CONFIG": config, **extra}
        done = subprocess.run(
            [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        lines = done.stderr.splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        assert done.returncode == 2, done.stderr[-2000:]
        assert len(errors) == 1 and errors[0].startswith(f"error: {name}: "), done.stderr[-2000:]
        assert "Traceback" not in done.stderr and lines[-1] == "tensorflow imported: False"


def test_shards_and_steps_cover_every_image_once():
    items = list(range(33))
    shards = [shard(items, rank, 2) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == items and len(shards[0]) == 17
    # 17 and 16 images, 8 at a time: worker 1 sits out the third step
    assert step_batches(33, 2, 8) == [16, 16, 1]
    assert step_batches(36, 2, 8) == [16, 16, 4]
    assert step_batches(5, 1, 8) == [5]


def test_peer_problem_names_the_worker():
    cluster = parse_cluster(tf_config(TWO, 0))
    message = (
        "Graph execution error:\n\nDetected at node adam/CollectiveReduceV2 defined at:\n"
        '  File "x.py", line 1, in <module>\n\n'
        "Collective ops is aborted by: recvmsg:Connection reset by peer\n"
        "Additional GRPC error information from remote target "
        "/job:worker/replica:0/task:1 while calling /tensorflow.WorkerService/RecvBuf:\n"
    )
    assert peer_problem(message, cluster) == (
        "worker 1 (127.0.0.1:2223) stopped or cannot be reached: recvmsg:Connection reset by peer"
    )
    assert peer_problem("", None) == "a worker stopped or cannot be reached: no reason given"


def test_params_take_multi_worker(tiny_raw):
    raw = merge(tiny_raw, {"train": {"strategy": "multi_worker"}})
    assert parse_params(raw).train.strategy == "multi_worker"


# --- two workers on 127.0.0.1 -------------------------------------------------------

# A few dozen 32 x 32 images; 33 of them in train (three rows of the table dropped), so
# that the two shards differ (17 and 16) and worker 1 sits out the last step of each epoch.
CLUSTER_PARAMS = {
    "data": {"synthetic": {"patients": 30}},
    "train": {"epochs": 2, "strategy": "multi_worker"},
}
TRAIN_IMAGES = 33
OUTPUTS = ("models/model.keras", "models/labels.json", "metrics/train.json")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A project folder with data/splits (and what the split stage records), ready for
    the train stage."""
    base = tmp_path_factory.mktemp("multi-worker-base")
    raw = merge(merge(project_params(), TINY), CLUSTER_PARAMS)
    (base / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    cwd = Path.cwd()
    os.chdir(base)
    try:
        download(params)
        convert(params.convert)
        split(params)
    finally:
        os.chdir(cwd)
    table_file = base / "data/splits/splits.csv"
    table = pd.read_csv(table_file)
    train_rows = table.index[table["split"] == "train"]
    table.drop(train_rows[: len(train_rows) - TRAIN_IMAGES]).to_csv(table_file, index=False)
    return base


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def files_of(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def start_cluster(
    base: Path,
    run: Path,
    override: dict | None = None,
    timeout: int = 60,
    workers: tuple[str, ...] = ("chief", "worker"),
    addresses: list[str] | None = None,
    prefixes: tuple[list[str], ...] = ([], []),
    extra_env: dict[str, str] | None = None,
) -> list:
    """The train stages of a cluster of two, in copies of ``base`` (``run/chief``,
    ``run/worker``; ``workers``: those started); their processes, stderr going to
    ``run/<name>.err``. ``addresses``: the cluster's (two free ports on 127.0.0.1 unless
    given); ``prefixes``: each worker's command before ``python`` (``ip netns exec NS``);
    ``extra_env``: more environment variables (``{name}``: the worker's name)."""
    addresses = addresses or [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = []
    for index, name in enumerate(workers):
        folder = run / name
        shutil.copytree(base, folder)
        if override:
            raw = merge(yaml.safe_load((folder / "params.yaml").read_text()), override)
            (folder / "params.yaml").write_text(yaml.safe_dump(raw))
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TF_CONFIG": tf_config(addresses, index),
            "LUNGCT_PEER_TIMEOUT": str(timeout),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **{key: value.format(name=name) for key, value in (extra_env or {}).items()},
        }
        with open(run / f"{name}.err", "wb") as err:
            procs.append(
                subprocess.Popen(
                    [*prefixes[index], sys.executable, "-m", "stages.train"],
                    cwd=folder,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )
    return procs


def finish(procs: list, timeout: float = 120) -> list[int]:
    try:
        return [proc.wait(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_two_workers_train_together_and_only_the_chief_writes(workspace, tmp_path):
    import numpy as np

    from lungct.model.dataset import decode_images
    from lungct.model.saving import load_model
    from tests.test_two_hosts import ADDRESSES, TwoHosts, namespaces_unavailable

    # The second run on two hosts (two network namespaces joined by a veth pair) where they
    # can be made here, else on 127.0.0.1 again: the same bytes either way.
    hosts = None if namespaces_unavailable() else TwoHosts()
    before = files_of(workspace)
    outputs = []
    for run_name in ("run1", "run2"):
        run = tmp_path / run_name
        run.mkdir()
        started = time.monotonic()
        extra = {}
        if run_name == "run2" and hosts is not None:
            extra = {"addresses": ADDRESSES, "prefixes": hosts.prefixes()}
        try:
            codes = finish(start_cluster(workspace, run, **extra))
        finally:
            if extra:
                hosts.remove()
        errors = {name: (run / f"{name}.err").read_text()[-3000:] for name in ("chief", "worker")}
        assert codes == [0, 0], errors
        print(f"{run_name}: two workers in {time.monotonic() - started:.1f} s")
        # the other worker wrote nothing into its workspace
        assert files_of(run / "worker") == before
        outputs.append({name: (run / "chief" / name).read_bytes() for name in OUTPUTS})
        assert "worker 1 of 2: 16 of 33 train" in errors["worker"]
    assert outputs[0] == outputs[1]  # the same inputs, the same bytes (on two hosts too)
    if hosts is not None:
        assert "10.200.0.1:12345" in (tmp_path / "run2/chief.err").read_text()

    chief = tmp_path / "run1" / "chief"
    metrics = json.loads((chief / "metrics/train.json").read_text())
    assert metrics["replicas"] == 2 and metrics["train_images"] == TRAIN_IMAGES
    assert metrics["epochs"] == 2
    curves = chief / "metrics/train/plots/metrics"
    assert {"train/loss.tsv", "eval/loss.tsv", "train/accuracy.tsv"} <= files_of(curves)
    assert len((curves / "eval/loss.tsv").read_text().splitlines()) == 3  # header + 2 epochs
    assert not list(chief.rglob(".*.tmp-*"))

    model = load_model(chief / "models/model.keras")
    table = pd.read_csv(chief / "data/splits/splits.csv")
    paths = [str(chief / "data/splits" / image) for image in table["image"][:4]]
    probabilities = model.predict(decode_images(paths, 32, 1).astype("float32"), verbose=0)
    assert probabilities.shape == (4, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_a_worker_that_dies_fails_the_run_with_one_line(workspace, tmp_path):
    # long enough to be killed in the middle (no early stopping)
    override = {"train": {"epochs": 500, "early_stopping_patience": 0}}
    procs = start_cluster(workspace, tmp_path, override)
    chief, worker = procs
    try:
        deadline = time.monotonic() + 90
        while "epoch 2/500" not in (tmp_path / "worker.err").read_text():
            assert worker.poll() is None and time.monotonic() < deadline, "never trained"
            time.sleep(0.2)
        worker.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = chief.wait(timeout=90)
        took = time.monotonic() - killed
    finally:
        finish(procs, timeout=1)
    stderr = (tmp_path / "chief.err").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2, stderr[-3000:]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr[-3000:]
    assert "worker 1 (127.0.0.1:" in errors[0] and "nothing was written" in errors[0]
    print(f"the chief stopped {took:.1f} s after worker 1 was killed: {errors[0]}")
    folder = tmp_path / "chief"
    for name in OUTPUTS:
        assert not (folder / name).exists()
    assert not (folder / "metrics/train").exists()
    assert not list(folder.rglob(".*.tmp-*"))  # no temporary file or folder left


def test_cross_validation_folds_are_refused_before_any_training():
    from lungct.model.distributed import fit_multi_worker

    with pytest.raises(UserError, match="cv fold 1/3: train.strategy multi_worker"):
        fit_multi_worker(None, None, 0, ([], []), ([], []), name="cv fold 1/3")


@pytest.mark.slow
def test_a_worker_that_never_starts_stops_the_chief_with_one_line(workspace, tmp_path):
    procs = start_cluster(workspace, tmp_path, timeout=3, workers=("chief",))
    started = time.monotonic()
    code = finish(procs, timeout=60)[0]
    stderr = (tmp_path / "chief.err").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code != 0 and len(errors) == 1, stderr[-3000:]
    assert "not every worker of TF_CONFIG joined within 3 s" in errors[0]
    assert time.monotonic() - started < 60
    assert files_of(tmp_path / "chief") == files_of(workspace)


def test_peer_problem_keeps_the_list_after_a_colon():
    message = (
        "Error reported from /job:worker/task:1: The following tasks are unhealthy "
        "(stopped sending heartbeats):\n/job:worker/replica:0/task:1\n"
    )
    assert peer_problem(message).endswith(
        "(stopped sending heartbeats): /job:worker/replica:0/task:1"
    )


def wait_for(text: str, path: Path, procs: list, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while text not in path.read_text():
        assert all(p.poll() is None for p in procs), path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in {path}"
        time.sleep(0.2)


def stopped_by_sigterm(run: Path, proc, base: Path) -> float:
    """SIGTERM to ``proc`` (the chief): seconds until it exited, with one line, having
    written nothing and left no temporary folder (``run/tmp-chief``: its TMPDIR)."""
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = proc.wait(timeout=30)
    took = time.monotonic() - sent
    stderr = (run / "chief.err").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code != 0 and len(errors) == 1, stderr[-3000:]
    assert "stopped by SIGTERM (worker 0 of 2); nothing was written" in errors[0], errors
    assert files_of(run / "chief") == files_of(base)
    assert not list((run / "chief").rglob(".*.tmp-*"))
    assert not list((run / "tmp-chief").glob("lungct-cache-*"))  # the decoded images
    print(f"the chief stopped {took:.2f} s after SIGTERM: {errors[0]}")
    return took


@pytest.mark.slow
def test_sigterm_ends_a_worker_waiting_for_its_peer_with_one_line(workspace, tmp_path):
    """SIGTERM ends a worker held in TensorFlow's start (which holds the interpreter's
    lock and takes SIGTERM for a preemption notice) at once."""
    for name in ("chief", "worker"):
        (tmp_path / f"tmp-{name}").mkdir()
    env = {"TMPDIR": str(tmp_path / "tmp-{name}")}
    procs = start_cluster(workspace, tmp_path, timeout=300, workers=("chief",), extra_env=env)
    try:
        wait_for("waiting for the cluster", tmp_path / "chief.err", procs)
        time.sleep(2)  # inside TensorFlow's wait
        assert stopped_by_sigterm(tmp_path, procs[0], workspace) < 5
    finally:
        finish(procs, timeout=1)


@pytest.mark.slow
def test_sigterm_ends_a_worker_blocked_in_a_collective_operation(workspace, tmp_path):
    """SIGTERM ends the chief at once while its step's all-reduce waits for a worker that
    stopped answering (SIGSTOP: its connections stay open; TensorFlow's heartbeat would
    notice after about 10 s)."""
    for name in ("chief", "worker"):
        (tmp_path / f"tmp-{name}").mkdir()
    override = {"train": {"epochs": 500, "early_stopping_patience": 0}}
    env = {"TMPDIR": str(tmp_path / "tmp-{name}")}
    procs = start_cluster(workspace, tmp_path, override, timeout=300, extra_env=env)
    try:
        wait_for("epoch 2/500", tmp_path / "worker.err", procs)
        procs[1].send_signal(signal.SIGSTOP)
        time.sleep(1)  # the chief waits in its next step's all-reduce
        assert stopped_by_sigterm(tmp_path, procs[0], workspace) < 5
    finally:
        procs[1].kill()  # stopped, or failing on its own
        finish(procs, timeout=5)


@pytest.mark.slow
def test_a_worker_whose_port_is_taken_stops_with_one_line(workspace, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        addresses = [f"127.0.0.1:{taken.getsockname()[1]}", f"127.0.0.1:{free_ports(1)[0]}"]
        procs = start_cluster(workspace, tmp_path, workers=("chief",), addresses=addresses)
        code = finish(procs, timeout=90)[0]
    finally:
        taken.close()
    stderr = (tmp_path / "chief.err").read_text()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert f"cannot serve at {addresses[0]}" in errors[0] and "port in use" in errors[0]
    assert files_of(tmp_path / "chief") == files_of(workspace)
