"""The REST service spends only what a client pays for: a request's budget across its parts,
work that stops with its request, bounded buffering, shutdown that cleans up, idle and slow
connections closed, no server path in an answer, options checked. The real server (the
ONNX export of the tiny project: a start in seconds), small limits given as options,
127.0.0.1 only."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path

import pydicom
import pytest

from tests.test_serve import Server, call, dicoms, multipart, post, read_response
from tests.trained import stage_env, trained_project


@pytest.fixture(scope="module")
def project() -> Path:
    return trained_project()


def start(tmp: Path, project: Path, *args: str, nofile: int | None = None) -> Server:
    """The ONNX service with ``args``; its temporary files under ``tmp/temp``."""
    log = tmp / f"serve-{uuid.uuid4().hex[:6]}.log"
    temp = tmp / "temp"
    temp.mkdir(exist_ok=True)
    limit = (
        (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
    )
    model = project / "models/export/onnx/model.onnx"
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.serve", "--port", "0", "--model", str(model), *args],
            cwd=tmp,
            env={**stage_env(), "TMPDIR": str(temp)},
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=limit,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text()
        if "listening on " in text:
            return Server(text.split("listening on ", 1)[1].split()[0], process, log)
        if process.poll() is not None:
            raise AssertionError(f"the service exited:\n{text}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the service did not start:\n{log.read_text()}")


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


def test_a_request_has_one_budget_across_its_parts(project, tmp_path):
    """Unpacked bytes and members count across all the parts of a request (each zip alone
    fits), checked from the zip's index before anything is written; decoded images too."""
    dicom = dicoms(project)[0]
    ds = pydicom.dcmread(dicom)
    channels = len(json.loads((project / "models/labels.json").read_text())["windows"])
    declared = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8  # checked before
    decoded = int(ds.Rows) * int(ds.Columns) * channels  # then taken from the budget
    server = start(
        tmp_path,
        project,
        "--max-unpacked-bytes",
        "2500000",
        "--max-members",
        "8",
        "--max-decoded-bytes",
        str(declared + decoded // 2),  # the first image fits, then no other
    )
    try:
        junk = b"not an image " * 80_000  # 1 MB, and quick to refuse
        parts = [(f"{i}.zip", zip_of({f"junk{i}.bin": junk})) for i in range(3)]
        status, _, answer = post(server, parts)
        assert status == 200, answer
        reasons = [(f["file"], f["reason"]) for f in answer["failures"]]
        assert reasons == [
            ("0.zip/junk0.bin", "not_image"),
            ("1.zip/junk1.bin", "not_image"),
            ("2.zip", "bad_archive"),
        ]
        assert "more than the limit max_unpacked_bytes_left" in answer["failures"][2]["detail"]

        members = zip_of({f"m{i}.txt": b"x" for i in range(5)})
        status, _, answer = post(server, [("a.zip", members), ("b.zip", members)])
        assert status == 200
        assert answer["failures"][-1]["file"] == "b.zip"
        assert "over the limit max_members_left=3" in answer["failures"][-1]["detail"]

        data = dicom.read_bytes()
        status, _, answer = post(server, [("a.dcm", data), ("b.dcm", data), ("c.dcm", data)])
        assert status == 200, answer
        assert [row["file"] for row in answer["predictions"]] == ["a.dcm"]
        assert [f["reason"] for f in answer["failures"]] == ["too_large", "too_large"]
        assert all("decoded images per request" in f["detail"] for f in answer["failures"])
        assert not list((tmp_path / "temp").glob("lungct-serve-*/request-*"))  # removed
    finally:
        stop(server)


def test_a_timed_out_request_stops_its_work_and_holds_its_slot_until_then(project, tmp_path):
    """A small zip of 40 MB of zeros takes pydicom about 15 CPU-seconds to refuse: its
    request is answered 503 at the time limit and its work stops there."""
    server = start(tmp_path, project, "--timeout", "1.5", "--concurrency", "1")
    try:
        bomb = zip_of({"zeros.dcm": bytes(40 * 2**20)})
        assert len(bomb) < 100_000
        answers: list = []
        clients = [
            threading.Thread(target=lambda: answers.append(post(server, [("z.zip", bomb)])))
            for _ in range(3)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=30)
        assert [a[0] for a in answers] == [503] * 3
        assert all(a[1]["Retry-After"] for a in answers)
        time.sleep(1.0)  # the work stops within a moment of its answer
        before = cpu_seconds(server.process.pid)
        time.sleep(2.0)
        assert cpu_seconds(server.process.pid) - before < 0.5
        status, _, answer = post(server, [("a.dcm", dicoms(project)[0].read_bytes())])
        assert status == 200 and len(answer["predictions"]) == 1
    finally:
        stop(server)
    assert "Traceback" not in server.log.read_text()


def test_uploads_held_at_once_are_bounded_and_beyond_is_503(project, tmp_path):
    server = start(
        tmp_path, project, "--max-upload-bytes", "1000000", "--max-buffered-bytes", "2000000"
    )
    host, port = address(server)
    body, kind = multipart([("big.dcm", b"\0" * 900_000)])
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    held = []
    try:
        for _ in range(2):  # two bodies half sent: held
            sock = socket.create_connection((host, port), timeout=30)
            sock.sendall(head + body[:1000])
            held.append(sock)
        time.sleep(0.5)
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(head + body[:1000])
            reply = read_response(sock)
        assert reply.startswith("HTTP/1.1 503"), reply
        assert "retry-after: 2" in reply.lower() and '"error"' in reply
        for sock in held:  # the held ones finish, then a new one is taken
            sock.sendall(body[1000:])
            assert read_response(sock).startswith("HTTP/1.1 200")
        assert post(server, [("a.dcm", dicoms(project)[0].read_bytes())])[0] == 200
    finally:
        for sock in held:
            sock.close()
        stop(server)


def test_sigterm_removes_uploads_and_readers_and_a_restart_sweeps_a_killed_ones(project, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "temp" / f"lungct-serve-{dead.pid}-old"
    (stale / "request-x").mkdir(parents=True)
    server = start(
        tmp_path, project, "--workers", "2", "--timeout", "60", "--shutdown-timeout", "1"
    )
    workers = children(server.process.pid)
    assert len(workers) >= 2
    assert not stale.exists()  # a killed service's folder, removed at start
    bomb = zip_of({"zeros.dcm": bytes(40 * 2**20)})

    def send() -> None:
        with contextlib.suppress(OSError, ValueError):  # the service stops mid-request
            post(server, [("z.zip", bomb)])

    client = threading.Thread(target=send, daemon=True)
    client.start()
    deadline = time.monotonic() + 20
    while not list((tmp_path / "temp").glob("lungct-serve-*/request-*/0000/zeros.dcm")):
        assert time.monotonic() < deadline, "the upload never reached the disk"
        time.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    server.process.wait(timeout=30)
    assert time.monotonic() - stopping < 10
    time.sleep(0.5)
    assert not list((tmp_path / "temp").glob("lungct-serve-*")), "uploads left behind"
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert not alive, f"reader processes left running: {alive}"
    assert "Traceback" not in server.log.read_text()


def test_idle_slow_and_surplus_connections_are_closed(project, tmp_path):
    server = start(
        tmp_path,
        project,
        "--header-timeout",
        "1",
        "--keep-alive",
        "1",
        "--max-connections",
        "4",
    )
    host, port = address(server)
    try:
        idle = socket.create_connection((host, port), timeout=10)
        slow = socket.create_connection((host, port), timeout=10)
        started = time.monotonic()
        slow.sendall(b"GET /health HTTP/1.1\r\n")
        for _ in range(8):  # a header line, byte by byte: never done within the limit
            try:
                slow.sendall(b"X")
            except OSError:
                break
            time.sleep(0.25)
        assert idle.recv(100) == b""  # closed by the service
        assert time.monotonic() - started < 5
        assert slow.recv(100) == b""
        idle.close()
        slow.close()

        held = [socket.create_connection((host, port), timeout=10) for _ in range(4)]
        time.sleep(0.2)
        with socket.create_connection((host, port), timeout=10) as extra:
            reply = read_response(extra)
        assert reply.startswith("HTTP/1.1 503") and "retry-after" in reply.lower()
        assert json.loads(reply.split("\r\n\r\n", 1)[1]) == {
            "error": "too many open connections; try again later"
        }
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert call(f"{server.url}/health")[0] == 200

        with socket.create_connection((host, port), timeout=10) as bad:
            bad.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            reply = read_response(bad)
        assert reply.startswith("HTTP/1.1 400")
        assert json.loads(reply.split("\r\n\r\n", 1)[1])["error"]
        status, _, answer = call(f"{server.url}/predict")  # GET: 405, JSON
        assert status == 405 and answer == {"error": "Method Not Allowed"}
    finally:
        stop(server)


def test_a_low_open_file_limit_keeps_health_answering_and_the_log_short(project, tmp_path):
    """300 idle connections against an open-file limit of 256: the service lowers its
    connection limit to fit, answers /health, and logs a line per kind of failure."""
    server = start(tmp_path, project, "--header-timeout", "30", nofile=256)
    host, port = address(server)
    sockets = []
    try:
        for _ in range(300):
            sockets.append(socket.create_connection((host, port), timeout=10))
        time.sleep(1.0)
        started = time.monotonic()
        assert call(f"{server.url}/health")[0] in (200, 503)
        for sock in sockets:
            sock.close()
        sockets.clear()
        time.sleep(0.5)
        assert call(f"{server.url}/health")[0] == 200
        assert time.monotonic() - started < 10
    finally:
        for sock in sockets:
            sock.close()
        stop(server)
    text = server.log.read_text()
    assert "max_connections lowered" in text
    assert "Traceback" not in text and len(text) < 20_000, text[-2000:]


def test_answers_name_members_as_sent_never_a_server_path(project, tmp_path):
    server = start(tmp_path, project)
    try:
        long_name = "a" * 300 + ".dcm"  # too long a name for the server's file system
        status, _, answer = post(server, [("scan.zip", zip_of({long_name: b"x"}))])
        assert status == 200
        text = json.dumps(answer)
        assert "/tmp" not in text and "lungct-serve" not in text and str(tmp_path) not in text
        (failure,) = answer["failures"]
        assert failure["file"] == "scan.zip" and failure["reason"] == "bad_archive"
    finally:
        stop(server)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--host="], "--host"),
        (["--timeout", "nan"], "--timeout"),
        (["--timeout", "1e13"], "--timeout"),
        (["--max-wait-ms", "nan"], "--max-wait-ms"),
        (["--max-wait-ms", "1e13"], "--max-wait-ms"),
        (["--max-connections", "0"], "--max-connections"),
        (["--header-timeout", "inf"], "--header-timeout"),
        (["--max-upload-bytes", "100", "--max-buffered-bytes", "10"], "--max-buffered-bytes"),
    ],
)
def test_bad_options_are_one_error_line(args, says):
    from lungct.errors import UserError
    from stages.serve import parse_args

    with pytest.raises(UserError) as err:
        parse_args(args)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_health_fails_when_the_model_thread_has_died(project):
    import asyncio

    from lungct.serving.service import Limits, Service, create_app, load_predictor

    model = project / "models/export/onnx/model.onnx"
    predictor = load_predictor(model, model.parent / "labels.json")
    service = Service(predictor, model, None, Limits())
    app = create_app(service)

    def get(path: str) -> tuple[int, dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "scheme": "http",
            "root_path": "",
            "http_version": "1.1",
        }
        asyncio.run(app(scope, receive, send))
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return sent[0]["status"], json.loads(body)

    try:
        assert get("/health") == (200, {"status": "ok"})
        service.batcher.close()  # the model thread ends
        status, answer = get("/health")
        assert status == 503 and answer["error"] == "the model thread has stopped"
    finally:
        service.close(0)
    assert not service.temp_root.exists()
