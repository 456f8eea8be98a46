"""Training on several machines: ``train.strategy: multi_worker`` (docs/scale.md, "Several
machines": the setup, the data each worker reads, batch norm, a worker that dies).

TensorFlow's ``MultiWorkerMirroredStrategy`` on the cluster of ``TF_CONFIG``, one process
per machine; only the chief (the ``chief`` task, else worker 0) writes (:func:`is_chief`).
Keras 3's ``model.fit`` does not run under this strategy (keras-team/keras#20585), so
:func:`fit_multi_worker` is a loop of its own with the train stage's recipe. Reading the
cluster does not import TensorFlow; training does.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lungct.atomic import parse_json
from lungct.errors import UserError, first_line, printable

if TYPE_CHECKING:  # numpy and the rest load with training: importing starts no thread
    import numpy as np

    from lungct.contract import Contract
    from lungct.model.history import Fitted
    from lungct.params import TrainParams

log = logging.getLogger("train")

TF_CONFIG = "TF_CONFIG"
JOBS = ("chief", "worker")  # the jobs a training cluster has (chief first, as TensorFlow ranks)
PEER_TIMEOUT_ENV = "LUNGCT_PEER_TIMEOUT"
# Seconds one collective operation (a step's all-reduce) waits for the slowest worker:
# longer than any worker's lag behind another (decoding its images, tracing the step).
DEFAULT_PEER_TIMEOUT_S = 300
PEER_TIMEOUT_RANGE_S = (1, 86400)  # a second to a day
# The signals that stop a worker (kill, timeout, Ctrl-C), held from the stage's start
# (:func:`hold_stop_signals`) and acted on by the guard (:class:`_Guard`).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HINT = "see docs/scale.md#several-machines-multi-worker"
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class Cluster:
    """The training cluster of ``TF_CONFIG``: addresses by job, and this process's task."""

    jobs: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def size(self) -> int:
        """The number of workers, the chief included."""
        return sum(len(self.jobs.get(job, [])) for job in JOBS)

    @property
    def rank(self) -> int:
        """This worker's place in the cluster, 0 .. size - 1: the chief (or worker 0) is 0."""
        return 0 if self.task_type == "chief" else len(self.jobs.get("chief", [])) + self.task_index

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def _fail(problem: str) -> UserError:
    return UserError(f"{TF_CONFIG}: {problem} ({HINT})")


def _shown(value: object, limit: int = 60) -> str:
    """``value`` as a short one-line ``repr`` for a message (control characters escaped)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def valid_host(host: str) -> bool:
    """Whether ``host`` is an IP address (IPv6 in brackets) or a DNS name: letters,
    digits and hyphens in dot-separated labels of 63 characters at most, 253 in all."""
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    name = host.removesuffix(".")
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in name.split("."))


def _check_address(job: str, address: object) -> None:
    if not isinstance(address, str):
        raise _fail(f"cluster.{job}: {_shown(address)} is not a host:port string")
    host, sep, port = address.rpartition(":")
    if not (sep and port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        raise _fail(f"cluster.{job}: {_shown(address)} is not host:port (a port 1..65535)")
    if not valid_host(host):
        raise _fail(
            f"cluster.{job}: {_shown(address)}: the host is not an IP address or a host name"
        )


def parse_cluster(text: str | None) -> Cluster:
    """The cluster and task of a ``TF_CONFIG`` value, checked; any problem is one
    :class:`UserError` line naming ``TF_CONFIG``."""
    if text is None or not text.strip():
        raise _fail("not set; train.strategy multi_worker reads the cluster from it")
    try:
        config = parse_json(text)  # bounded: size, nesting, numbers
    except json.JSONDecodeError as exc:
        raise _fail(f"not valid JSON ({printable(exc.msg)[:120]}, column {exc.colno})") from None
    if not isinstance(config, dict):
        raise _fail("must be a JSON object with keys cluster and task")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise _fail("cluster: missing (an object of job name to host:port list)")
    jobs: dict[str, list[str]] = {}
    seen: set[str] = set()
    for job, addresses in cluster.items():
        if job not in JOBS:
            raise _fail(f"cluster: job {_shown(job)} is not a training job (chief, worker)")
        if not isinstance(addresses, list) or not addresses:
            raise _fail(f"cluster.{job}: must be a non-empty list of host:port")
        for address in addresses:
            _check_address(job, address)
            if address in seen:
                raise _fail(f"cluster: {address} is listed twice")
            seen.add(address)
        jobs[job] = list(addresses)
    if len(jobs.get("chief", [])) > 1:
        raise _fail("cluster.chief: has one task at most")
    if not isinstance(task, dict):
        raise _fail('task: missing (an object such as {"type": "worker", "index": 0})')
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in jobs:
        raise _fail(f"task.type: {_shown(task_type)} is not a job of cluster ({', '.join(jobs)})")
    if isinstance(index, bool) or not isinstance(index, int):
        raise _fail(f"task.index: {_shown(index)} is not a whole number")
    if not 0 <= index < len(jobs[task_type]):
        raise _fail(
            f"task.index: {_shown(index)} is out of range: cluster.{task_type} has "
            f"{len(jobs[task_type])} task(s)"
        )
    return Cluster(jobs, task_type, index)


def read_cluster(environ: Mapping[str, str] = os.environ) -> Cluster:
    """The cluster of this process's ``TF_CONFIG`` (:func:`parse_cluster`)."""
    return parse_cluster(environ.get(TF_CONFIG))


