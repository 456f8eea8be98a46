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
import json
import logging
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

import numpy as np

from lungct.contract import Contract
from lungct.errors import UserError
from lungct.params import TrainParams

if TYPE_CHECKING:
    from lungct.model.history import Fitted

log = logging.getLogger("train")

TF_CONFIG = "TF_CONFIG"
JOBS = ("chief", "worker")  # the jobs a training cluster has (chief first, as TensorFlow ranks)
PEER_TIMEOUT_ENV = "LUNGCT_PEER_TIMEOUT"
# Seconds one collective operation (a step's all-reduce) waits for the slowest worker:
# longer than any worker's lag behind another (decoding its images, tracing the step).
DEFAULT_PEER_TIMEOUT_S = 300
HINT = "see docs/scale.md#several-machines-multi-worker"


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


def parse_cluster(text: str | None) -> Cluster:
    """The cluster and task of a ``TF_CONFIG`` value, checked; any problem is one
    :class:`UserError` line naming ``TF_CONFIG``."""
    if text is None or not text.strip():
        raise _fail("not set; train.strategy multi_worker reads the cluster from it")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"not valid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(config, dict):
        raise _fail("must be a JSON object with keys cluster and task")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise _fail("cluster: missing (an object of job name to host:port list)")
    jobs: dict[str, list[str]] = {}
    seen: set[str] = set()
    for job, addresses in cluster.items():
        if job not in JOBS:
            raise _fail(f"cluster: job {job!r} is not a training job (chief, worker)")
        if not isinstance(addresses, list) or not addresses:
            raise _fail(f"cluster.{job}: must be a non-empty list of host:port")
        for address in addresses:
            if not isinstance(address, str):
                raise _fail(f"cluster.{job}: {address!r} is not a host:port string")
            host, sep, port = address.rpartition(":")
            if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
                raise _fail(f"cluster.{job}: {address!r} is not host:port (a port 1..65535)")
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
        raise _fail(f"task.type: {task_type!r} is not a job of cluster ({', '.join(jobs)})")
    if isinstance(index, bool) or not isinstance(index, int):
        raise _fail(f"task.index: {index!r} is not a whole number")
    if not 0 <= index < len(jobs[task_type]):
        raise _fail(
            f"task.index: {index} is out of range: cluster.{task_type} has "
            f"{len(jobs[task_type])} task(s)"
        )
    return Cluster(jobs, task_type, index)


def read_cluster(environ: Mapping[str, str] = os.environ) -> Cluster:
    """The cluster of this process's ``TF_CONFIG`` (:func:`parse_cluster`)."""
    return parse_cluster(environ.get(TF_CONFIG))


def is_chief(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is the chief of its ``TF_CONFIG`` cluster, the one worker that
    writes outputs (a malformed ``TF_CONFIG`` is a :class:`UserError`)."""
    return read_cluster(environ).is_chief


def peer_timeout(environ: Mapping[str, str] = os.environ) -> int:
    """Seconds a collective operation waits for its peers (``LUNGCT_PEER_TIMEOUT``)."""
    text = environ.get(PEER_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_PEER_TIMEOUT_S
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{PEER_TIMEOUT_ENV}: {text!r} is not a whole number of seconds >= 1")
    return int(text)


@functools.cache
def multi_worker_strategy():
    """The process's one ``MultiWorkerMirroredStrategy`` (TensorFlow allows one, created
    before any other TensorFlow work): the cluster of ``TF_CONFIG``, ring all-reduce, and
    :func:`peer_timeout` on every collective operation. Blocks until every worker is up."""
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
        timeout_seconds=float(timeout),
    )
    task = f"{cluster.task_type}:{cluster.task_index} of {cluster.size}"
    log.info("multi-worker: task %s, waiting for the cluster %s", task, cluster.jobs)
    sigterm = signal.getsignal(signal.SIGTERM)
    late = (
        f"multi-worker training: not every worker of {TF_CONFIG} joined within {timeout} s "
        f"(start them all, with the same cluster; {PEER_TIMEOUT_ENV} sets the wait); "
        "nothing was written"
    )
    with _watchdog(timeout, late), _peer_errors("starting", cluster):
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=options
        )
    # TensorFlow's coordination service takes SIGTERM for a preemption notice and goes on
    # training: give it back its usual meaning (stop), so that `kill` stops a worker.
    if sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)
    return strategy


# The watchdog: a second process, since the waiting start holds the interpreter's lock
_WATCH = """
import os, select, signal, sys
ready = select.select([sys.stdin], [], [], float(sys.argv[2]))[0]
if not ready:
    sys.stderr.write("error: " + sys.argv[3] + "\\n")
    sys.stderr.flush()
    os.kill(int(sys.argv[1]), signal.SIGKILL)
"""


@contextlib.contextmanager
def _watchdog(seconds: int, message: str) -> Iterator[None]:
    """End this process (SIGKILL), with ``message`` as its one line on stderr, unless the
    block is done within ``seconds``: for a wait inside TensorFlow that holds the
    interpreter (the strategy's start waits without a limit for every worker to be up),
    so that no Python thread or signal handler can stop it."""
    watch = subprocess.Popen(
        [sys.executable, "-c", _WATCH, str(os.getpid()), str(seconds), message],
        stdin=subprocess.PIPE,
    )
    try:
        yield
    finally:
        watch.stdin.close()  # the watchdog wakes and ends
        watch.wait()


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
    cluster = read_cluster()
    if len(train[0]) < cluster.size:
        raise UserError(
            f"{name}: {len(train[0])} train images for {cluster.size} workers; "
            "each worker needs at least one"
        )
    strategy = multi_worker_strategy()  # before any other TensorFlow work
    from lungct.atomic import atomic_dir
    from lungct.model.history import Fitted, live_curves
    from lungct.model.runtime import seed_everything

    seed_everything(seed)
    with contextlib.ExitStack() as stack:
        live = None
        if live_dir is not None and cluster.is_chief:
            live = stack.enter_context(live_curves(stack.enter_context(atomic_dir(live_dir))))
        cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="lungct-cache-"))
        with _peer_errors("training", cluster):
            loop = _Loop(cfg, contract, seed, train, val, strategy, cluster, cache_dir, name)
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
