"""The download stage: synthetic cohort, URL (from a loopback server), Kaggle, local path."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import requests
from PIL import Image

from lungct import phantom
from lungct.errors import UserError
from lungct.io import sources
from lungct.params import parse_params
from stages.download import download
from tests.loopback import Server

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


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def other_server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def no_credentials(tmp_path_factory, monkeypatch):
    """No netrc file and no credential variables but those a test sets."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    for name in ("NETRC", sources.TOKEN_ENV, sources.USER_ENV, sources.PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)


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


# --------------------------------------------------------------------------- credentials

SECRET = "hunter2-s3cret"
BASIC = "Basic " + base64.b64encode(f"reader:{SECRET}".encode()).decode()


def assert_no_secret(workdir: Path, *texts: str, secret: str = SECRET) -> None:
    """The secret is in no text given and in no file under the project folder."""
    for text in texts:
        assert secret not in text, text
    for path in workdir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_env_credentials_reach_the_named_host_and_are_never_recorded(
    workdir, tiny_raw, server, monkeypatch, caplog
):
    url, digest = server.add("/c.zip", make_zip(chest_ctscan_tree()))
    server.required["/c.zip"] = BASIC
    monkeypatch.setenv(sources.USER_ENV, "reader")
    monkeypatch.setenv(sources.PASSWORD_ENV, SECRET)
    source = download(with_data(tiny_raw, source="url", url=url + "?download=1", sha256=digest))
    assert source["url"] == url  # the query string is not recorded either
    assert server.authorizations("/c.zip") == [BASIC]
    assert_no_secret(workdir, caplog.text, json.dumps(source))


def test_bearer_token_from_the_environment(workdir, tiny_raw, server, monkeypatch):
    url, digest = server.add("/t.zip", make_zip(chest_ctscan_tree()))
    server.required["/t.zip"] = f"Bearer {SECRET}"
    monkeypatch.setenv(sources.TOKEN_ENV, SECRET)
    download(with_data(tiny_raw, source="url", url=url, sha256=digest))
    assert server.authorizations("/t.zip") == [f"Bearer {SECRET}"]
    assert_no_secret(workdir)


def test_netrc_credentials(workdir, tiny_raw, server, monkeypatch, tmp_path_factory):
    url, digest = server.add("/n.zip", make_zip(chest_ctscan_tree()))
    server.required["/n.zip"] = BASIC
    home = tmp_path_factory.mktemp("home")  # a home of this test's own, not the user's
    monkeypatch.setenv("HOME", str(home))
    netrc = home / "my-netrc"  # outside the project folder
    netrc.write_text(
        f"machine other.example login x password y\nmachine 127.0.0.1 login reader password {SECRET}\n"
    )
    monkeypatch.setenv("NETRC", str(netrc))
    download(with_data(tiny_raw, source="url", url=url, sha256=digest))
    assert server.authorizations("/n.zip") == [BASIC]
    # and ~/.netrc when NETRC is not set
    monkeypatch.delenv("NETRC")
    (Path.home() / ".netrc").write_text(netrc.read_text())
    download(with_data(tiny_raw, source="url", url=url, sha256=digest))
    assert server.authorizations("/n.zip") == [BASIC, BASIC]
    assert_no_secret(workdir)


@pytest.mark.parametrize("target", ["other-port", "localhost"])
def test_credentials_do_not_follow_a_redirect_to_another_host(
    workdir, tiny_raw, server, other_server, monkeypatch, target
):
    body = make_zip(chest_ctscan_tree())
    digest = hashlib.sha256(body).hexdigest()
    if target == "other-port":
        other_server.files["/moved.zip"] = body
        destination, where = f"{other_server.base}/moved.zip", other_server
    else:  # the same server under another host name
        server.files["/moved.zip"] = body
        destination, where = f"http://localhost:{server.port}/moved.zip", server
    server.redirects["/a.zip"] = destination
    server.redirects["/hop.zip"] = "/a.zip"  # a redirect on the named host keeps them
    monkeypatch.setenv(sources.TOKEN_ENV, SECRET)
    download(with_data(tiny_raw, source="url", url=f"{server.base}/hop.zip", sha256=digest))
    assert server.authorizations("/hop.zip") == [f"Bearer {SECRET}"]
    assert server.authorizations("/a.zip") == [f"Bearer {SECRET}"]
    assert where.authorizations("/moved.zip") == [None]
    assert_no_secret(workdir)


