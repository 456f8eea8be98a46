"""The REST service: the real server (``python -m stages.serve`` in a subprocess on a free
127.0.0.1 port, against the tiny project's model), spoken to over HTTP."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from tests.trained import stage_env, trained_project

MAX_FILES = 6
MAX_UPLOAD = 3_000_000


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def start(tmp: Path, *args: str) -> Server:
    log = tmp / f"serve-{uuid.uuid4().hex[:6]}.log"
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.serve", "--port", "0", *args],
            cwd=tmp,
            env=stage_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text()
        if "listening on " in text:
            url = text.split("listening on ", 1)[1].split()[0]
            return Server(url, process, log)
        if process.poll() is not None:
            raise AssertionError(f"the service exited:\n{text}")
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the service did not start:\n{log.read_text()}")


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="module")
def project() -> Path:
    return trained_project()


@pytest.fixture(scope="module")
def server(project: Path, tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve")
    server = start(
        tmp,
        "--model",
        str(project / "models/model.keras"),
        "--max-files",
        str(MAX_FILES),
        "--max-upload-bytes",
        str(MAX_UPLOAD),
    )
    yield server
    stop(server)


def multipart(files: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, data in files:
        body.write(f"--{boundary}\r\n".encode())
        body.write(
            f'Content-Disposition: form-data; name="{field}"; filename="{name}"\r\n'.encode()
        )
        body.write(b"Content-Type: application/octet-stream\r\n\r\n")
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def call(url: str, body: bytes | None = None, content_type: str | None = None):
    """(status, headers, JSON body) of one request; never raises for an HTTP status."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def post(server: Server, files: list[tuple[str, bytes]]):
    body, kind = multipart(files)
    return call(f"{server.url}/predict", body, kind)


def dicoms(project: Path) -> list[Path]:
    return sorted((project / "data/raw").rglob("*.dcm"))


def series_zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(folder.rglob("*.dcm")):
            archive.write(file, file.relative_to(folder.parent).as_posix())
    return buffer.getvalue()


