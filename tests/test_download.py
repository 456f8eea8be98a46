"""The download stage: synthetic cohort, URL (from a loopback server), Kaggle, local path."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from lungct import phantom, sources
from lungct.errors import UserError
from lungct.params import parse_params
from stages.download import download

# --------------------------------------------------------------------------- synthetic


def test_synthetic_download_writes_labelled_dicom_and_provenance(workdir, tiny):
    source = download(tiny)
    raw = workdir / "data/raw"
    labels = pd.read_csv(raw / "labels.csv")
    assert list(labels.columns) == ["PatientID", "label"]
    assert len(labels) == 9 and set(labels["label"]) == {"normal", "benign", "malignant"}
    dicoms = sorted(p for p in raw.rglob("*.dcm"))
    assert len(dicoms) == 9 * 2
    ds = pydicom.dcmread(dicoms[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert ds.PatientID in set(labels["PatientID"])
    recorded = json.loads((raw / "SOURCE.json").read_text())
    assert recorded == source
    assert recorded["source"] == "synthetic" and recorded["layout"] == "dicom"
    assert recorded["files"] == 9 * 2 + 1 and len(recorded["tree_sha256"]) == 64
    assert "downloaded_at" not in recorded  # synthetic data is a pure function of params
    assert not list(workdir.glob("data/.raw.tmp-*"))


def test_same_seed_same_bytes(workdir, tiny):
    first = download(tiny)["tree_sha256"]
    assert download(tiny)["tree_sha256"] == first
    other = tiny.model_copy(update={"base": tiny.base.model_copy(update={"seed": 1})})
    assert download(other)["tree_sha256"] != first


# --------------------------------------------------------------------------- fixtures


def png_bytes(mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(sum(size))
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8).squeeze()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def iqothnccd_tree() -> dict[str, bytes]:
    top = "The IQ-OTHNCCD lung cancer dataset/The IQ-OTHNCCD lung cancer dataset"
    files = {f"{top}/IQ-OTH-NCCD description.txt": b"110 cases\n"}
    for folder, stem in [("Bengin cases", "Bengin case"), ("Malignant cases", "Malignant case")]:
        for i in (1, 2):
            files[f"{top}/{folder}/{stem} ({i}).jpg"] = png_bytes("L", (64, 64), "JPEG")
    files[f"{top}/Normal cases/Normal case (1).jpg"] = png_bytes("RGB", (80, 64), "JPEG")
    return files


def chest_ctscan_tree() -> dict[str, bytes]:
    files = {}
    folders = {
        "train": ["adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib", "normal"],
        "valid": ["large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa", "normal"],
        "test": ["squamous.cell.carcinoma", "normal"],
    }
    for split, classes in folders.items():
        for name in classes:
            files[f"Data/{split}/{name}/000001 (2).png"] = png_bytes("RGBA", (70, 50))
            files[f"Data/{split}/{name}/n5.jpg"] = png_bytes("RGB", (60, 60), "JPEG")
    return files


def dicom_tree(tmp_path: Path) -> dict[str, bytes]:
    root = tmp_path / "dicom-src"
    rows = phantom.write_cohort(
        root, patients=3, slices=1, image_size=32, class_balance={"normal": 1.0}, seed=3
    )
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.dcm")}
    files["labels.csv"] = "".join(
        ["PatientID,label\n", *(f"{pid},{label}\n" for pid, label in rows)]
    ).encode()
    return files


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def make_targz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Server:
    """A loopback HTTP server (127.0.0.1 only) serving in-memory files."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()  # paths whose body is cut short (connection dropped)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                body = outer.files.get(path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if path in outer.truncate else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes) -> tuple[str, str]:
        self.files[path] = body
        return f"{self.base}{path}", hashlib.sha256(body).hexdigest()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def with_data(tiny_raw: dict, **data: object):
    raw = json.loads(json.dumps(tiny_raw))
    raw["data"].update(data)
    return parse_params(raw)


# --------------------------------------------------------------------------- url


