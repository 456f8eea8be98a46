"""The bad-input sweep: one table of broken and hostile inputs across the whole pipeline.

For every case the command must exit non-zero with exactly one ``error:`` line that
names the problem (for predict's per-file failures: one ``file: reason`` line for the
file instead), print no traceback, and leave behind no output a later run could mistake
for a good one and no temporary file. A case that holds a secret (a password, a token)
must show it nowhere: not in the output, not in the log, not in any file the run wrote
(``dvc.lock``, DVC's caches, ``SOURCE.json``, metrics).

Most cases run the stage's ``main`` in this process, through ``lungct.errors.run_stage``
as ``python -m stages.<name>`` does; those marked ``real`` run the real entry point in a
child process (and one runs ``dvc repro``), as proof that both behave the same. No case
touches the internet: URLs point at a loopback server, and every run has a proxy that
refuses connections to anywhere else. The README quotes the number of cases here plus
those of ``tests/test_bad_files.py`` (:func:`case_count`).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lungct.errors import run_stage
from lungct.params import merge, parse_params
from stages.convert import convert
from stages.download import download
from tests.conftest import ROOT, TINY, project_params
from tests.dvc_project import command_env, dvc_project
from tests.loopback import Server
from tests.test_non_finite import config_bomb, nan_tiff, nan_weights

SECRET = "hunter2-Zq8v"  # every secret below holds it; it must show up nowhere
PROJECT_TEXT = (ROOT / "params.yaml").read_text(encoding="utf-8")
TF_NOISE = ("I0000", "W0000", "E0000", "WARNING: All log messages")
# Variables a run must not inherit from the machine: credentials, proxies, caches.
INHERITED = (
    "NETRC",
    "LUNGCT_URL_TOKEN",
    "LUNGCT_URL_USER",
    "LUNGCT_URL_PASSWORD",
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_API_TOKEN",
    "KAGGLEHUB_CACHE",
    "ALL_PROXY",
    "all_proxy",
)
# Anything that is not the loopback server goes to a proxy that refuses the connection.
NO_INTERNET = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


@dataclass(frozen=True)
class Case:
    id: str
    prepare: Callable[[Path], None]  # builds the broken project in an empty folder
    command: list[str]  # after `python -m`
    says: str  # the error line (or the file's reason line) must contain this
    absent: list[str] = field(default_factory=list)  # outputs that must not exist after
    exit_code: int | None = 2  # None: any non-zero
    env: dict[str, str] = field(default_factory=dict)  # "{home}" is the run's HOME
    secret: bool = False  # SECRET must appear nowhere
    real: bool = False  # run `python -m ...` in a child process
    per_file: bool = False  # predict's file failures: a reason line, no error line


# --------------------------------------------------------------------------- builders


def write_params(root: Path, override: dict | None = None, text: str | None = None) -> None:
    params = merge(merge(project_params(), TINY), override or {})
    (root / "params.yaml").write_text(text if text is not None else yaml.safe_dump(params))


def params_with(override: dict) -> Callable[[Path], None]:
    return lambda root: write_params(root, override)


def params_without(section: str, key: str) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        params = merge(project_params(), TINY)
        del params[section][key]
        (root / "params.yaml").write_text(yaml.safe_dump(params))

    return prepare


def params_text(edit: Callable[[str], str]) -> Callable[[Path], None]:
    """params.yaml as the project writes it (comments and all), edited as text."""
    return lambda root: (root / "params.yaml").write_text(edit(PROJECT_TEXT), encoding="utf-8")


def params_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda root: (root / "params.yaml").write_bytes(data)


def data_params(**data: object) -> Callable[[Path], None]:
    return params_with({"data": data})


def then(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        for step in steps:
            step(root)

    return prepare


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)  # 10**9 x's if expanded


def params_fifo(root: Path) -> None:
    os.mkfifo(root / "params.yaml")  # reading it would block for ever


# URL sources, from a loopback server shared by the cases (each uses its own paths).


@functools.cache
def web() -> Server:
    server = Server()
    atexit.register(server.close)
    return server


def url_source(
    path: str,
    body: bytes | None = b"some bytes",
    *,
    url: str = "{base}{path}",
    sha256: str | None = None,
    setup: Callable[[Server], None] = lambda server: None,
    **data: object,
) -> Callable[[Path], None]:
    """params.yaml with a url source; ``url`` may name ``{base}``, ``{port}``, ``{path}``."""

    def prepare(root: Path) -> None:
        server = web()
        digest = web().add(path, body)[1] if body is not None else "0" * 64
        setup(server)
        shown = url.format(base=server.base, port=server.port, path=path)
        data_params(source="url", url=shown, sha256=sha256 or digest, **data)(root)

    return prepare


def secret_url(url: str, source: str = "url") -> Callable[[Path], None]:
    return data_params(source=source, url=url, sha256="a" * 64)


def redirect(path: str, location: str) -> Callable[[Server], None]:
    def setup(server: Server) -> None:
        server.redirects[path] = location.format(base=server.base, port=server.port)

    return setup


def protect(path: str, header: str) -> Callable[[Server], None]:
    return lambda server: server.required.__setitem__(path, header)


def netrc_file(text: str) -> Callable[[Path], None]:
    """A netrc file outside the project, in the run's HOME (NETRC points at it)."""
    return lambda root: (root.parent / "home" / "netrc").write_text(text)


# Local folders and archives.