@pytest.mark.parametrize(
    ("named", "url", "send"),
    [
        ("https://data.example/a.zip", "https://data.example/b.zip", True),
        ("https://data.example/a.zip", "https://DATA.example:443/b.zip", True),
        ("https://data.example/a.zip", "http://data.example/a.zip", False),  # downgrade
        ("https://data.example:8443/a", "http://data.example:8443/a", False),
        ("http://data.example/a.zip", "https://data.example/a.zip", True),  # upgrade
        ("http://data.example:8080/a", "https://data.example:8443/a", False),
        ("https://data.example/a.zip", "https://cdn.example/a.zip", False),
        ("https://data.example/a.zip", "https://data.example.evil/a.zip", False),
        ("https://data.example/a.zip", "https://data.example:8443/a.zip", False),
        ("https://data.example/a.zip", "ftp://data.example/a.zip", False),
        ("https://data.example/a.zip", "https://data.example:abc/a.zip", False),
    ],
)
def test_where_credentials_may_go(named, url, send):
    assert sources.may_send_credentials(named, url) is send


def test_session_decides_on_every_redirect():
    """requests' own rule keeps the header on https -> http of one host, and adds netrc
    entries of the host redirected to; the session's rule does neither."""
    token = sources.Credentials("Bearer t", ("t",), "test")
    session = sources._Session("https://data.example/a.zip", token)
    first = session.prepare_request(requests.Request("GET", "https://data.example/a.zip"))
    assert first.headers["Authorization"] == "Bearer t"
    response = requests.Response()
    response.request = first
    for url, header in [
        ("http://data.example/a.zip", None),
        ("https://cdn.example/a.zip", None),
        ("https://data.example/b.zip", "Bearer t"),
    ]:
        redirected = first.copy()
        redirected.prepare_url(url, None)
        session.rebuild_auth(redirected, response)
        assert redirected.headers.get("Authorization") == header, url


@pytest.mark.parametrize(
    "url",
    [
        f"http://reader:{SECRET}@127.0.0.1:1/a.zip",
        f"https://{SECRET}@data.example/a.zip",
        f"https://reader:{SECRET}\\@data.example/a.zip",
        f"ftp://reader:{SECRET}@data.example/a.zip",
        f"https://data.example/a.zip?token={SECRET}",
        f"https://data.example/a.zip?X-Amz-Signature={SECRET}&x=1",
    ],
    ids=["user-password", "token-as-user", "backslash", "ftp", "query-token", "signed-url"],
)
@pytest.mark.parametrize("source", ["url", "synthetic"])
def test_a_url_with_a_secret_is_refused_without_showing_it(tiny_raw, url, source):
    # Also when unused: the whole data section is recorded in dvc.lock.
    with pytest.raises(UserError) as err:
        with_data(tiny_raw, source=source, url=url, sha256="a" * 64)
    message = str(err.value)
    assert message.startswith("params.yaml: data.url: ") and "\n" not in message
    assert SECRET not in message
    assert "LUNGCT_URL_TOKEN" in message and "netrc" in message


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/a.zip", "data.url: 'ftp://host/a.zip' is not an http"),
        ("http://host:abc/a.zip", "the port is not a number"),
        ("http://host:99999/a.zip", "the port is not a number"),
        ("http://host:0/a.zip", "the port is not a number"),
        ("http://[::1/a.zip", "unclosed '['"),
        ("http:///a.zip", "has no host name"),
        ("https://host/a b.zip", "a space or a control character"),
        ("https://host/a\x1b[2J.zip", "a space or a control character"),
        ("file://remote.example/a.zip", "a file on this machine"),
        ("", "a url source needs data.url"),
        ("a.zip", "is not an http"),
    ],
)
def test_bad_urls_are_one_line(tiny_raw, url, message):
    with pytest.raises(UserError) as err:
        with_data(tiny_raw, source="url", url=url, sha256="a" * 64)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_url_source_needs_a_sha256(tiny_raw):
    with pytest.raises(UserError, match="data.sha256: a url source needs"):
        with_data(tiny_raw, source="url", url="https://host/a.zip", sha256="")