def check_setup(environ: Mapping[str, str] = os.environ) -> Cluster:
    """``TF_CONFIG`` and ``LUNGCT_PEER_TIMEOUT`` checked, as the train stage does first
    (before TensorFlow is imported): the cluster."""
    peer_timeout(environ)
    return read_cluster(environ)


def is_chief(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is the chief of its ``TF_CONFIG`` cluster, the one worker that
    writes outputs (a malformed ``TF_CONFIG`` or ``LUNGCT_PEER_TIMEOUT`` is a
    :class:`UserError`)."""
    return check_setup(environ).is_chief


def writes_outputs(strategy: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process writes the train stage's outputs: under ``multi_worker`` the
    chief only (``TF_CONFIG`` and ``LUNGCT_PEER_TIMEOUT`` checked here, before TensorFlow
    is imported; the worker guarded from here on), any other run always (the stop
    signals let through: :func:`release_stop_signals`)."""
    if strategy == "multi_worker":
        cluster = check_setup(environ)
        _start_early_guard(cluster)
        return cluster.is_chief
    release_stop_signals()
    return True


def peer_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds a collective operation waits for its peers (``LUNGCT_PEER_TIMEOUT``): a
    number (decimals allowed) within :data:`PEER_TIMEOUT_RANGE_S`."""
    text = environ.get(PEER_TIMEOUT_ENV, "").strip()
    if not text:
        return float(DEFAULT_PEER_TIMEOUT_S)
    low, high = PEER_TIMEOUT_RANGE_S
    seconds = None
    if len(text) <= 20 and re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        seconds = float(text)
    if seconds is None or not (math.isfinite(seconds) and low <= seconds <= high):
        raise UserError(
            f"{PEER_TIMEOUT_ENV}: {_shown(text)} is not a number of seconds from {low} to {high}"
        )
    return seconds


def hold_stop_signals() -> None:
    """Hold :data:`STOP_SIGNALS` pending in this thread and every thread it starts: called
    first thing by the train stage, before any import starts a thread, so that no
    thread of TensorFlow's takes them (its coordination service takes SIGTERM for a
    preemption notice and goes on waiting). The guard of multi-worker training
    (:class:`_Guard`) acts on them; any other run lets them go
    (:func:`release_stop_signals`)."""
    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def release_stop_signals() -> None:
    """Let :data:`STOP_SIGNALS` through again in this thread (one held arrives now)."""
    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@functools.cache
def multi_worker_strategy():
    """The process's one ``MultiWorkerMirroredStrategy`` (TensorFlow allows one, created
    before any other TensorFlow work): the cluster of ``TF_CONFIG``, ring all-reduce, and
    :func:`peer_timeout` on every collective operation. Blocks until every worker is up,
    without a limit of its own (:func:`fit_multi_worker`'s guard sets one)."""
    cluster = read_cluster()
    timeout = peer_timeout()
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster.jobs),
        task_type=cluster.task_type,
        task_id=cluster.task_index,
        rpc_layer="grpc",
    )
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=timeout,
    )
    task = f"{cluster.task_type}:{cluster.task_index} of {cluster.size}"
    log.info("multi-worker: task %s, waiting for the cluster %s", task, cluster.jobs)
    sigterm = signal.getsignal(signal.SIGTERM)
    address = cluster.jobs[cluster.task_type][cluster.task_index]
    try:
        with _peer_errors("starting", cluster):
            strategy = tf.distribute.MultiWorkerMirroredStrategy(
                cluster_resolver=resolver, communication_options=options
            )
    except tf.errors.UnknownError as exc:  # its server: the port taken, the host not here
        raise UserError(
            f"multi-worker training: this worker ({TF_CONFIG} task {cluster.task_type} "
            f"{cluster.task_index}) cannot serve at {address}: {first_line(exc)} (is the "
            "port in use, or the host not this machine's?); nothing was written"
        ) from None
    # TensorFlow's coordination service takes SIGTERM for a preemption notice and goes on
    # training: give it back its usual meaning (stop), so that `kill` stops a worker.
    if sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)
    return strategy