@pytest.mark.parametrize("pack", [make_zip, make_targz], ids=["zip", "tar.gz"])
@pytest.mark.parametrize("layout", ["iqothnccd", "chest-ctscan", "dicom"])
def test_url_archive_each_layout(workdir, tiny_raw, server, pack, layout):
    files = {
        "iqothnccd": iqothnccd_tree,
        "chest-ctscan": chest_ctscan_tree,
        "dicom": lambda: dicom_tree(workdir),
    }[layout]()
    url, digest = server.add(f"/{layout}.archive", pack(files))
    source = download(with_data(tiny_raw, source="url", url=url, sha256=digest))
    raw = workdir / "data/raw"
    for name, data in files.items():
        assert (raw / name).read_bytes() == data
    assert source["layout"] == layout and source["layout_detected"] is True
    assert source["sha256"] == digest and source["url"] == url
    assert source["files"] == len(files) and source["bytes"] == sum(map(len, files.values()))
    assert json.loads((raw / "SOURCE.json").read_text()) == source
    assert "downloaded_at" in source


def test_layout_from_params_overrides_detection(workdir, tiny_raw, server):
    url, digest = server.add("/x.zip", make_zip(chest_ctscan_tree()))
    source = download(
        with_data(tiny_raw, source="url", url=url, sha256=digest, layout="chest-ctscan")
    )
    assert source["layout"] == "chest-ctscan" and source["layout_detected"] is False


def test_wrong_checksum_names_both_digests_and_extracts_nothing(workdir, tiny_raw, server):
    url, digest = server.add("/a.zip", make_zip(chest_ctscan_tree()))
    with pytest.raises(UserError) as err:
        download(with_data(tiny_raw, source="url", url=url, sha256="0" * 64))
    assert f"expected {'0' * 64}, got {digest}" in str(err.value)
    assert sorted(p.name for p in workdir.iterdir()) == ["data"]
    assert list((workdir / "data").iterdir()) == []


def test_http_404(workdir, tiny_raw, server):
    with pytest.raises(UserError, match=r"/missing.zip: HTTP 404"):
        download(
            with_data(tiny_raw, source="url", url=f"{server.base}/missing.zip", sha256="a" * 64)
        )


def test_dropped_connection_leaves_previous_data_and_the_rerun_succeeds(
    workdir, tiny_raw, tiny, server
):
    download(tiny)  # an earlier, complete data/raw
    before = (workdir / "data/raw/SOURCE.json").read_bytes()
    body = make_zip(chest_ctscan_tree())
    url, digest = server.add("/big.zip", body)
    server.truncate.add("/big.zip")
    params = with_data(tiny_raw, source="url", url=url, sha256=digest)
    with pytest.raises(UserError, match="incomplete"):
        download(params)
    assert (workdir / "data/raw/SOURCE.json").read_bytes() == before
    assert [p.name for p in (workdir / "data").iterdir()] == ["raw"]
    server.truncate.clear()
    assert download(params)["layout"] == "chest-ctscan"


def test_credentials_never_recorded(workdir, tiny_raw, server):
    url, digest = server.add("/c.zip", make_zip(chest_ctscan_tree()))
    secret = url.replace("http://", "http://user:hunter2@") + "?token=hunter2"
    source = download(with_data(tiny_raw, source="url", url=secret, sha256=digest))
    assert source["url"] == url
    assert "hunter2" not in (workdir / "data/raw/SOURCE.json").read_text()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (make_zip({"../evil.txt": b"x"}), "evil.txt"),
        (b"", "not a zip or tar archive"),
        (b"just some text\n", "not a zip or tar archive"),
        (make_zip({}), "no files"),
    ],
    ids=["zip-slip", "zero-bytes", "not-an-archive", "empty-zip"],
)
def test_bad_archives_are_refused_and_nothing_is_kept(workdir, tiny_raw, server, body, message):
    url, digest = server.add("/bad.zip", body)
    with pytest.raises(UserError, match=message):
        download(with_data(tiny_raw, source="url", url=url, sha256=digest))
    assert not (workdir / "data/raw").exists()
    assert not (workdir / "evil.txt").exists() and not (workdir / "data/evil.txt").exists()
    assert list((workdir / "data").iterdir()) == []


