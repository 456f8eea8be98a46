"""Where raw data comes from: an http(s)/file URL with a checksum, Kaggle, or a local path.

Every function here brings files into a folder it is given (an empty temporary folder
that the download stage moves into place only when all is well) and raises
:class:`UserError` with one line naming the URL, handle or path when it cannot.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from lungct.archives import safe_extract
from lungct.errors import UserError, describe
from lungct.params import URL_SCHEMES

CHUNK = 1 << 20
TIMEOUT_S = 60


def redact(url: str) -> str:
    """The URL without user, password or query string, fit for logs and SOURCE.json."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _request(url: str) -> urllib.request.Request:
    """A request for ``url``; ``user:password@`` in it becomes HTTP basic authentication
    (urllib would otherwise take it for part of the host name)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    bare = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    request = urllib.request.Request(bare)
    request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    return request


def fetch_url(url: str, target: Path, *, progress: bool = False) -> str:
    """Stream ``url`` into the file ``target``; return its sha256.

    Only http, https and file URLs are accepted. A short read (the server closed the
    connection before Content-Length bytes) is an error, never a truncated file.
    """
    shown = redact(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise UserError(f"data.url: scheme '{scheme}' is not allowed (use http, https or file)")
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(_request(url), timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with (
                target.open("wb") as out,
                tqdm(
                    total=expected,
                    unit="B",
                    unit_scale=True,
                    desc=f"download {Path(urllib.parse.urlsplit(url).path).name}",
                    disable=None if progress else True,
                ) as bar,
            ):
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise UserError(f"{shown}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise UserError(f"{shown}: cannot download ({err.reason})") from None
    except http.client.IncompleteRead as err:
        raise UserError(
            f"{shown}: connection closed after {received + len(err.partial)} bytes; "
            "the download is incomplete"
        ) from None
    except (OSError, http.client.HTTPException) as err:
        raise UserError(f"{shown}: download failed ({type(err).__name__}: {err})") from None
    if expected is not None and received != expected:
        raise UserError(
            f"{shown}: connection closed after {received} of {expected} bytes; "
            "the download is incomplete"
        )
    return digest.hexdigest()


def verify_sha256(name: str, actual: str, expected: str) -> None:
    if actual != expected.lower():
        raise UserError(f"{name}: sha256 mismatch: expected {expected.lower()}, got {actual}")


def unpack_or_copy(
    source: Path, dest: Path, *, max_bytes: int, max_members: int, progress: bool
) -> None:
    """Put the dataset at ``source`` (a folder, or a zip/tar archive) into the empty ``dest``."""
    if source.is_dir():
        files = [p for p in source.rglob("*") if p.is_file() or p.is_symlink()]
        if not files:
            raise UserError(f"{source}: the folder holds no files")
        if len(files) > max_members:
            raise UserError(f"{source}: {len(files)} files exceed data.max_members ({max_members})")
        size = sum(p.stat().st_size for p in files if p.is_file())
        if size > max_bytes:
            raise UserError(f"{source}: {size} bytes exceed data.max_bytes ({max_bytes})")
        # Symlinks are copied as the files they point to: data/raw holds only real files.
        shutil.copytree(source, dest, dirs_exist_ok=True)
        return
    if not source.exists():
        raise UserError(f"{source}: not found")
    safe_extract(source, dest, max_bytes=max_bytes, max_members=max_members, progress=progress)


def kaggle_download(handle: str) -> Path:
    """Download a public Kaggle dataset with kagglehub (into its own cache); return its folder.

    kagglehub's failures (no network, no credentials, unknown handle) arrive as many
    exception types; each becomes one line naming the handle.
    """
    try:
        import kagglehub

        path = kagglehub.dataset_download(handle)
    except Exception as err:  # any failure of the remote call is the user's to fix
        raise UserError(
            f"data.kaggle_handle '{handle}': Kaggle download failed ({describe(err)})"
        ) from None
    return Path(path)