# The guard: a second process, since a wait inside TensorFlow holds the interpreter's lock
# (no Python thread or signal handler runs) and TensorFlow's own threads would take the
# signals. It reads orders on stdin (a deadline, its end, a folder to remove should it end
# the worker; end of file: done), and looks 10 times a second for a stop signal held
# pending in the worker (/proc/PID/status).
_WATCH = r"""
import os, select, shutil, signal, sys, time
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, signal.SIG_IGN)
pid, stopped, paths = int(sys.argv[1]), sys.argv[2], []
watched = {int(s): signal.Signals(int(s)).name for s in os.environ["LUNGCT_STOP_SIGNALS"].split()}
deadline, late = None, ""

def pending():
    try:
        with open(f"/proc/{pid}/status") as status:
            lines = [line.split() for line in status]
    except OSError:
        return None
    mask = 0
    for fields in lines:
        if fields and fields[0] in ("SigPnd:", "ShdPnd:"):
            mask |= int(fields[1], 16)
    return next((name for number, name in watched.items() if mask >> (number - 1) & 1), None)

def end(message):
    sys.stderr.write("error: " + message + "\n")
    sys.stderr.flush()
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    sys.exit(0)

orders = b""
while True:
    wait = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
    if select.select([0], [], [], wait)[0]:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        orders += chunk
        while b"\n" in orders:
            order, orders = orders.split(b"\n", 1)
            if order.startswith(b"deadline "):
                seconds, late = order[9:].decode().split(" ", 1)
                deadline = time.monotonic() + float(seconds)
            elif order == b"done":
                deadline = None
            elif order.startswith(b"clean "):
                paths.append(os.fsdecode(order[6:]))
    name = pending()
    if name:
        end(stopped.replace("SIGNAL", name))
    if deadline is not None and time.monotonic() >= deadline:
        end(late)
"""


class _Guard:
    """A guard process for this worker: from its start, a stop signal (SIGTERM, SIGINT)
    ends the worker at once, whatever TensorFlow is doing: one ``error:`` line, the
    process killed, the folders of :meth:`clean` removed. The signals are held
    (:func:`hold_stop_signals`, done here too for a process that did not) in every
    thread started after it."""

    def __init__(self, cluster: Cluster) -> None:
        hold_stop_signals()
        self.stopped = (
            f"multi-worker training: stopped by SIGNAL (worker {cluster.rank} of "
            f"{cluster.size}); nothing was written"
        )
        watched = " ".join(str(int(number)) for number in STOP_SIGNALS)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WATCH, str(os.getpid()), self.stopped],
            stdin=subprocess.PIPE,
            env={**os.environ, "LUNGCT_STOP_SIGNALS": watched},
            start_new_session=True,  # not stopped with this process's group (timeout, Ctrl-C)
        )

    def _order(self, text: str) -> None:
        self.process.stdin.write(text.encode("utf-8", "surrogateescape") + b"\n")
        self.process.stdin.flush()

    def clean(self, path: str) -> None:
        """Remove ``path`` (a temporary folder) should a stop signal end the worker."""
        self._order(f"clean {path}")

    @contextlib.contextmanager
    def deadline(self, seconds: float, message: str) -> Iterator[None]:
        """End this process, with ``message`` as its one line, unless the block is done
        within ``seconds``."""
        self._order(f"deadline {seconds!r} {message}")
        try:
            yield
        finally:
            self._order("done")

    def close(self) -> str | None:
        """End the guard; the name of a stop signal held pending (one that arrived as it
        ended), else None with the signals let through again."""
        self.process.stdin.close()  # the guard wakes and ends
        self.process.wait()
        held = signal.sigpending() & set(STOP_SIGNALS)
        if not held:
            release_stop_signals()
        return min(held).name if held else None