def predict_json(project: Path, tmp: Path, paths: list[Path]) -> dict:
    """What ``python -m stages.predict --format json`` says of the same files."""
    out = tmp / "predict.json"
    result = subprocess.run(
        [sys.executable, "-m", "stages.predict", *map(str, paths), "--output", str(out)]
        + ["--model", str(project / "models/model.keras")]
        + ["--labels", str(project / "models/labels.json")],
        cwd=tmp,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode in (0, 1), result.stderr
    return json.loads(out.read_text())


def without_names(document: dict) -> dict:
    rows = [{k: v for k, v in row.items() if k != "file"} for row in document["predictions"]]
    failures = [{k: v for k, v in f.items() if k != "file"} for f in document["failures"]]
    return {"classes": document["classes"], "predictions": rows, "failures": failures}


def test_health_and_model(server, project):
    status, _, body = call(f"{server.url}/health")
    assert (status, body) == (200, {"status": "ok"})

    status, headers, info = call(f"{server.url}/model")
    contract = json.loads((project / "models/labels.json").read_text())
    assert status == 200
    assert info["classes"] == contract["classes"]
    assert info["input"]["image_size"] == contract["image_size"] == 32
    assert info["input"]["windows"] == contract["windows"]
    assert info["input"]["context_slices"] == 0 and info["input"]["crop"]["kind"] == "none"
    assert info["input"]["framing"] == contract["framing"] == "body"  # params.yaml's
    assert info["data"]["source"] == "synthetic" and info["data"]["layout"] == "dicom"
    assert "not for real CT" in info["warning"]
    assert headers["X-Model-Warning"] == info["warning"]
    headline = json.loads((project / "metrics/eval.json").read_text())
    assert {k: info["test_metrics"][k] for k in headline} == headline
    assert info["test_metrics"]["images"] == 6
    assert info["limits"]["max_files"] == MAX_FILES
    assert "/" not in info["model"]["file"]  # no server path in an answer


def test_card_service_predict_and_sr_name_one_model_version(server, project, tmp_path):
    """The model card, ``GET /model``, predict's JSON and the DICOM SR of the same model name
    the same version: the software's version and the model file's sha256."""
    from lungct import __version__
    from lungct.atomic import sha256_file
    from lungct.contract import model_version

    sha256 = sha256_file(project / "models/model.keras")
    version = model_version(sha256)
    assert version.startswith(f"{__version__}+sha256.{sha256[:16]}")
    card = json.loads((project / "models/card.json").read_text())
    assert (card["model_sha256"], card["model_version"]) == (sha256, version)
    _, _, info = call(f"{server.url}/model")
    assert info["model"] == {"file": "model.keras", "sha256": sha256, "version": version}
    series = sorted((project / "data/raw").iterdir())[0]
    assert predict_json(project, tmp_path, [series])["model"]["version"] == version
    reports = tmp_path / "reports"
    result = subprocess.run(
        [sys.executable, "-m", "stages.predict", str(series), "--format", "dicom-sr"]
        + ["--output", str(reports), "--model", str(project / "models/model.keras")]
        + ["--labels", str(project / "models/labels.json")],
        cwd=tmp_path,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (sr,) = [pydicom.dcmread(path) for path in reports.iterdir()]

    def items(node: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
        for item in node.get("ContentSequence", []):
            yield item
            yield from items(item)

    algorithm_versions = [
        item.TextValue
        for item in items(sr)
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Version"
    ]
    assert algorithm_versions == [version]
    assert list(sr.SoftwareVersions) == [__version__, f"model sha256 {sha256[:16]}"]


def test_predict_matches_the_predict_command(server, project, tmp_path):
    """A DICOM, a PNG, a bad file and a zip of a series, in one request: the rows and
    reason codes of `stages.predict --format json` on the same files."""
    dicom = dicoms(project)[0]
    png = sorted((project / "data/splits/test").rglob("*.png"))[0]
    series = dicoms(project)[-1].parent
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    expected = predict_json(project, tmp_path, [dicom, png, bad, series])

    status, headers, answer = post(
        server,
        [
            ("slice.dcm", dicom.read_bytes()),
            ("slice.png", png.read_bytes()),
            ("notes.txt", bad.read_bytes()),
            ("series.zip", series_zip(series)),
        ],
    )
    assert status == 200, answer
    assert without_names(answer) == without_names(expected)
    # the same model record (name, sha256, classes, training data) and warning as predict's
    assert answer["model"] == expected["model"] and answer["warning"] == expected["warning"]
    assert "not for real CT" in answer["warning"] and headers["X-Model-Warning"]
    files = [row["file"] for row in answer["predictions"]]
    levels = [row["level"] for row in answer["predictions"]]
    members = [f"series.zip/{series.name}/{f.name}" for f in sorted(series.glob("*.dcm"))]
    assert files == ["slice.dcm", "slice.png", *members, "series.zip"]
    assert levels == ["image", "image"] + ["image"] * len(members) + ["series"]
    assert answer["failures"] == [
        {
            "file": "notes.txt",
            "reason": "not_image",
            "detail": "neither a DICOM file nor an image format Pillow can read",
        }
    ]


def test_bad_uploads_are_failure_rows_and_the_service_goes_on(server, project, tmp_path):
    # A declared 65535 x 65535 image: the decoded-size limit, before decoding.
    bomb = pydicom.dcmread(dicoms(project)[0])
    bomb.Rows = bomb.Columns = 65535
    bomb.save_as(tmp_path / "bomb.dcm")
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.dcm", b"x")
    status, _, answer = post(
        server,
        [
            ("bomb.dcm", (tmp_path / "bomb.dcm").read_bytes()),
            ("evil.zip", evil.getvalue()),
            ("broken.zip", b"PK\x03\x04 not really a zip"),
            ("empty", b""),
        ],
    )
    assert status == 200, answer
    assert answer["predictions"] == []
    reasons = {f["file"]: f["reason"] for f in answer["failures"]}
    assert reasons == {
        "bomb.dcm": "too_large",
        "evil.zip": "bad_archive",
        "broken.zip": "bad_archive",
        "empty": "empty_file",
    }
    assert "escapes the target folder" in answer["failures"][1]["detail"]
    assert "/tmp" not in json.dumps(answer)  # the service's own paths never leave it
    assert post(server, [("slice.dcm", dicoms(project)[0].read_bytes())])[0] == 200


def test_requests_over_the_limits_are_4xx_with_one_message(server, project):
    one = dicoms(project)[0].read_bytes()
    status, _, answer = post(server, [(f"{i}.dcm", one) for i in range(MAX_FILES + 1)])
    assert status == 413 and f"more than {MAX_FILES} files" in answer["error"]

    status, _, answer = post(server, [("big.dcm", b"\0" * (MAX_UPLOAD + 1))])
    assert status == 413 and "over the limit" in answer["error"]

    # Chunked (no Content-Length): counted while streaming.
    body, kind = multipart([("big.dcm", b"\0" * (MAX_UPLOAD + 1))])
    request = urllib.request.Request(
        f"{server.url}/predict",
        data=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
    )
    request.add_header("Content-Type", kind)
    request.add_header("Transfer-Encoding", "chunked")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 413 and "over the limit" in json.loads(err.value.read())["error"]

    status, _, answer = call(f"{server.url}/predict", b'{"file": "x"}', "application/json")
    assert status == 415 and "multipart/form-data" in answer["error"]
    status, _, answer = call(f"{server.url}/predict", b"--x\r\ngarbage", "multipart/form-data")
    assert status == 400 and "multipart" in answer["error"]
    body, kind = multipart([])
    status, _, answer = call(f"{server.url}/predict", body, kind)
    assert status == 400 and "no files" in answer["error"]
    status, _, answer = call(f"{server.url}/nowhere")
    assert status == 404 and answer == {"error": "Not Found"}
    for body in (answer,):
        assert "Traceback" not in json.dumps(body)
    assert call(f"{server.url}/health")[0] == 200


def test_concurrent_requests_give_the_sequential_answers(server, project):
    files = dicoms(project)[:8]
    requests = [[(f.name, f.read_bytes())] for f in files] + [
        [(f.name, f.read_bytes()) for f in files[:3]]
    ]
    sequential = [post(server, r)[2] for r in requests]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda r: post(server, r)[2], requests * 2))
    # Same rows; probabilities equal within 1e-5 (a batch of other requests' images may
    # take another oneDNN kernel than a batch of one: the last printed digit can move).
    assert len(concurrent) == len(sequential) * 2
    for got, want in zip(concurrent, sequential * 2, strict=True):
        assert _without_p(got) == _without_p(want)
        for a, b in zip(got["predictions"], want["predictions"], strict=True):
            for key in a:
                if key.startswith("p_"):
                    assert abs(a[key] - b[key]) <= 1e-5, (key, a[key], b[key])


def _without_p(document: dict) -> dict:
    rows = [
        {k: v for k, v in row.items() if not k.startswith("p_")} for row in document["predictions"]
    ]
    return {**document, "predictions": rows}


def test_one_log_line_per_request_without_file_names(server, project):
    before = len(server.lines())
    post(server, [("PATIENT-NAME.dcm", dicoms(project)[0].read_bytes())])
    call(f"{server.url}/health")
    time.sleep(0.2)
    new = server.lines()[before:]
    assert len(new) == 2, new
    assert " POST /predict 200 " in new[0] and "files=1 images=1 failures=0" in new[0]
    assert " GET /health 200 " in new[1]
    assert "PATIENT-NAME" not in "\n".join(server.lines())


def test_onnx_export_serves_the_same_answers_and_the_timeout_holds(server, project, tmp_path):
    onnx = start(
        tmp_path,
        "--model",
        str(project / "models/export/onnx/model.onnx"),
        "--timeout",
        "1",
    )
    try:
        files = [(f.name, f.read_bytes()) for f in dicoms(project)[:4]]
        keras_answer, onnx_answer = post(server, files)[2], post(onnx, files)[2]
        for a, b in zip(keras_answer["predictions"], onnx_answer["predictions"], strict=True):
            assert a["predicted"] == b["predicted"]
            for key in (k for k in a if k.startswith("p_")):
                assert abs(a[key] - b[key]) <= 2e-6
        # The test figures of the Keras model it was exported from (export.json names it).
        info, keras_info = call(f"{onnx.url}/model")[2], call(f"{server.url}/model")[2]
        assert info["model"]["file"] == "model.onnx"
        assert info["test_metrics"] == keras_info["test_metrics"] is not None

        # A client that stops sending half way: the request ends at the time limit.
        body, kind = multipart(files)
        host, port = onnx.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            head = (
                f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[: len(body) // 2])
            started = time.monotonic()
            reply = read_response(sock)
            assert reply.startswith("HTTP/1.1 503"), reply
            assert 0.5 < time.monotonic() - started < 10
            assert "longer than the limit of 1 s" in reply
        assert call(f"{onnx.url}/health")[0] == 200
    finally:
        stop(onnx)
    assert "Traceback" not in onnx.log.read_text()


def read_response(sock: socket.socket) -> str:
    """One HTTP response from a raw socket: the head, then Content-Length bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_a_missing_model_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "stages.serve", "--model", str(tmp_path / "model.keras")],
        cwd=tmp_path,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "labels.json: not found" in line
