"""The Streamlit app: driven by streamlit's AppTest, and once in a real headless Chromium."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from lungct.errors import SkippedFile
from lungct.serving.inference import Predictor, predict_bytes
from tests.browser import launch, needs_chromium
from tests.conftest import ROOT
from tests.dicom_fixtures import enhanced_ct, sr_document
from tests.trained import stage_env, trained_project

APP = ROOT / "app.py"
REJECTED = "Rejected: not a CT slice or image this app can read."


@pytest.fixture(autouse=True)
def keep_main_module():
    """AppTest runs app.py as ``__main__`` and leaves it in ``sys.modules``; a process pool
    started later by another test (spawn/forkserver re-import ``__main__`` by path) would
    then run the app in its workers. Put the real one back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="module")
def project() -> Path:
    return trained_project()


@pytest.fixture(scope="module")
def predictor(project: Path) -> Predictor:
    return Predictor.load(project / "models/model.keras", project / "models/labels.json")


@pytest.fixture
def app_env(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LUNGCT_MODEL", str(project / "models/model.keras"))
    monkeypatch.setenv("LUNGCT_LABELS", str(project / "models/labels.json"))
    return project


def test_page_shows_model_view_probabilities_gradcam_and_rejects_non_images(
    app_env, predictor, tmp_path
):
    png = sorted((app_env / "data/splits/test").rglob("*.png"))[0]
    dicom = sorted((app_env / "data/raw").rglob("*.dcm"))[0]
    sr = sr_document(tmp_path).path
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception and not at.error
    # A model of the synthetic cohort says so; the caption has its data and test figures.
    (warning,) = at.warning
    assert "Not for real CT" in warning.value and "synthetic" in warning.value
    caption = at.caption[0].value
    assert "trained on synthetic data" in caption and "Test balanced accuracy" in caption
    at.file_uploader(key="uploads").set_value(
        [
            ("slice.png", png.read_bytes(), "image/png"),
            ("slice.dcm", dicom.read_bytes(), "application/dicom"),
            ("notes.txt", b"not an image", "text/plain"),
            ("report.dcm", sr.read_bytes(), "application/dicom"),
        ]
    ).run()
    assert not at.exception
    assert [e.value for e in at.error] == [REJECTED, REJECTED]
    texts = [t.value for t in at.text]
    assert texts[:2] == ["slice.png", "slice.dcm"]
    assert texts[2] == "notes.txt" and texts[3].startswith("notes.txt: not_image")
    assert texts[4] == "report.dcm" and texts[5].startswith("report.dcm: not_ct")

    classes = list(predictor.classes)
    for k, path in enumerate((png, dicom)):
        expected = predictor.probabilities(predict_bytes(predictor, path.read_bytes()).pixels)[0]
        table = at.table[k].value
        assert list(table["class"]) == classes
        assert list(table["probability"]) == [f"{p:.4f}" for p in expected]
        best = classes[int(expected.argmax())]
        assert f"Predicted: **{best}**" in at.markdown[k].value
    captions = [c for image in at.image for c in image.captions]
    assert sum(c.startswith("As the model sees it") for c in captions) == 2
    assert sum(c.startswith("Grad-CAM for") for c in captions) == 2
    caveats = [c.value for c in at.caption if "not a lesion segmentation" in c.value]
    assert len(caveats) == 2


HOSTILE_NAMES = [
    "[click here](http://evil.example/phish)",
    "![x](http://evil.example/track.png).dcm",
    "<img src=x onerror=alert(1)>.png",
    "**bold** :red[red] $x^2$ # heading",
]


def test_upload_names_are_plain_text_never_markdown(app_env):
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.file_uploader(key="uploads").set_value(
        [(name, b"not an image", "text/plain") for name in HOSTILE_NAMES]
    ).run()
    assert not at.exception
    texts = [t.value for t in at.text]
    for name in HOSTILE_NAMES:
        assert name in texts and f"{name}: not_image" in " ".join(texts)
    markdown = [m.value for m in (*at.markdown, *at.error, *at.subheader, *at.caption)]
    assert not any("evil.example" in m or "onerror" in m or "**bold**" in m for m in markdown)
    assert [e.value for e in at.error] == [REJECTED] * len(HOSTILE_NAMES)


def test_multiframe_upload_has_a_frame_slider_and_a_mean(app_env, tmp_path):
    data = enhanced_ct(tmp_path).path.read_bytes()
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.file_uploader(key="uploads").set_value(("volume", data, "application/octet-stream")).run()
    assert not at.exception and not at.error
    assert any(m.value.startswith("3 frames; mean over all frames") for m in at.markdown)
    (slider,) = at.slider
    assert (slider.min, slider.max, slider.value) == (1, 3, 1)
    slider.set_value(3).run()
    assert not at.exception and len(at.table) == 1


def test_no_model_is_one_message(monkeypatch, tmp_path):
    monkeypatch.setenv("LUNGCT_MODEL", str(tmp_path / "model.keras"))
    monkeypatch.setenv("LUNGCT_LABELS", str(tmp_path / "labels.json"))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    (error,) = at.error
    assert "dvc repro" in error.value
    assert len(at.file_uploader) == 0


def test_uploads_use_private_temporary_folders(predictor, project, tmp_path, monkeypatch):
    """Concurrent uploads (sessions share the model) never meet on a file name, and leave
    nothing behind."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    files = sorted((project / "data/splits/test").rglob("*.png"))[:3]
    files += sorted((project / "data/raw").rglob("*.dcm"))[:3]
    uploads = [path.read_bytes() for path in files] * 3
    alone = [predict_bytes(predictor, data).probabilities for data in uploads]
    with ThreadPoolExecutor(6) as pool:
        together = list(
            pool.map(lambda data: predict_bytes(predictor, data).probabilities, uploads)
        )
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(SkippedFile):
        predict_bytes(predictor, b"not an image")
    assert list(scratch.iterdir()) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"streamlit exited:\n{server.communicate()[0]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise AssertionError(f"streamlit not up at {url} after {timeout} s")


class Served(NamedTuple):
    url: str
    port: int
    server: subprocess.Popen


@pytest.fixture(scope="module")
def served(project: Path) -> Iterator[Served]:
    """`streamlit run app.py` as a user starts it: from the project root, so with the
    project's .streamlit/config.toml, and no flag but a free port and no browser to open."""
    port = free_port()
    env = stage_env()
    env["LUNGCT_MODEL"] = str(project / "models/model.keras")
    env["LUNGCT_LABELS"] = str(project / "models/labels.json")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py"]
        + ["--server.port", str(port), "--server.headless", "true"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server)
        yield Served(url, port, server)
    finally:
        server.terminate()
        try:
            server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


def listening(port: int) -> list[str]:
    """The local addresses of the sockets listening on ``port`` (Linux's /proc/net)."""
    found = []
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # /proc/net writes each 32-bit word in host (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(str(ipaddress.ip_address(words)))
    return found


def test_app_is_private_by_default(served):
    """The shipped config: this machine only, no usage statistics; and the app started from
    the project root listens on 127.0.0.1 alone (another loopback address is refused)."""
    config = tomllib.loads((ROOT / ".streamlit/config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False
    shown = subprocess.run(
        [sys.executable, "-m", "streamlit", "config", "show"],
        cwd=ROOT,
        env=stage_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert 'address = "127.0.0.1"' in shown.splitlines()
    assert "gatherUsageStats = false" in shown.splitlines()

    assert listening(served.port) == ["127.0.0.1"]
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.2", served.port), timeout=5),
    ):
        pass


@needs_chromium
def test_upload_in_a_real_browser(served, predictor, project, tmp_path):
    from playwright.sync_api import sync_playwright

    png = sorted((project / "data/splits/test").rglob("*.png"))[0]
    expected = predictor.probabilities(predict_bytes(predictor, png.read_bytes()).pixels)[0]
    screenshot = tmp_path / "app.png"
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(served.url)
            page.wait_for_selector("input[type=file]", state="attached", timeout=90_000)
            page.set_input_files("input[type=file]", str(png))
            page.get_by_text("Predicted:").wait_for(timeout=90_000)
            page.get_by_text("not a lesion segmentation").first.wait_for(timeout=30_000)
            for p in expected:  # the probability table's cells
                page.get_by_text(f"{p:.4f}", exact=True).first.wait_for(timeout=60_000)
            page.wait_for_selector("img", timeout=30_000)
            text = page.inner_text("body")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    for name, p in zip(predictor.classes, expected, strict=True):
        assert name in text and f"{p:.4f}" in text, text
    assert screenshot.stat().st_size > 10_000