_early: _Guard | None = None  # started by the train stage before TensorFlow is imported


def _start_early_guard(cluster: Cluster) -> None:
    """Guard this worker from now on, where the stage holds the stop signals
    (:func:`hold_stop_signals`): a signal during the imports and the reading of the
    splits ends it at once too, not once training starts."""
    global _early
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    if _early is None and set(STOP_SIGNALS) <= mask:
        _early = _Guard(cluster)


@contextlib.contextmanager
def _guarded(cluster: Cluster) -> Iterator[_Guard]:
    """The block under this worker's guard (the early one, else one of its own); a stop
    signal that arrives as the block ends is one :class:`UserError` line."""
    global _early
    guard, _early = _early or _Guard(cluster), None
    try:
        yield guard
    finally:
        held = guard.close()
    if held:
        raise UserError(guard.stopped.replace("SIGNAL", held))


@contextlib.contextmanager
def _peer_errors(doing: str, cluster: Cluster) -> Iterator[None]:
    """TensorFlow's errors of a lost or unreachable peer as one :class:`UserError` line."""
    import tensorflow as tf

    lost = (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.CancelledError,
        tf.errors.AbortedError,
        tf.errors.FailedPreconditionError,
        tf.errors.InternalError,
    )
    try:
        yield
    except lost as exc:
        raise UserError(
            f"multi-worker training failed while {doing}: {peer_problem(str(exc), cluster)} "
            f"({type(exc).__name__}); nothing was written"
        ) from None


# TensorFlow's lines around the cause of a failed collective operation
_NOISE = ("Graph execution error", "Detected at node", "File ", "[[", "Additional GRPC", ":UNKNOWN")


def peer_problem(message: str, cluster: Cluster | None = None) -> str:
    """The cause in a TensorFlow error message of a failed collective operation, in one
    line: which worker (when the message names one) and TensorFlow's reason."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if not line.startswith(_NOISE)), None)
    reason = "" if first is None else lines[first]
    if reason.endswith(":") and first + 1 < len(lines):  # the list of tasks that follows
        reason = f"{reason} {lines[first + 1]}"
    reason = reason.removeprefix("Collective ops is aborted by: ").rstrip(".") or "no reason given"
    found = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", message)
    if found is None:
        return f"a worker stopped or cannot be reached: {reason}"
    job, task = found.group(1), int(found.group(2))
    addresses = (cluster.jobs if cluster else {}).get(job, [])
    where = f" ({addresses[task]})" if task < len(addresses) else ""
    return f"{job} {task}{where} stopped or cannot be reached: {reason}"


def shard(items: list, rank: int, size: int) -> list:
    """Worker ``rank``'s share of ``items``: items rank, rank + size, ..."""
    return items[rank::size]


