"""``train.strategy: multi_worker`` across two hosts: two network namespaces joined by a
veth pair, made by the test (``ip netns add``, ``ip link add ... type veth``), one
``python -m stages.train`` in each (``ip netns exec``), talking over 10.200.0.1 and
10.200.0.2 only.

A normal run gives the same model bytes as the same cluster on 127.0.0.1
(``tests/test_multi_worker.py`` runs it the second time on two hosts); a link cut in
the middle of training (``ip link set ... down``: no connection closed, packets lost)
and a worker killed in the middle each end every worker with one line within
``LUNGCT_PEER_TIMEOUT``, with nothing written. Needs root (CAP_NET_ADMIN) and ``ip``;
skipped, saying why, elsewhere. Each test process names its namespaces and links with a
token of its own (pytest-xdist) and removes them whatever happens.
"""

from __future__ import annotations

import atexit
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_multi_worker import (
    OUTPUTS,
    files_of,
    finish,
    start_cluster,
    workspace,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.slow

HOSTS = ("10.200.0.1", "10.200.0.2")
PORT = 12345
PEER_TIMEOUT = 20  # seconds: LUNGCT_PEER_TIMEOUT of the failure tests


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def namespaces_unavailable() -> str | None:
    """Why two network namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"lungct-probe-{secrets.token_hex(4)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails (root and CAP_NET_ADMIN needed): {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


class TwoHosts:
    """Two namespaces, ``a`` (10.200.0.1) and ``b`` (10.200.0.2), and the veth pair
    between them; :meth:`remove` takes them away (also at exit)."""

    def __init__(self) -> None:
        token = secrets.token_hex(4)
        self.names = (f"lungct-{token}-a", f"lungct-{token}-b")
        self.links = (f"lc{token}a", f"lc{token}b")  # at most 15 characters
        atexit.register(self.remove)
        try:
            for ns in self.names:
                ip("netns", "add", ns)
            ip("link", "add", self.links[0], "type", "veth", "peer", "name", self.links[1])
            for ns, link, host in zip(self.names, self.links, HOSTS, strict=True):
                ip("link", "set", link, "netns", ns)
                ip("-n", ns, "addr", "add", f"{host}/24", "dev", link)
                ip("-n", ns, "link", "set", link, "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise

    def prefixes(self) -> tuple[list[str], ...]:
        return tuple(["ip", "netns", "exec", ns] for ns in self.names)

    def cut(self) -> None:
        """The link down on both sides: packets lost, no connection closed."""
        for ns, link in zip(self.names, self.links, strict=True):
            ip("-n", ns, "link", "set", link, "down")

    def remove(self) -> None:
        for ns in self.names:  # the veth pair goes with its namespaces
            ip("netns", "del", ns, check=False)
        ip("link", "del", self.links[0], check=False)


@pytest.fixture
def hosts():
    why = namespaces_unavailable()
    if why:
        pytest.skip(f"two network namespaces cannot be made here: {why}")
    pair = TwoHosts()
    try:
        yield pair
    finally:
        pair.remove()
    assert all(ns not in ip("netns", "list").stdout for ns in pair.names)


ADDRESSES = [f"{host}:{PORT}" for host in HOSTS]


def stderr_of(run: Path) -> dict[str, str]:
    return {name: (run / f"{name}.err").read_text() for name in ("chief", "worker")}


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr[-3000:]
    return errors[0]


def wait_for_training(run: Path, procs: list) -> None:
    deadline = time.monotonic() + 120
    while "epoch 2/500" not in (run / "worker.err").read_text():
        assert all(p.poll() is None for p in procs), stderr_of(run)
        assert time.monotonic() < deadline, "never trained"
        time.sleep(0.2)


def check_failed(run: Path, base: Path, codes: list, took: float, says: str) -> None:
    stderr = stderr_of(run)
    for name, code in zip(("chief", "worker"), codes, strict=True):
        if code is None:  # a worker killed by the test
            continue
        assert code != 0, stderr[name][-3000:]
        line = one_error_line(stderr[name])
        assert says in line, line
        print(f"{name}: exit {code} {took:.1f} s after the failure: {line}")
    assert took < PEER_TIMEOUT + 5, took  # the timeout, and the exit itself
    chief = run / "chief"
    for name in OUTPUTS:
        assert not (chief / name).exists()
    assert not (chief / "metrics/train").exists()
    assert not list(chief.rglob(".*.tmp-*"))
    assert files_of(run / "worker") == files_of(base)


def test_a_link_cut_mid_epoch_ends_both_workers_with_one_line(workspace, hosts, tmp_path):  # noqa: F811
    override = {"train": {"epochs": 500, "early_stopping_patience": 0}}
    run = tmp_path / "run"
    run.mkdir()
    procs = start_cluster(
        workspace, run, override, PEER_TIMEOUT, addresses=ADDRESSES, prefixes=hosts.prefixes()
    )
    try:
        wait_for_training(run, procs)
        hosts.cut()
        cut = time.monotonic()
        codes = [p.wait(timeout=PEER_TIMEOUT + 60) for p in procs]
        took = time.monotonic() - cut
    finally:
        finish(procs, timeout=1)
    check_failed(run, workspace, codes, took, "nothing was written")


def test_a_worker_killed_on_the_other_host_ends_the_chief(workspace, hosts, tmp_path):  # noqa: F811
    override = {"train": {"epochs": 500, "early_stopping_patience": 0}}
    run = tmp_path / "run"
    run.mkdir()
    procs = start_cluster(
        workspace, run, override, PEER_TIMEOUT, addresses=ADDRESSES, prefixes=hosts.prefixes()
    )
    try:
        wait_for_training(run, procs)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = procs[0].wait(timeout=PEER_TIMEOUT + 60)
        took = time.monotonic() - killed
    finally:
        finish(procs, timeout=1)
    check_failed(run, workspace, [code, None], took, "worker 1 (10.200.0.2:12345)")