def test_redact_never_raises_and_hides_secrets():
    assert sources.redact("http://u:p@h:1/a.zip?t=s#f") == "http://***@h:1/a.zip"
    assert sources.redact("http://[::1/a.zip") == "http://[::1/a.zip"
    assert sources.redact("http://u:p/ss@h/a") == "http://***@h/a"
    assert sources.redact("a\nb") == "a\\nb"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({sources.USER_ENV: "reader"}, "LUNGCT_URL_USER is set but LUNGCT_URL_PASSWORD is not"),
        ({sources.PASSWORD_ENV: SECRET}, "LUNGCT_URL_PASSWORD is set but LUNGCT_URL_USER"),
        ({sources.TOKEN_ENV: SECRET, sources.USER_ENV: "r"}, "both set"),
        ({"NETRC": "/nonexistent/netrc"}, "NETRC: /nonexistent/netrc: not found"),
    ],
)
def test_bad_credential_settings_are_one_line(workdir, server, monkeypatch, env, message):
    url, _ = server.add("/x.zip", b"x")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as err:
        sources.fetch_url(url, workdir / "x.zip", max_bytes=100)
    assert message in str(err.value) and SECRET not in str(err.value)
    assert server.seen == [] and not (workdir / "x.zip").exists()


def test_broken_netrc_names_the_line_not_its_content(workdir, server, monkeypatch, tmp_path):
    url, _ = server.add("/x.zip", b"x")
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login reader password {SECRET}\n{SECRET}-garbage x\n")
    monkeypatch.setenv("NETRC", str(netrc))
    with pytest.raises(UserError) as err:
        sources.fetch_url(url, workdir / "x.zip", max_bytes=100)
    assert str(err.value) == f"{netrc}: not a valid netrc file (line 2)"


def test_wrong_credentials_say_where_they_came_from(workdir, server, monkeypatch):
    url, _ = server.add("/x.zip", b"x")
    server.required["/x.zip"] = "Bearer right"
    monkeypatch.setenv(sources.TOKEN_ENV, SECRET)
    with pytest.raises(UserError) as err:
        sources.fetch_url(url + "?download=1", workdir / "x.zip", max_bytes=100)
    assert str(err.value) == (
        f"{url}: HTTP 401 Unauthorized (credentials sent from LUNGCT_URL_TOKEN; see docs/data.md)"
    )


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/loop.zip", "cannot download (more than 10 redirects)"),
        ("/ftp.zip", "cannot download (redirected to a URL that is not http or https)"),
        ("/bad-port.zip", "cannot download (redirected to an invalid URL)"),
        ("/closed.zip", "cannot download (Connection refused)"),
    ],
)
def test_network_failures_are_one_line_without_the_query(
    workdir, server, other_server, path, message
):
    closed = other_server.base
    other_server.close()
    server.redirects.update(
        {
            "/loop.zip": "/loop.zip",
            "/ftp.zip": "ftp://127.0.0.1/a.zip",
            "/bad-port.zip": "http://127.0.0.1:abc/a.zip",
            "/closed.zip": f"{closed}/a.zip?sig=1",
        }
    )
    with pytest.raises(UserError) as err:
        sources.fetch_url(f"{server.base}{path}?x=1", workdir / "x.zip", max_bytes=100)
    assert str(err.value) == f"{server.base}{path}: {message}"
    assert not (workdir / "x.zip").exists()


def test_downloads_stop_at_max_bytes(workdir, server):
    url, _ = server.add("/big.zip", bytes(5000))
    with pytest.raises(UserError, match=r"5000 bytes exceed data.max_bytes \(4000\)"):
        sources.fetch_url(url, workdir / "big.zip", max_bytes=4000)
    server.unsized.add("/big.zip")  # no Content-Length: counted while streaming
    with pytest.raises(UserError, match=r"more than data.max_bytes \(4000\)"):
        sources.fetch_url(url, workdir / "big.zip", max_bytes=4000)
    assert not (workdir / "big.zip").exists()
    assert len(sources.fetch_url(url, workdir / "big.zip", max_bytes=5000)) == 64


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