def step_batches(total: int, size: int, batch: int) -> list[int]:
    """The number of images in each step of an epoch, all workers together, when each
    worker takes ``batch`` at a time from its :func:`shard` of ``total`` images."""
    shares = [len(range(rank, total, size)) for rank in range(size)]
    steps = -(-max(shares) // batch)
    return [sum(min(batch, max(0, n - s * batch)) for n in shares) for s in range(steps)]


def fit_multi_worker(
    cfg: TrainParams,
    contract: Contract,
    seed: int,
    train: tuple[list[str], list[int]],
    val: tuple[list[str], list[int]],
    live_dir: Path | None = None,
    name: str = "train",
) -> Fitted:
    """:func:`lungct.model.train.fit_model` on the ``TF_CONFIG`` cluster: every worker calls
    it with the same arguments (the same files listed: the same ``data/splits``) and gets
    the same weights; ``live_dir`` (DVCLive curves) is written by the chief only, into a
    temporary folder that replaces it once training is done."""
    if name != "train":  # the cv stage's folds (split.folds): one machine each
        raise UserError(
            f"{name}: train.strategy multi_worker trains the train stage's model only; "
            "cross-validation (split.folds) needs train.strategy auto, default or mirrored"
        )
    cluster = check_setup()
    timeout = peer_timeout()
    if len(train[0]) < cluster.size:
        raise UserError(
            f"{name}: {len(train[0])} train images for {cluster.size} workers; "
            "each worker needs at least one"
        )
    from lungct.atomic import atomic_dir
    from lungct.model.history import Fitted, live_curves
    from lungct.model.runtime import seed_everything

    late = (
        f"multi-worker training: not every worker of {TF_CONFIG} joined within {timeout:g} s "
        f"(start them all, with the same cluster; {PEER_TIMEOUT_ENV} sets the wait); "
        "nothing was written"
    )
    with contextlib.ExitStack() as stack:
        temporary = [stack.enter_context(tempfile.TemporaryDirectory(prefix="lungct-cache-"))]
        live = None
        if live_dir is not None and cluster.is_chief:
            temporary.append(stack.enter_context(atomic_dir(live_dir)))
            live = stack.enter_context(live_curves(temporary[-1]))
        # the guard ends first: a stop signal held to the end keeps the curves out too
        guard = stack.enter_context(_guarded(cluster))
        for folder in temporary:
            guard.clean(str(folder))
        with guard.deadline(timeout, late):
            strategy = multi_worker_strategy()  # before any other TensorFlow work
        seed_everything(seed)
        with _peer_errors("training", cluster):
            loop = _Loop(cfg, contract, seed, train, val, strategy, cluster, temporary[0], name)
            history = loop.fit(live)
    return Fitted(loop.model, history, int(strategy.num_replicas_in_sync))


class _Loop:
    """The model, this worker's shards and the compiled steps."""

    def __init__(self, cfg, contract, seed, train, val, strategy, cluster, cache_dir, name):
        import keras
        import tensorflow as tf

        from lungct.model.dataset import image_dataset
        from lungct.model.network import build_cnn, class_weights

        self.cfg, self.name = cfg, name
        self.rank, self.workers = cluster.rank, cluster.size
        size, channels = contract.prep.image_size, contract.prep.channels
        batch = cfg.batch_size  # per replica, as with the other strategies
        self.steps = step_batches(len(train[0]), self.workers, batch)
        self.train_images = len(train[0])
        cache = {"cache": cfg.cache, "cache_dir": cache_dir}
        mine = [shard(items, self.rank, self.workers) for items in train]
        val_mine = [shard(items, self.rank, self.workers) for items in val]
        self.train_data = image_dataset(*mine, size, channels, batch, seed + self.rank, **cache)
        self.val_data = (
            image_dataset(*val_mine, size, channels, batch, **cache) if val_mine[0] else ()
        )
        weights = class_weights(train[1]) if cfg.class_weight == "auto" else {}
        with strategy.scope():
            model = build_cnn(size, channels, len(contract.classes), cfg, seed, len(self.steps))
            optimizer = model.optimizer
            optimizer.build(model.trainable_variables)
        self.model = model
        shown = {contract.classes[i]: round(w, 3) for i, w in weights.items()} or "none"
        log.info(
            f"{name}: worker {self.rank} of {self.workers}: {len(mine[0])} of {len(train[0])} "
            f"train / {len(val_mine[0])} of {len(val[0])} val images, classes "
            f"{list(contract.classes)}, {model.count_params()} weights, {len(self.steps)} "
            f"steps an epoch, class weights {shown}"
        )
        per_example = keras.losses.SparseCategoricalCrossentropy(reduction=None)
        table = [weights.get(i, 1.0) for i in range(len(contract.classes))]
        class_weight = tf.constant(table, tf.float32)
        variables = model.trainable_variables

        def sums(y, probs, w):
            """Weighted loss, weighted correct, total weight: the epoch figures' parts."""
            losses = per_example(y, probs) * w
            hits = tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), y), tf.float32)
            parts = [tf.reduce_sum(losses), tf.reduce_sum(hits * w), tf.reduce_sum(w)]
            return losses, tf.stack(parts)

        def replica_step(x, y, global_batch):
            w = tf.gather(class_weight, y)
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                losses, parts = sums(y, probs, w)
                loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return parts

        def idle_step():
            # no images left in this worker's shard: take part in the all-reduce with zeros
            optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
            return tf.zeros((3,), tf.float32)

        @tf.function
        def train_step(x, y, global_batch):
            return strategy.run(replica_step, args=(x, y, global_batch))

        @tf.function
        def train_idle():
            return strategy.run(idle_step)

        @tf.function
        def val_step(x, y):
            probs = model(x, training=False)
            return sums(y, probs, tf.ones_like(y, tf.float32))[1]

        @tf.function
        def all_sum(values):
            per_worker = strategy.run(tf.identity, args=(values,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_worker, axis=None)

        def all_sum_numpy(values: np.ndarray) -> np.ndarray:
            """``values`` added up over the workers (the same result on every worker)."""
            return all_sum(tf.constant(values, tf.float64)).numpy()

        self._train_step, self._train_idle, self._val_step = train_step, train_idle, val_step
        self._all_sum = all_sum_numpy
        self.moving_stats = [
            v for v in model.non_trainable_variables if v.name in ("moving_mean", "moving_variance")
        ]

    def _epoch(self) -> dict[str, float]:
        import numpy as np
        import tensorflow as tf

        train_sums = np.zeros(3)
        batches = iter(self.train_data)
        for global_batch in self.steps:
            batch = next(batches, None)
            if batch is None:
                self._train_idle()
                continue
            x, y = batch
            train_sums += self._train_step(x, y, tf.constant(global_batch, tf.int64)).numpy()
        # Batch norm's moving statistics, each worker's own: their mean over the workers
        stats = [v.numpy().astype(np.float64) for v in self.moving_stats]
        totals = self._all_sum(np.concatenate([train_sums, *(s.ravel() for s in stats)]))
        offsets = np.cumsum([3, *(s.size for s in stats)])[:-1]  # the train sums, then each stat
        train_sums, *stat_sums = np.split(totals, offsets)
        for variable, value, total in zip(self.moving_stats, stats, stat_sums, strict=True):
            variable.assign((total / self.workers).reshape(value.shape).astype(np.float32))
        val_sums = np.zeros(3)
        for x, y in self.val_data:
            val_sums += self._val_step(x, y).numpy()
        val_loss, val_hits, val_n = self._all_sum(val_sums)
        loss, hits, weight = train_sums
        return {
            "loss": float(loss / self.train_images),  # Keras: the mean of w * loss per image
            "accuracy": float(hits / weight),  # Keras: weighted by the class weights
            "val_loss": float(val_loss / val_n),
            "val_accuracy": float(val_hits / val_n),
        }

    def fit(self, live) -> dict[str, list[float]]:
        """Up to ``train.epochs`` epochs; with ``early_stopping_patience``, Keras'
        ``EarlyStopping(monitor="val_loss", restore_best_weights=True)``."""
        history: dict[str, list[float]] = {}
        patience = self.cfg.early_stopping_patience
        best, best_weights, wait = None, None, 0
        for epoch in range(self.cfg.epochs):
            logs = self._epoch()
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            figures = " - ".join(f"{key}: {value:.4f}" for key, value in logs.items())
            log.info("%s: epoch %d/%d: %s", self.name, epoch + 1, self.cfg.epochs, figures)
            if live is not None:
                live.on_epoch_end(epoch, logs)
            if not patience:
                continue
            wait += 1
            if best is None or logs["val_loss"] < best:
                best, best_weights, wait = logs["val_loss"], self.model.get_weights(), 0
            elif wait >= patience:
                log.info("%s: early stopping after epoch %d", self.name, epoch + 1)
                break
        if best_weights is not None:
            self.model.set_weights(best_weights)
        return history