def test_bomb_over_the_params_limit(workdir, tiny_raw, server):
    url, digest = server.add("/bomb.zip", make_zip({"zeros.bin": bytes(2_000_000)}))
    with pytest.raises(UserError, match="zeros|limit|exceed"):
        download(with_data(tiny_raw, source="url", url=url, sha256=digest, max_bytes=1_000_000))
    assert not (workdir / "data/raw").exists()


def test_only_http_https_and_file_urls(tiny_raw):
    with pytest.raises(UserError, match="data.url: 'ftp://host/a.zip' is not an http"):
        with_data(tiny_raw, source="url", url="ftp://host/a.zip", sha256="a" * 64)
    with pytest.raises(UserError, match="data.sha256: a url source needs"):
        with_data(tiny_raw, source="url", url="https://host/a.zip", sha256="")


def test_file_url(workdir, tiny_raw, tmp_path):
    archive = tmp_path / "local.tar.gz"
    archive.write_bytes(make_targz(iqothnccd_tree()))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    source = download(with_data(tiny_raw, source="url", url=archive.as_uri(), sha256=digest))
    assert source["layout"] == "iqothnccd"


# --------------------------------------------------------------------------- path


def test_local_folder_and_archive(workdir, tiny_raw, tmp_path):
    folder = tmp_path / "dataset"
    for name, data in chest_ctscan_tree().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    source = download(with_data(tiny_raw, source="path", path=str(folder)))
    assert source["layout"] == "chest-ctscan" and "sha256" not in source
    assert (workdir / "data/raw/Data/test/normal/n5.jpg").exists()

    archive = tmp_path / "dataset.zip"
    archive.write_bytes(make_zip(iqothnccd_tree()))
    source = download(with_data(tiny_raw, source="path", path=str(archive)))
    assert source["layout"] == "iqothnccd"
    assert source["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert not (workdir / "data/raw/Data").exists()  # the earlier data/raw is replaced whole


def test_local_path_that_does_not_exist(workdir, tiny_raw, tmp_path):
    with pytest.raises(UserError, match=r"nowhere\.zip: not found"):
        download(with_data(tiny_raw, source="path", path=str(tmp_path / "nowhere.zip")))
    assert not (workdir / "data/raw").exists()


def test_unknown_layout_asks_for_data_layout(workdir, tiny_raw, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    with pytest.raises(UserError, match="set data.layout"):
        download(with_data(tiny_raw, source="path", path=str(folder)))


# --------------------------------------------------------------------------- kaggle


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("Failed to resolve 'www.kaggle.com'\nmore detail"),
        PermissionError("403 Client Error: Forbidden"),
        ValueError(""),
    ],
)
def test_kaggle_errors_become_one_line(monkeypatch, error):
    import kagglehub

    def fail(handle: str, **kwargs: object) -> str:
        raise error

    monkeypatch.setattr(kagglehub, "dataset_download", fail)
    with pytest.raises(UserError) as err:
        sources.kaggle_download("owner/dataset")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("data.kaggle_handle 'owner/dataset': Kaggle download failed")
    assert type(error).__name__ in text


def test_kaggle_download_copies_the_dataset(workdir, tiny_raw, tmp_path, monkeypatch):
    import kagglehub

    cache = tmp_path / "kagglehub-cache"
    for name, data in iqothnccd_tree().items():
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_bytes(data)
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, **kw: str(cache))
    source = download(with_data(tiny_raw, source="kaggle", kaggle_handle="a/iqothnccd"))
    assert source["handle"] == "a/iqothnccd" and source["layout"] == "iqothnccd"
    assert source["files"] == len(iqothnccd_tree())


def test_kaggle_handle_is_validated(tiny_raw):
    with pytest.raises(UserError, match="data.kaggle_handle: 'not a handle'"):
        with_data(tiny_raw, source="kaggle", kaggle_handle="not a handle")