def dataset_folder(root: Path) -> Path:
    folder = root / "dataset"
    for name, data in chest_ctscan_tree().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    "link",
    [
        lambda folder, outside: (folder / "Data/loop").symlink_to(".."),  # copies without end
        lambda folder, outside: (folder / "Data/self").symlink_to(folder),
        lambda folder, outside: (folder / "Data/test/normal/x.png").symlink_to(outside / "big"),
        lambda folder, outside: (folder / "Data/more").symlink_to(outside),  # past the limits
        lambda folder, outside: (folder / "Data/gone").symlink_to(outside / "nothing"),
        lambda folder, outside: os.mkfifo(folder / "Data/pipe"),  # would block a copy
    ],
    ids=["link-to-parent", "link-to-top", "file-link", "folder-link", "broken-link", "fifo"],
)
def test_folder_links_and_special_files_are_refused_by_name(workdir, tiny_raw, tmp_path, link):
    folder = dataset_folder(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(bytes(3_000_000))
    link(folder, outside)
    with pytest.raises(UserError) as err:
        download(with_data(tiny_raw, source="path", path=str(folder), max_bytes=2_000_000))
    text = str(err.value)
    assert text.startswith(str(folder / "Data")) and "links are not followed" in text, text
    assert not (workdir / "data/raw").exists() and list((workdir / "data").iterdir()) == []


def test_folder_limits_count_exactly_what_is_copied(workdir, tiny_raw, tmp_path):
    folder = dataset_folder(tmp_path)
    files = len(chest_ctscan_tree())
    size = sum(map(len, chest_ctscan_tree().values()))
    folders = len({p for p in folder.rglob("*") if p.is_dir()})
    with pytest.raises(UserError, match=f"over the limit data.max_members={files + folders - 1}"):
        download(
            with_data(tiny_raw, source="path", path=str(folder), max_members=files + folders - 1)
        )
    with pytest.raises(UserError, match=f"over the limit data.max_bytes={size - 1}"):
        download(with_data(tiny_raw, source="path", path=str(folder), max_bytes=size - 1))
    limits = {"max_members": files + folders, "max_bytes": size}
    source = download(with_data(tiny_raw, source="path", path=str(folder), **limits))
    assert (source["files"], source["bytes"]) == (files, size)


def test_the_named_path_may_be_a_link(workdir, tiny_raw, tmp_path):
    link = tmp_path / "current"
    link.symlink_to(dataset_folder(tmp_path))
    assert download(with_data(tiny_raw, source="path", path=str(link)))["layout"] == "chest-ctscan"


def test_path_that_is_not_a_folder_or_file(workdir, tiny_raw, tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UserError, match=r"pipe: is a FIFO, not a folder or an archive"):
        download(with_data(tiny_raw, source="path", path=str(tmp_path / "pipe")))
    with pytest.raises(UserError, match=r"/dev/null: is a device"):
        download(with_data(tiny_raw, source="path", path="/dev/null"))


@pytest.mark.parametrize("path", [".", "data"])
def test_path_holding_the_output_is_refused(workdir, tiny_raw, path):
    dataset_folder(workdir)
    with pytest.raises(UserError, match="holds the folder the data is written to"):
        download(with_data(tiny_raw, source="path", path=path))
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


@pytest.mark.parametrize(
    "handle",
    [
        "not a handle",
        "../..",
        "owner/..",
        "../dataset",
        "owner/dataset/..",
        "owner/dataset/versions/x",
        "owner/dataset/versions/0",
        "owner/dataset/extra",
        "owner//dataset",
        "/owner/dataset",
        "owner/dataset\n",
        "owner/data.set",
        "",
    ],
)
def test_bad_kaggle_handles_are_refused(tiny_raw, handle):
    with pytest.raises(UserError) as err:
        with_data(tiny_raw, source="kaggle", kaggle_handle=handle)
    text = str(err.value)
    assert text.startswith("params.yaml: data.kaggle_handle: ") and "\n" not in text


@pytest.mark.parametrize(
    "handle", ["mohamedhanyyy/chest-ctscan-images", "a/iqothnccd", "Owner_1/set-2/versions/3"]
)
def test_kaggle_handles(tiny_raw, handle):
    assert with_data(tiny_raw, source="kaggle", kaggle_handle=handle).data.kaggle_handle == handle