def zip_of(files: dict[str, bytes], *, encrypted: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    data = buffer.getvalue()
    if encrypted:  # the encryption flag of the (last) member in the central directory
        at = data.rindex(b"PK\x01\x02") + 8
        data = data[:at] + b"\x01\x00" + data[at + 2 :]
    return data


def tar_of(members: list[tarfile.TarInfo], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for info in members:
            data = os.urandom(info.size) if info.isreg() else None  # not compressible
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return info


def archive_source(name: str, data: bytes, **limits: object) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        (root / "incoming").mkdir()
        (root / "incoming" / name).write_bytes(data)
        data_params(source="path", path=str(root / "incoming" / name), **limits)(root)

    return prepare


def source_folder(
    build: Callable[[Path], None] = lambda incoming: None, **limits: object
) -> Callable[[Path], None]:
    """params.yaml reading data from ``<root>/incoming``, built by ``build``."""

    def prepare(root: Path) -> None:
        incoming = root / "incoming"
        incoming.mkdir()
        build(incoming)
        data_params(source="path", path=str(incoming), **limits)(root)

    return prepare


def chest_ct_pngs(classes: list[str], garbage: bool = False) -> Callable[[Path], None]:
    """A Chest CT-Scan-style tree (``train/<class>/``) of small PNGs, or of non-images."""

    def build(incoming: Path) -> None:
        rng = np.random.default_rng(0)
        for name in classes:
            folder = incoming / "train" / name
            folder.mkdir(parents=True)
            for i in range(3):
                if garbage:
                    (folder / f"{i}.png").write_bytes(b"not a png at all " * 4)
                else:
                    pixels = rng.integers(0, 255, (40, 40), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i}.png")

    return build


def with_extra(make: Callable[[Path], None]) -> Callable[[Path], None]:
    """A good dataset folder plus one odd entry, made by ``make(folder)``."""

    def build(incoming: Path) -> None:
        chest_ct_pngs(["normal", "adenocarcinoma"])(incoming)
        make(incoming)

    return build


def empty_zip(incoming: Path) -> None:
    with zipfile.ZipFile(incoming / "data.zip", "w"):
        pass


def source_archive(root: Path) -> None:
    source_folder(empty_zip)(root)
    data_params(source="path", path=str(root / "incoming/data.zip"))(root)


def kaggle_cache(build: Callable[[Path], None]) -> Callable[[Path], None]:
    """A kagglehub cache (KAGGLEHUB_CACHE) holding owner/dataset version 1, built by
    ``build``: kagglehub finds it there and asks no server."""

    def prepare(root: Path) -> None:
        cache = root.parent / "home" / "kagglehub"
        dataset = cache / "datasets/owner/dataset"
        (dataset / "versions/1").mkdir(parents=True)
        (dataset / "1.complete").touch()
        build(dataset / "versions/1")
        data_params(source="kaggle", kaggle_handle="owner/dataset/versions/1")(root)

    return prepare


# Pipeline stages past download.


def downloaded(
    override: dict | None = None,
    then_convert: bool = False,
    edit: Callable[[dict], None] = lambda params: None,
    damage: Callable[[Path], None] = lambda root: None,
):
    """params.yaml (the tiny one, overridden, then edited) and data/raw (and data/converted)
    made by the real stages, in-process, then damaged."""

    def prepare(root: Path) -> None:
        params = merge(merge(project_params(), TINY), override or {})
        edit(params)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        cwd = os.getcwd()
        os.chdir(root)
        try:
            params = parse_params(yaml.safe_load((root / "params.yaml").read_text()))
            download(params)
            if then_convert:
                convert(params.convert)
        finally:
            os.chdir(cwd)
        damage(root)

    return prepare


def downloaded_folder(build: Callable[[Path], None]) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        source_folder(build)(root)
        downloaded({"data": {"source": "path", "path": str(root / "incoming")}})(root)

    return prepare


def trained(damage: Callable[[Path], None] = lambda root: None) -> Callable[[Path], None]:
    """A copy of the session's tiny trained project, without its eval.json, then damaged."""

    def prepare(root: Path) -> None:
        project = dvc_project()
        for part in ("params.yaml", "data/splits", "models", "metrics"):
            source, target = project / part, root / part
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy(source, target)
        (root / "metrics/eval.json").unlink()
        damage(root)

    return prepare


def git_init(root: Path) -> None:
    subprocess.run(["git", "init", "-q", str(root)], check=True)


def truncate_model(root: Path) -> None:
    model = root / "models/model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])


def data_is_a_file(root: Path) -> None:
    write_params(root)
    (root / "data").write_text("a file where the data folder should be\n")


def write(path: str, data: bytes | str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            target.write_text(data)
        else:
            target.write_bytes(data)

    return damage


def remove(path: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        target = root / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return damage


def first_train_image_removed(root: Path) -> None:
    sorted((root / "data/splits/train").rglob("*.png"))[0].unlink()


def only_one_class(root: Path) -> None:
    table = (root / "data/splits/splits.csv").read_text().splitlines()
    header, rows = table[0], table[1:]
    first = rows[0].split(",")[1]
    kept = [row for row in rows if row.split(",")[1] == first]
    (root / "data/splits/splits.csv").write_text("\n".join([header, *kept]) + "\n")


def output_is(make: Callable[[Path], None]) -> Callable[[Path], None]:
    """The trained project, and ``make(root / "out.csv")`` where predict is to write."""
    return trained(lambda root: make(root / "out.csv"))


def unix_socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()


def dvc_project_with(override: dict) -> Callable[[Path], None]:
    """A DVC project (no git) of this repository's pipeline, with params overridden."""

    def prepare(root: Path) -> None:
        shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
        for package in ("lungct", "stages"):
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(ROOT / package, root / package, ignore=ignore)
        write_params(root, override)
        subprocess.run(
            [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"],
            cwd=root,
            env=command_env(),
            check=True,
        )

    return prepare


# --------------------------------------------------------------------------- the table

DOWNLOAD = ["stages.download"]
RAW = ["data/raw"]
PREDICT = ["stages.predict", "data/splits/test", "--output", "out.csv"]
U = f"reader:{SECRET}"

PARAMS_CASES = [
    Case(
        "params-yaml-syntax",
        params_text(lambda t: "base: {seed: 42\n"),
        DOWNLOAD,
        "params.yaml: not valid YAML",
        RAW,
        real=True,
    ),
    Case(
        "params-wrong-type",
        params_with({"train": {"epochs": "ten"}}),
        DOWNLOAD,
        "train.epochs",
        RAW,
    ),
    Case(
        "params-unknown-key",
        params_with({"train": {"lrr": 0.1}}),
        DOWNLOAD,
        "train.lrr: unknown key",
        RAW,
    ),
    Case(
        "params-class-name-a-path",
        params_with({"split": {"classes": {"normal": "../../../../tmp/x", "benign": "b"}}}),
        ["stages.split"],
        "split.classes: class name '../../../../tmp/x' is not letters",
        ["data/splits", "metrics/split.json"],
    ),
    Case(
        "params-class-name-nul",
        params_with({"split": {"classes": {"normal": "n\x00", "benign": "b"}}}),
        ["stages.split"],
        "split.classes: class name 'n\\x00' is not letters",
        ["data/splits", "metrics/split.json"],
    ),
    Case(
        "params-classes-all-left-out",
        params_with({"split": {"classes": {"normal": "", "benign": "", "malignant": ""}}}),
        ["stages.split"],
        "split.classes: a mapping must name two classes or more, got 0",
        ["data/splits", "metrics/split.json"],
    ),
    Case(
        "params-missing-key",
        params_without("evaluate", "bootstrap"),
        DOWNLOAD,
        "evaluate.bootstrap",
        RAW,
    ),
    Case("params-file-missing", lambda root: None, DOWNLOAD, "params.yaml: not found", RAW),
    Case(
        "params-utf-16",
        params_bytes(PROJECT_TEXT.encode("utf-16")),
        DOWNLOAD,
        "params.yaml: not UTF-8 text",
        RAW,
        real=True,
    ),
    Case(
        "params-latin-1",
        params_bytes(("# caf\u00e9\n" + PROJECT_TEXT).encode("latin-1")),
        DOWNLOAD,
        "params.yaml: not UTF-8 text (byte 5",
        RAW,
    ),
    Case(
        "params-nested-10000-lists",
        params_bytes(b"x: " + b"[" * 10_000 + b"]" * 10_000 + b"\n"),
        DOWNLOAD,
        "nested deeper than 32 levels",
        RAW,
    ),
    Case(
        "params-nested-10000-mappings",
        params_bytes(b"x: " + b"{a: " * 10_000 + b"1" + b"}" * 10_000 + b"\n"),
        DOWNLOAD,
        "nested deeper than 32 levels",
        RAW,
    ),
    Case(
        "params-seed-4301-digits",
        params_text(lambda t: t.replace("seed: 42", "seed: " + "7" * 4301)),
        DOWNLOAD,
        "base.seed: integer too large",
        RAW,
        real=True,
    ),
    Case(
        "params-seed-30-digits",
        params_text(lambda t: t.replace("seed: 42", "seed: " + "9" * 30)),
        DOWNLOAD,
        "base.seed: integer too large",
        RAW,
    ),
    Case(
        "params-seed-over-32-bits",
        params_with({"base": {"seed": 2**32}}),
        DOWNLOAD,
        "base.seed: input should be less than or equal to 4294967295",
        RAW,
    ),
    Case(
        "params-seed-negative",
        params_with({"base": {"seed": -1}}),
        DOWNLOAD,
        "base.seed: input should be greater than or equal to 0",
        RAW,
    ),
    Case(
        "params-seed-a-string",
        params_with({"base": {"seed": "42"}}),
        DOWNLOAD,
        "base.seed: input should be a valid integer",
        RAW,
    ),
    Case(
        "params-seed-a-bool",
        params_with({"base": {"seed": True}}),
        DOWNLOAD,
        "base.seed: input should be a valid integer",
        RAW,
    ),
    Case(
        "params-huge-epochs-for-train",
        params_with({"train": {"epochs": 10**30}}),
        ["stages.train"],
        "train.epochs: integer too large",
        ["models/model.keras", "metrics/train.json"],
    ),
    Case(
        "params-duplicate-section",
        params_text(lambda t: t + "\nbase:\n  seed: 1\n"),
        DOWNLOAD,
        "duplicate key 'base' (first given at line 2)",
        RAW,
    ),
    Case(
        "params-duplicate-key",
        params_text(lambda t: t.replace("seed: 42", "seed: 42\n  seed: 43")),
        DOWNLOAD,
        "line 4: duplicate key 'seed' (first given at line 3)",
        RAW,
    ),
    Case(
        "params-impossible-date",
        params_text(lambda t: t.replace("seed: 42", "seed: 2024-13-01")),
        DOWNLOAD,
        "line 3: month must be in 1..12",
        RAW,
    ),
    Case(
        "params-python-tag",
        params_bytes(b"!!python/object/apply:os.system ['touch pwned']\n"),
        DOWNLOAD,
        "could not determine a constructor",
        [*RAW, "pwned"],
    ),
    Case(
        "params-nul-byte",
        params_bytes(b"base: {seed: 1\x00}\n"),
        DOWNLOAD,
        "unacceptable character #x0000",
        RAW,
    ),
    Case(
        "params-empty",
        params_bytes(b""),
        DOWNLOAD,
        "params.yaml: expected a mapping of sections, got NoneType",
        RAW,
    ),
    Case(
        "params-a-list",
        params_bytes(b"- base\n- data\n"),
        DOWNLOAD,
        "expected a mapping of sections, got list",
        RAW,
    ),
    Case(
        "params-a-folder",
        lambda root: (root / "params.yaml").mkdir(),
        DOWNLOAD,
        "params.yaml: not a regular file",
        RAW,
    ),
    Case("params-a-fifo", params_fifo, DOWNLOAD, "params.yaml: not a regular file", RAW),
    Case(
        "params-alias-bomb",
        params_text(lambda t: ALIAS_BOMB + t.replace("base:\n  seed: 42", "base: *i")),
        DOWNLOAD,
        "base: input should be a valid dictionary",
        RAW,
    ),
    Case(
        "params-nan-class-weight",
        params_text(lambda t: t.replace("malignant: 1.0", "malignant: .nan")),
        DOWNLOAD,
        "class_balance.malignant: input should be a finite number",
        RAW,
    ),
    Case(
        "params-section-not-a-mapping",
        params_with({"train": "fast"}),
        DOWNLOAD,
        "train: input should be a valid dictionary",
        RAW,
    ),
    Case(
        "params-for-split",
        params_with({"split": {"val_fraction": 0.6, "test_fraction": 0.6}}),
        ["stages.split"],
        "split.test_fraction",
        ["data/splits", "metrics/split.json"],
    ),
    Case(
        "params-for-evaluate",
        params_with({"evaluate": {"bootstrap": -1}}),
        ["stages.evaluate"],
        "evaluate.bootstrap",
        ["metrics/eval.json"],
    ),
    Case(
        "params-path-without-its-source",
        data_params(path="/some/folder"),
        DOWNLOAD,
        "data.path: set, but data.source is synthetic (only data.source: path reads it)",
        RAW,
        real=True,
    ),
    Case(
        "params-crop-side-without-a-crop",
        params_with({"convert": {"crop_mm": 48.0}}),
        ["stages.convert"],
        "convert.crop_mm: set, but convert.crop is none (only convert.crop: lesion reads it)",
        ["data/converted", "metrics/convert.json"],
    ),
    Case(
        "params-pretrained-without-a-backbone",
        params_with({"train": {"pretrained": True}}),
        ["stages.train"],
        "train.pretrained: set, but train.backbone is cnn",
        ["models/model.keras", "metrics/train.json"],
    ),
    Case(
        "params-unknown-key-says-how-to-get-back",
        # what `dvc exp run -S +train.lrr=0.1` adds, and leaves after the failed run
        params_text(lambda t: t.replace("\nevaluate:", "  lrr: 0.1\n\nevaluate:")),
        ["stages.train"],
        "train.lrr: unknown key; remove it, or restore the committed file: "
        "git checkout params.yaml",
        ["models/model.keras", "metrics/train.json"],
        real=True,
    ),
    Case(
        "params-broken-in-a-trained-project",
        trained(then(remove("metrics/train.json"), write("params.yaml", "base: ["))),
        ["stages.train"],
        "params.yaml: not valid YAML",
        ["metrics/train.json"],
    ),
    # numbers no real run can use: each used to run until the machine gave out
    Case(
        "params-a-billion-patients",
        params_with({"data": {"synthetic": {"patients": 10**9}}}),
        DOWNLOAD,
        "data.synthetic.patients: input should be less than or equal to 10000",
        RAW,
    ),
    Case(
        "params-a-billion-dense-units",
        trained(then(remove("metrics/train.json"), params_with({"train": {"dense_units": 10**9}}))),
        ["stages.train"],
        "train.dense_units: input should be less than or equal to 8192",
        ["metrics/train.json"],
    ),
    Case(
        "params-a-million-filters",
        params_with({"train": {"filters": [10**6]}}),
        DOWNLOAD,
        "train.filters.0: input should be less than or equal to 1024",
        RAW,
    ),
    Case(
        "params-epochs-2-to-the-62",
        trained(then(remove("metrics/train.json"), params_with({"train": {"epochs": 2**62}}))),
        ["stages.train"],
        "train.epochs: input should be less than or equal to 10000",
        ["metrics/train.json"],
    ),
]

URL_CASES = [
    Case(
        "url-user-and-password",
        secret_url(f"http://{U}@127.0.0.1:1/a.zip"),
        DOWNLOAD,
        "data.url: holds a user name or password",
        RAW,
        secret=True,
        real=True,
    ),
    Case(
        "url-token-as-user",
        secret_url(f"https://{SECRET}@data.example/a.zip"),
        DOWNLOAD,
        "data.url: holds a user name or password",
        RAW,
        secret=True,
    ),
    Case(
        "url-password-before-a-backslash",
        secret_url(f"https://{U}\\@data.example/a.zip"),
        DOWNLOAD,
        "data.url: holds a user name or password (https://***@data.example/a.zip)",
        RAW,
        secret=True,
    ),
    Case(
        "url-ftp-with-password",
        secret_url(f"ftp://{U}@data.example/a.zip"),
        DOWNLOAD,
        "data.url: holds a user name or password (ftp://***@data.example/a.zip)",
        RAW,
        secret=True,
    ),
    Case(
        "url-query-token",
        secret_url(f"https://data.example/a.zip?token={SECRET}"),
        DOWNLOAD,
        "data.url: its query parameter 'token' looks like a credential",
        RAW,
        secret=True,
    ),
    Case(
        "url-signed",
        secret_url(f"https://b.example/a.zip?X-Amz-Signature={SECRET}&v=1"),
        DOWNLOAD,
        "looks like a credential",
        RAW,
        secret=True,
    ),
    Case(
        "url-password-unused",
        secret_url(f"https://{U}@data.example/a", "synthetic"),
        DOWNLOAD,
        "data.url: holds a user name or password",
        RAW,
        secret=True,
    ),
    Case(
        "url-password-in-dvc-repro",
        dvc_project_with(
            {
                "data": {
                    "source": "url",
                    "sha256": "a" * 64,
                    "url": f"https://{U}@data.example/a.zip",
                }
            }
        ),
        ["dvc", "repro", "download"],
        "data.url: holds a user name or password",
        [*RAW, "dvc.lock"],
        None,
        secret=True,
        real=True,
    ),
    Case(
        "url-ftp",
        secret_url("ftp://data.example/a.zip"),
        DOWNLOAD,
        "data.url: 'ftp://data.example/a.zip' is not an http, https or file URL",
        RAW,
    ),
    Case(
        "url-port-abc",
        secret_url("http://data.example:abc/a.zip"),
        DOWNLOAD,
        "the port is not a number from 1 to 65535",
        RAW,
    ),
    Case(
        "url-port-99999",
        secret_url("http://data.example:99999/a.zip"),
        DOWNLOAD,
        "the port is not a number from 1 to 65535",
        RAW,
    ),
    Case(
        "url-unclosed-ipv6",
        secret_url("http://[::1/a.zip"),
        DOWNLOAD,
        "the host has an unclosed '['",
        RAW,
    ),
    Case("url-no-host", secret_url("http:///a.zip"), DOWNLOAD, "has no host name", RAW),
    Case(
        "url-control-character",
        secret_url("http://data.example/a\x1b[2J.zip"),
        DOWNLOAD,
        "contains a space or a control character",
        RAW,
    ),
    Case("url-empty", secret_url(""), DOWNLOAD, "a url source needs data.url", RAW),
    Case(
        "url-sha256-missing",
        data_params(source="url", url="https://a.example/a.zip", sha256=""),
        DOWNLOAD,
        "data.sha256: a url source needs",
        RAW,
    ),
    Case(
        "url-sha256-mismatch",
        url_source("/mismatch.zip", sha256="0" * 64),
        DOWNLOAD,
        "/mismatch.zip: sha256 mismatch",
        RAW,
    ),
    Case("url-http-404", url_source("/404.zip", None), DOWNLOAD, "/404.zip: HTTP 404", RAW),
    Case(
        "url-http-401-token",
        url_source("/401.zip", setup=protect("/401.zip", "Bearer x")),
        DOWNLOAD,
        "/401.zip: HTTP 401 Unauthorized (credentials sent from LUNGCT_URL_TOKEN",
        RAW,
        env={"LUNGCT_URL_TOKEN": SECRET},
        secret=True,
    ),
    Case(
        "url-redirect-to-another-host",
        url_source(
            "/away.zip",
            None,
            setup=then(
                redirect("/away.zip", "http://localhost:{port}/there.zip"),
                protect("/there.zip", f"Bearer {SECRET}"),
            ),
        ),
        DOWNLOAD,
        "/there.zip, where credentials are not sent",
        RAW,
        env={"LUNGCT_URL_TOKEN": SECRET},
        secret=True,
    ),
    Case(
        "url-redirect-loop",
        url_source("/loop.zip", None, setup=redirect("/loop.zip", "/loop.zip")),
        DOWNLOAD,
        "cannot download (more than 10 redirects)",
        RAW,
    ),
    Case(
        "url-redirect-to-ftp",
        url_source("/to-ftp.zip", None, setup=redirect("/to-ftp.zip", "ftp://x/a")),
        DOWNLOAD,
        "redirected to a URL that is not http or https",
        RAW,
    ),
    Case(
        "url-connection-refused",
        data_params(source="url", url="http://127.0.0.1:9/a.zip", sha256="a" * 64),
        DOWNLOAD,
        "http://127.0.0.1:9/a.zip: cannot download (Connection refused)",
        RAW,
    ),
    Case(
        "url-truncated",
        url_source("/cut.zip", b"x" * 5000, setup=lambda server: server.truncate.add("/cut.zip")),
        DOWNLOAD,
        "the download is incomplete",
        RAW,
    ),
    Case(
        "url-over-max-bytes",
        url_source("/big.zip", b"x" * 5000, max_bytes=4000),
        DOWNLOAD,
        "5000 bytes exceed data.max_bytes (4000)",
        RAW,
    ),
    Case(
        "url-over-max-bytes-unsized",
        url_source(
            "/big-unsized.zip",
            b"x" * 5000,
            max_bytes=4000,
            setup=lambda server: server.unsized.add("/big-unsized.zip"),
        ),
        DOWNLOAD,
        "more than data.max_bytes (4000) bytes",
        RAW,
    ),
    Case(
        "url-not-an-archive",
        url_source("/page.zip", b"<html>sign in</html>\n"),
        DOWNLOAD,
        "page.zip: not a zip or tar archive",
        RAW,
    ),
    Case(
        "url-zip-slip",
        url_source("/slip.zip", zip_of({"../evil.txt": b"x"})),
        DOWNLOAD,
        "slip.zip: member '../evil.txt' escapes the target folder",
        [*RAW, "evil.txt"],
    ),
    Case(
        "url-file-missing",
        data_params(source="url", url="file:///nonexistent/a.zip", sha256="a" * 64),
        DOWNLOAD,
        "file:///nonexistent/a.zip: not found",
        RAW,
    ),
    Case(
        "url-file-a-folder",
        data_params(source="url", url="file:///tmp", sha256="a" * 64),
        DOWNLOAD,
        "file:///tmp: not a regular file",
        RAW,
    ),
    Case(
        "url-file-remote-host",
        data_params(source="url", url="file://host.example/a.zip", sha256="a" * 64),
        DOWNLOAD,
        "a file URL names a file on this machine",
        RAW,
    ),
    Case(
        "url-netrc-broken",
        then(
            netrc_file(f"machine 127.0.0.1 login r password {SECRET}\n{SECRET} x\n"),
            url_source("/netrc.zip"),
        ),
        DOWNLOAD,
        "netrc: not a valid netrc file (line 2)",
        RAW,
        env={"NETRC": "{home}/netrc"},
        secret=True,
    ),
    Case(
        "url-netrc-missing",
        url_source("/no-netrc.zip"),
        DOWNLOAD,
        "NETRC: /nonexistent/netrc: not found",
        RAW,
        env={"NETRC": "/nonexistent/netrc"},
    ),
    Case(
        "url-password-without-user",
        url_source("/half.zip"),
        DOWNLOAD,
        "LUNGCT_URL_PASSWORD is set but LUNGCT_URL_USER is not",
        RAW,
        env={"LUNGCT_URL_PASSWORD": SECRET},
        secret=True,
    ),
    Case(
        "url-token-and-password",
        url_source("/both.zip"),
        DOWNLOAD,
        "are both set",
        RAW,
        env={"LUNGCT_URL_TOKEN": SECRET, "LUNGCT_URL_USER": "r", "LUNGCT_URL_PASSWORD": SECRET},
        secret=True,
    ),
]

KAGGLE_CASES = [
    Case(
        "kaggle-handle-dot-dot",
        data_params(source="kaggle", kaggle_handle="../.."),
        DOWNLOAD,
        "data.kaggle_handle: '../..' is not a Kaggle dataset handle",
        RAW,
    ),
    Case(
        "kaggle-handle-bad-version",
        data_params(source="kaggle", kaggle_handle="owner/dataset/versions/x"),
        DOWNLOAD,
        "is not a Kaggle dataset handle",
        RAW,
    ),
    Case(
        "kaggle-handle-spaces",
        data_params(source="kaggle", kaggle_handle="my dataset"),
        DOWNLOAD,
        "is not a Kaggle dataset handle",
        RAW,
    ),
    Case(
        "kaggle-handle-empty",
        data_params(source="kaggle", kaggle_handle=""),
        DOWNLOAD,
        "data.kaggle_handle: '' is not a Kaggle dataset handle",
        RAW,
    ),
    Case(
        "kaggle-download-fails",
        data_params(source="kaggle", kaggle_handle="owner/gone"),
        DOWNLOAD,
        "data.kaggle_handle 'owner/gone': Kaggle download failed",
        RAW,
        env={"KAGGLE_USERNAME": "reader", "KAGGLE_KEY": SECRET},
        secret=True,
    ),
    Case(
        "kaggle-dataset-with-a-link",
        kaggle_cache(with_extra(lambda folder: (folder / "link").symlink_to("/etc"))),
        DOWNLOAD,
        "link: is a symbolic link; links are not followed",
        RAW,
        env={"KAGGLEHUB_CACHE": "{home}/kagglehub"},
    ),
]

FOLDER_CASES = [
    Case("dataset-folder-empty", source_folder(), DOWNLOAD, "holds no files", RAW),
    Case("dataset-archive-empty", source_archive, DOWNLOAD, "data.zip", RAW),
    Case(
        "dataset-path-missing",
        data_params(source="path", path="/nonexistent/ct.zip"),
        DOWNLOAD,
        "/nonexistent/ct.zip: not found",
        RAW,
    ),
    Case(
        "folder-link-to-itself",
        source_folder(with_extra(lambda f: (f / "train/loop").symlink_to(".."))),
        DOWNLOAD,
        "train/loop: is a symbolic link; links are not followed",
        RAW,
        real=True,
    ),
    Case(
        "folder-link-to-a-file-outside",
        source_folder(with_extra(lambda f: (f / "passwd").symlink_to("/etc/passwd"))),
        DOWNLOAD,
        "passwd: is a symbolic link",
        RAW,
    ),
    Case(
        "folder-link-to-a-folder-outside",
        source_folder(with_extra(lambda f: (f / "more").symlink_to("/usr/share"))),
        DOWNLOAD,
        "more: is a symbolic link",
        RAW,
    ),
    Case(
        "folder-broken-link",
        source_folder(with_extra(lambda f: (f / "gone").symlink_to("/nonexistent"))),
        DOWNLOAD,
        "gone: is a symbolic link",
        RAW,
    ),
    Case(
        "folder-fifo",
        source_folder(with_extra(lambda f: os.mkfifo(f / "pipe"))),
        DOWNLOAD,
        "pipe: is a FIFO",
        RAW,
    ),
    Case(
        "folder-socket",
        source_folder(with_extra(lambda f: unix_socket(f / "sock"))),
        DOWNLOAD,
        "sock: is a socket",
        RAW,
    ),
    Case(
        "folder-over-max-members",
        source_folder(chest_ct_pngs(["normal", "adenocarcinoma"]), max_members=5),
        DOWNLOAD,
        "over the limit data.max_members=5",
        RAW,
    ),
    Case(
        "folder-over-max-bytes",
        source_folder(chest_ct_pngs(["normal", "adenocarcinoma"]), max_bytes=1000),
        DOWNLOAD,
        "over the limit data.max_bytes=1000",
        RAW,
    ),
    Case(
        "folder-only-folders",
        source_folder(lambda f: (f / "a/b/c").mkdir(parents=True)),
        DOWNLOAD,
        "the folder holds no files",
        RAW,
    ),
    Case(
        "folder-unknown-layout",
        source_folder(lambda f: (f / "readme.txt").write_text("hello")),
        DOWNLOAD,
        "incoming: cannot tell the dataset layout",
        RAW,
    ),
    Case(
        "path-a-fifo",
        then(lambda root: os.mkfifo(root / "pipe"), data_params(source="path", path="pipe")),
        DOWNLOAD,
        "pipe: is a FIFO, not a folder or an archive",
        RAW,
    ),
    Case(
        "path-a-device",
        data_params(source="path", path="/dev/null"),
        DOWNLOAD,
        "/dev/null: is a device, not a folder or an archive",
        RAW,
    ),
    Case(
        "path-the-project",
        data_params(source="path", path="."),
        DOWNLOAD,
        "holds the folder the data is written to",
        RAW,
    ),
    Case(
        "path-nul-character",
        data_params(source="path", path="a\x00b"),
        DOWNLOAD,
        "data.path: contains a NUL character",
        RAW,
    ),
    Case(
        "path-newline",
        data_params(source="path", path="/nonexistent/a\nb.zip"),
        DOWNLOAD,
        "/nonexistent/a\\nb.zip: not found",
        RAW,
    ),
]

ARCHIVE_CASES = [
    Case(
        "zip-slip",
        archive_source("s.zip", zip_of({"a/../../evil.txt": b"x"})),
        DOWNLOAD,
        "member 'a/../../evil.txt' escapes the target folder",
        RAW,
    ),
    Case(
        "zip-absolute-path",
        archive_source("a.zip", zip_of({"/etc/evil": b"x"})),
        DOWNLOAD,
        "member '/etc/evil' has an absolute path",
        RAW,
    ),
    Case(
        "zip-drive-letter",
        archive_source("d.zip", zip_of({"C:\\evil.txt": b"x"})),
        DOWNLOAD,
        "has an absolute path (a drive letter)",
        RAW,
    ),
    Case(
        "zip-encrypted",
        archive_source("e.zip", zip_of({"a.png": b"x"}, encrypted=True)),
        DOWNLOAD,
        "member 'a.png' is encrypted",
        RAW,
    ),
    Case(
        "zip-too-many-members",
        archive_source("m.zip", zip_of({f"{i}.png": b"x" for i in range(20)}), max_members=10),
        DOWNLOAD,
        "over the limit max_members=10",
        RAW,
    ),
    Case(
        "zip-bomb",
        archive_source("b.zip", zip_of({"zeros.png": bytes(3_000_000)}), max_bytes=1_000_000),
        DOWNLOAD,
        "more than the limit max_bytes=1000000",
        RAW,
    ),
    Case(
        "zip-truncated",
        archive_source("t.zip", zip_of({"a.png": os.urandom(5000)})[:3000]),
        DOWNLOAD,
        "t.zip",
        RAW,
    ),
    Case(
        "tar-symlink",
        archive_source("l.tar", tar_of([member("x", tarfile.SYMTYPE, link="/etc/passwd")])),
        DOWNLOAD,
        "member 'x' is a symbolic link to '/etc/passwd'",
        RAW,
    ),
    Case(
        "tar-hardlink",
        archive_source("h.tar", tar_of([member("y", tarfile.LNKTYPE, link="/etc/shadow")])),
        DOWNLOAD,
        "member 'y' is a hard link",
        RAW,
    ),
    Case(
        "tar-device",
        archive_source("c.tar", tar_of([member("null", tarfile.CHRTYPE)])),
        DOWNLOAD,
        "member 'null' is a character device",
        RAW,
    ),
    Case(
        "tar-fifo",
        archive_source("f.tar", tar_of([member("p", tarfile.FIFOTYPE)])),
        DOWNLOAD,
        "member 'p' is a FIFO",
        RAW,
    ),
    Case(
        "tar-gz-truncated",
        archive_source("g.tar.gz", tar_of([member("a.png", size=50_000)], "w:gz")[:200]),
        DOWNLOAD,
        "g.tar.gz: corrupt or truncated archive",
        RAW,
    ),
    Case(
        "archive-a-text-file",
        archive_source("x.zip", b"just some text\n"),
        DOWNLOAD,
        "x.zip: not a zip or tar archive",
        RAW,
    ),
]

STAGE_CASES = [
    Case(
        "all-files-unreadable",
        downloaded_folder(chest_ct_pngs(["adenocarcinoma", "normal"], garbage=True)),
        ["stages.convert"],
        "skipped",
        ["data/converted", "metrics/convert.json"],
    ),
    Case(
        "convert-raw-missing",
        params_with({}),
        ["stages.convert"],
        "data/raw: not found",
        ["data/converted", "metrics/convert.json"],
    ),
    Case(
        "convert-source-json-broken",
        downloaded(damage=write("data/raw/SOURCE.json", "{")),
        ["stages.convert"],
        "SOURCE.json: not a download record",
        ["data/converted", "metrics/convert.json"],
    ),
    Case(
        "convert-labels-empty",
        downloaded(damage=write("data/raw/labels.csv", "")),
        ["stages.convert"],
        "labels.csv: not a readable table",
        ["data/converted", "metrics/convert.json"],
    ),
    Case(
        "one-class-missing",
        downloaded(
            then_convert=True,
            edit=lambda params: params["data"]["synthetic"]["class_balance"].pop("benign"),
        ),
        ["stages.split"],
        "no images of class(es) ['benign']",
        ["data/splits", "metrics/split.json"],
    ),
    Case(
        "split-converted-missing",
        params_with({}),
        ["stages.split"],
        "data/converted/manifest.csv: not found",
        ["data/splits", "metrics/split.json"],
    ),
    Case(
        "split-manifest-empty",
        downloaded(then_convert=True, damage=write("data/converted/manifest.csv", "")),
        ["stages.split"],
        "manifest.csv: not a readable table",
        ["data/splits", "metrics/split.json"],
    ),
    Case(
        "split-manifest-columns",
        downloaded(then_convert=True, damage=write("data/converted/manifest.csv", "x\n1\n")),
        ["stages.split"],
        "manifest.csv: missing column(s) source",
        ["data/splits", "metrics/split.json"],
    ),
    # Annotations that lie (tests/test_lying_annotations.py): reasons, too many to convert.
    Case(
        "lidc-roi-coordinates-negative",
        downloaded(
            {"data": {"synthetic": {"annotations": "lidc"}}},
            damage=lambda root: [
                p.write_text(p.read_text().replace("<xCoord>", "<xCoord>-"))
                for p in (root / "data/raw").rglob("*.xml")
            ],
        ),
        ["stages.convert"],
        "annotation_implausible",
        ["data/converted", "metrics/convert.json"],
    ),
    Case(
        "luna16-diameter-1e308",
        downloaded(
            {"data": {"synthetic": {"annotations": "luna16-mhd"}}},
            damage=lambda root: (p := root / "data/raw/annotations.csv").write_text(
                p.read_text() + p.read_text().splitlines()[1].rsplit(",", 1)[0] + ",1e308\n"
            ),
        ),
        ["stages.convert"],
        "annotation_implausible",
        ["data/converted", "metrics/convert.json"],
    ),
    Case(
        "voc-box-off-the-image-lesion-crop",
        downloaded(
            {
                "data": {"synthetic": {"annotations": "voc"}},
                "convert": {"crop": "lesion", "framing": "image"},
            },
            damage=lambda root: [  # 12 -> 512, on a 64-pixel image
                p.write_text(
                    p.read_text().replace("<xmin>", "<xmin>5").replace("<xmax>", "<xmax>5")
                )
                for p in (root / "data/raw").rglob("*.xml")
            ],
        ),
        ["stages.convert"],
        "lesion_outside_image",
        ["data/converted", "metrics/convert.json"],
    ),
    Case("output-folder-not-writable", data_is_a_file, DOWNLOAD, "data", RAW, 1),
    Case(
        "splits-missing-for-train",
        lambda root: write_params(root),
        ["stages.train"],
        "splits.csv: not found",
        ["models/model.keras", "metrics/train.json"],
    ),
    Case(
        "train-splits-empty",
        trained(then(remove("models"), write("data/splits/splits.csv", ""))),
        ["stages.train"],
        "splits.csv: not a readable table",
        ["models"],
    ),
    Case(
        "train-splits-garbled",
        trained(then(remove("models"), write("data/splits/splits.csv", b'a,"b\n\xff'))),
        ["stages.train"],
        "splits.csv: not a readable table",
        ["models"],
    ),
    Case(
        "train-splits-columns",
        trained(then(remove("models"), write("data/splits/splits.csv", "a,b\n1,2\n"))),
        ["stages.train"],
        "splits.csv: missing column(s) image, class, split",
        ["models"],
    ),
    Case(
        "train-image-missing",
        trained(then(remove("models"), first_train_image_removed)),
        ["stages.train"],
        "which is not there; rerun the split stage",
        ["models"],
    ),
    Case(
        "train-one-class",
        trained(then(remove("models"), only_one_class)),
        ["stages.train"],
        "training needs at least two classes",
        ["models"],
    ),
    Case(
        # `git init`, then the stages before the first commit: DVCLive reads HEAD.
        "train-in-a-git-repository-without-a-commit",
        trained(then(remove("models"), git_init)),
        ["stages.train"],
        "needs a commit to start from; commit once",
        ["models"],
    ),
    Case(
        "model-truncated-for-evaluate",
        trained(truncate_model),
        ["stages.evaluate"],
        "models/model.keras: not a Keras model file",
        ["metrics/eval.json"],
    ),
    Case(
        "model-missing-for-evaluate",
        trained(remove("models/model.keras")),
        ["stages.evaluate"],
        "dvc repro",
        ["metrics/eval.json"],
    ),
    Case(
        "evaluate-labels-broken",
        trained(write("models/labels.json", "{not json")),
        ["stages.evaluate"],
        "models/labels.json: not a readable model contract",
        ["metrics/eval.json"],
    ),
    Case(
        "evaluate-split-metrics-broken",
        trained(write("metrics/split.json", "{")),
        ["stages.evaluate"],
        "split.json: not valid JSON",
        ["metrics/eval.json"],
    ),
    Case(
        "evaluate-splits-missing",
        trained(remove("data/splits/splits.csv")),
        ["stages.evaluate"],
        "splits.csv: not found",
        ["metrics/eval.json"],
    ),
    # train.strategy multi_worker: TF_CONFIG and LUNGCT_PEER_TIMEOUT checked first (the env
    # values are formatted with "{home}": their JSON braces doubled)
    Case(
        "tf-config-deep",
        params_with({"train": {"strategy": "multi_worker"}}),
        ["stages.train"],
        "TF_CONFIG: not valid JSON (nested deeper than",
        ["models/model.keras", "metrics/train.json"],
        env={"TF_CONFIG": "[" * 5000 + "]" * 5000},
        real=True,
    ),
    Case(
        "tf-config-index-digits",
        params_with({"train": {"strategy": "multi_worker"}}),
        ["stages.train"],
        "TF_CONFIG: not valid JSON (Exceeds the limit (4300 digits)",
        ["models/model.keras", "metrics/train.json"],
        env={
            "TF_CONFIG": '{{"cluster": {{"worker": ["a:1"]}}, "task": {{"index": '
            + "9" * 5000
            + "}}}}"
        },
    ),
    Case(
        "tf-config-host-nul",
        params_with({"train": {"strategy": "multi_worker"}}),
        ["stages.train"],
        "TF_CONFIG: cluster.worker: '10.0.0.1\\x00:2222': the host is not",
        ["models/model.keras", "metrics/train.json"],
        env={"TF_CONFIG": '{{"cluster": {{"worker": ["10.0.0.1\\u0000:2222"]}}}}'},
    ),
    Case(
        "peer-timeout-huge",
        params_with({"train": {"strategy": "multi_worker"}}),
        ["stages.train"],
        "LUNGCT_PEER_TIMEOUT: '999999999999999999999999999999' is not a number of seconds",
        ["models/model.keras", "metrics/train.json"],
        env={
            "TF_CONFIG": '{{"cluster": {{"worker": ["a:1"]}}, "task": {{"type": "worker"}}}}',
            "LUNGCT_PEER_TIMEOUT": "9" * 30,
        },
    ),
]

PREDICT_CASES = [
    Case(
        "model-truncated-for-predict",
        trained(truncate_model),
        PREDICT,
        "models/model.keras: not a Keras model file",
        ["out.csv"],
        real=True,
    ),
    Case("model-missing-for-predict", trained(remove("models")), PREDICT, "dvc repro", ["out.csv"]),
    Case(
        "predict-labels-broken",
        trained(write("models/labels.json", "[]")),
        PREDICT,
        "models/labels.json: not a model contract (a JSON object)",
        ["out.csv"],
    ),
    Case(
        "predict-output-a-folder",
        output_is(lambda out: out.mkdir()),
        PREDICT,
        "out.csv: is a folder; give a new path or a regular file",
        [],
    ),
    Case(
        "predict-output-a-link",
        output_is(lambda out: out.symlink_to("/etc/passwd")),
        PREDICT,
        "out.csv: is a symbolic link",
        [],
        real=True,
    ),
    Case(
        "predict-output-a-dangling-link",
        output_is(lambda out: out.symlink_to(out.parent / "elsewhere.csv")),
        PREDICT,
        "out.csv: is a symbolic link",
        ["elsewhere.csv"],
    ),
    Case("predict-output-a-fifo", output_is(os.mkfifo), PREDICT, "out.csv: is a FIFO", []),
    Case("predict-output-a-socket", output_is(unix_socket), PREDICT, "out.csv: is a socket", []),
    Case(
        "predict-output-in-a-file",
        trained(write("file.txt", "x")),
        ["stages.predict", "data/splits/test", "--output", "file.txt/out.csv"],
        "file.txt/out.csv: cannot write",
        [],
    ),
    Case(
        "predict-fifo-argument",
        trained(lambda root: os.mkfifo(root / "in.dcm")),
        ["stages.predict", "data/splits/test", "in.dcm", "--output", "out.csv"],
        "in.dcm: not_a_file: a FIFO, not a regular file",
        [],
        1,
        per_file=True,
    ),
    Case(
        "predict-fifo-in-a-folder",
        trained(lambda root: os.mkfifo(root / "data/splits/test/pipe.png")),
        ["stages.predict", "data/splits/test", "--output", "out.csv"],
        "pipe.png: not_a_file: a FIFO, not a regular file",
        [],
        1,
        per_file=True,
    ),
    # numbers that are not what they claim (tests/test_non_finite.py)
    Case(
        "predict-model-with-nan-weights",
        trained(
            then(
                nan_weights,
                lambda root: shutil.copy(
                    next((root / "data/splits/test").rglob("*.png")), root / "in.png"
                ),
            )
        ),
        ["stages.predict", "in.png", "--output", "out.csv"],
        "in.png: non_finite_output: the model gave NaN or infinite outputs for it",
        [],
        1,
        per_file=True,
    ),
    Case(
        "predict-an-all-nan-tiff",
        trained(write("nan.tif", nan_tiff())),
        ["stages.predict", "nan.tif", "--output", "out.csv"],
        "nan.tif: non_finite_pixels: 1024 of 1024 pixels NaN or infinite",
        [],
        1,
        per_file=True,
    ),
    Case(
        "predict-model-config-bomb",
        trained(config_bomb),
        PREDICT,
        "model.keras: not a Keras model file (config.json of 64 MiB, over 16 MiB)",
        ["out.csv"],
    ),
    Case(
        "predict-labels-nested-deep",
        trained(write("models/labels.json", "[" * 100_000 + "]" * 100_000)),
        PREDICT,
        "labels.json: not a readable model contract (nested deeper than 64 levels)",
        ["out.csv"],
    ),
    Case(
        "predict-labels-with-nan",
        trained(write("models/labels.json", '{"classes": NaN}')),
        PREDICT,
        "labels.json: not a readable model contract (NaN is not a number JSON allows)",
        ["out.csv"],
    ),
]

# The service's options: checked before anything is loaded or bound (stages/serve.py).
SERVE_CASES = [
    Case(
        "serve-host-empty",
        lambda root: None,
        ["stages.serve", "--host="],
        "argument --host: must be an address or host name",
        real=True,
    ),
    Case(
        "serve-timeout-nan",
        lambda root: None,
        ["stages.serve", "--timeout", "nan"],
        "argument --timeout: must be a number over 0",
    ),
    Case(
        "serve-max-wait-ms-huge",
        lambda root: None,
        ["stages.serve", "--max-wait-ms", "1e13"],
        "argument --max-wait-ms: must be from 0 to 10000",
    ),
    Case(
        "serve-buffer-below-upload-limit",
        lambda root: None,
        ["stages.serve", "--max-upload-bytes", "1000", "--max-buffered-bytes", "10"],
        "--max-buffered-bytes (10) must be at least --max-upload-bytes (1000)",
    ),
]

CASES = (
    PARAMS_CASES
    + URL_CASES
    + KAGGLE_CASES
    + FOLDER_CASES
    + ARCHIVE_CASES
    + STAGE_CASES
    + PREDICT_CASES
    + SERVE_CASES
)


# --------------------------------------------------------------------------- the checks


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    return {
        path: (stat.st_size, stat.st_mtime_ns)
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink()
        for stat in [path.stat()]
    }


def run_here(case: Case, root: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """The stage's ``main`` through ``run_stage``, as ``python -m`` runs it."""
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", [f"python -m {case.command[0]}", *case.command[1:]])
    main = importlib.import_module(case.command[0]).main
    capsys.readouterr()  # what prepare printed
    try:
        run_stage(main)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_child(case: Case, root: Path) -> tuple[int, str, str]:
    env = command_env({"PYTHONPATH": str(ROOT), "DVC_SITE_CACHE_DIR": str(root / ".site")})
    result = subprocess.run(
        [sys.executable, "-m", *case.command],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(
    case: Case, tmp_path: Path, monkeypatch, capsys, caplog
):
    root, home = tmp_path / "project", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    for name in INHERITED:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**NO_INTERNET, "HOME": str(home), **case.env}.items():
        monkeypatch.setenv(name, value.format(home=home))
    case.prepare(root)
    before = snapshot(root)

    if case.real:
        code, out, err = run_child(case, root)
    else:
        code, out, err = run_here(case, root, monkeypatch, capsys)
    output = out + err + caplog.text
    assert code != 0, output
    if case.exit_code is not None:
        assert code == case.exit_code, output
    assert "Traceback" not in output, output
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if case.per_file:
        assert errors == [], output
        assert sum(case.says in line for line in err.splitlines()) == 1, output
    else:
        assert len(errors) == 1, output
        assert case.says in errors[0], output
    other = [
        line
        for line in err.splitlines()
        if line
        and not line.startswith(("error:", "ERROR: failed to reproduce", *TF_NOISE))
        and "cuda" not in line.lower()
    ]
    assert not any("Error" in line or "Exception" in line for line in other), output
    for path in case.absent:
        assert not (root / path).exists(), f"{path} left behind:\n{output}"
    leftovers = [p for p in tmp_path.rglob(".*.tmp-*")]
    assert not leftovers, leftovers
    if case.secret:
        assert SECRET not in output, output
        written = [p for p, seen in snapshot(root).items() if before.get(p) != seen]
        for path in written:  # dvc.lock, DVC's caches, SOURCE.json, metrics, logs
            assert SECRET.encode() not in path.read_bytes(), path


def case_count() -> int:
    """The sweep's size: these cases and those of tests/test_bad_files.py (DICOM, image
    and convert files), when that file is there."""
    try:
        from tests import test_bad_files
    except ModuleNotFoundError as exc:
        if exc.name != "tests.test_bad_files":
            raise
        return len(CASES)
    return len(CASES) + len(test_bad_files.CASES)


def test_cases_are_distinct():
    assert len({case.id for case in CASES}) == len(CASES)


def test_readme_counts_the_cases():
    readme = (ROOT / "README.md").read_text()
    assert f"walks a table of {case_count()} broken inputs" in readme
