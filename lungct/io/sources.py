"""Where raw data comes from: an http(s)/file URL with a checksum, Kaggle, or a local path.

Every function here brings files into a folder it is given (an empty temporary folder
that the download stage moves into place only when all is well) and raises
:class:`UserError` with one line naming the URL, handle or path when it cannot.
Credentials for ``data.url`` (docs/data.md, "Credentials for a URL") go to its host only
(:func:`may_send_credentials`); no message shows them or the URL's query string
(:func:`lungct.params.redact`).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import netrc
import os
import stat
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import requests
from tqdm import tqdm

from lungct.errors import UserError, describe, printable
from lungct.io.archives import _empty, safe_extract
from lungct.params import redact, url_problem

CHUNK = 1 << 20
TIMEOUT_S = 60
MAX_REDIRECTS = 10
TOKEN_ENV = "LUNGCT_URL_TOKEN"  # a bearer token
USER_ENV = "LUNGCT_URL_USER"  # with PASSWORD_ENV: HTTP basic authentication
PASSWORD_ENV = "LUNGCT_URL_PASSWORD"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LINKS = (
    "links are not followed: copy the files in, or give an archive (docs/data.md#local-folders)"
)


# Credentials
@dataclass(frozen=True)
class Credentials:
    """An ``Authorization`` header for ``data.url``'s host, and what no message may show."""

    header: str
    secrets: tuple[str, ...]
    origin: str  # where they came from: an environment variable or a netrc file

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


def _basic(user: str, password: str, origin: str) -> Credentials:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return Credentials(f"Basic {token}", (password, token), origin)


def netrc_file(env: Mapping[str, str]) -> Path | None:
    """The netrc file: ``$NETRC`` when set (it must exist), else ``~/.netrc`` or ``~/_netrc``
    when one exists (the rule of curl and requests)."""
    if env.get("NETRC"):
        path = Path(env["NETRC"]).expanduser()
        if not path.exists():
            raise UserError(f"NETRC: {printable(str(path))}: not found")
        return path
    home = Path(env.get("HOME") or Path.home())
    return next((p for p in (home / ".netrc", home / "_netrc") if p.exists()), None)


def _netrc_credentials(host: str, env: Mapping[str, str]) -> Credentials | None:
    path = netrc_file(env)
    if path is None:
        return None
    shown = printable(str(path))
    if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the read
        raise UserError(f"{shown}: not a regular file (netrc)")
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except netrc.NetrcParseError as err:  # its message can quote a password: not shown
        raise UserError(f"{shown}: not a valid netrc file (line {err.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{shown}: not UTF-8 text (netrc)") from None
    if entry is None:
        return None
    login, account, password = entry
    return _basic(login or account or "", password or "", shown)


def url_credentials(url: str, env: Mapping[str, str] | None = None) -> Credentials | None:
    """The credentials for ``url``'s host: ``LUNGCT_URL_TOKEN`` (a bearer token), or
    ``LUNGCT_URL_USER`` with ``LUNGCT_URL_PASSWORD`` (basic), or the netrc entry of its
    host; None when there are none. Half a pair, or both kinds, is an error."""
    env = os.environ if env is None else env
    token, user, password = (env.get(name) or "" for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV))
    if token and (user or password):
        raise UserError(f"{TOKEN_ENV} and {USER_ENV}/{PASSWORD_ENV} are both set: set one kind")
    if token:
        return Credentials(f"Bearer {token}", (token,), TOKEN_ENV)
    if user or password:
        if not (user and password):
            given, missing = (USER_ENV, PASSWORD_ENV) if user else (PASSWORD_ENV, USER_ENV)
            raise UserError(f"{given} is set but {missing} is not: set both")
        return _basic(user, password, f"{USER_ENV}/{PASSWORD_ENV}")
    host = urllib.parse.urlsplit(url).hostname
    return _netrc_credentials(host, env) if host else None


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return scheme, parts.hostname.lower(), port


def may_send_credentials(named: str, url: str) -> bool:
    """Whether a request to ``url`` (the first one, or one a redirect leads to) may carry
    the credentials meant for ``named`` (``data.url``): only to the same host and port
    over the same scheme, or to the same host upgraded from http to https on the default
    ports. Never to another host or port, never over http when ``named`` is https."""
    a, b = _origin(named), _origin(url)
    if a is None or b is None or a[1] != b[1]:
        return False
    if a[0] == b[0]:
        return a[2] == b[2]
    return (a[0], a[2], b[0], b[2]) == ("http", 80, "https", 443)


class _Session(requests.Session):
    """A session that decides on every request, redirects included, whether the
    credentials go with it (:func:`may_send_credentials`), not by requests' own rule
    (https to http on the same host; netrc entries of other hosts)."""

    def __init__(self, named: str, credentials: Credentials | None) -> None:
        super().__init__()
        self.named = named
        self.credentials = credentials
        self.max_redirects = MAX_REDIRECTS
        self.auth = lambda request: request  # not requests' own: it reads netrc on its terms
        self.headers["Accept-Encoding"] = "identity"  # the bytes the checksum is of

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response) -> None:  # type: ignore[no-untyped-def]
        self._authorize(prepared_request)

    def _authorize(self, request: requests.PreparedRequest) -> None:
        request.headers.pop("Authorization", None)
        if self.credentials and may_send_credentials(self.named, request.url or ""):
            request.headers["Authorization"] = self.credentials.header

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        prepared = super().prepare_request(request)
        self._authorize(prepared)
        return prepared


# Downloads
def _reason(err: BaseException) -> str:
    """Why a request failed, in words that never hold the URL (requests' and urllib3's
    messages quote it, query string and all): the OS's reason, or the error's kind."""
    kinds: list[tuple[type[BaseException], str]] = [
        (requests.exceptions.SSLError, "TLS handshake failed or certificate not trusted"),
        (requests.exceptions.Timeout, f"no answer within {TIMEOUT_S} s"),
        (requests.exceptions.TooManyRedirects, f"more than {MAX_REDIRECTS} redirects"),
        (requests.exceptions.InvalidSchema, "redirected to a URL that is not http or https"),
        (requests.exceptions.InvalidURL, "redirected to an invalid URL"),
    ]
    for kind, words in kinds:
        if isinstance(err, kind):
            return words
    todo: list[object] = [err]
    seen: set[int] = set()
    while todo:  # the OS error at the root (connection refused, name not known)
        cause = todo.pop(0)
        if not isinstance(cause, BaseException) or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.strerror:
            return printable(cause.strerror)
        todo += [cause.__cause__, cause.__context__, getattr(cause, "reason", None), *cause.args]
    return type(err).__name__


def _stream(
    read: Callable[[int], bytes],
    expected: int | None,
    *,
    target: Path,
    max_bytes: int,
    shown: str,
    progress: bool,
) -> str:
    """Write what ``read`` gives into ``target``; return its sha256. More than
    ``max_bytes``, or fewer bytes than ``expected``, is an error."""
    if expected is not None and expected > max_bytes:
        raise UserError(f"{shown}: {expected} bytes exceed data.max_bytes ({max_bytes})")
    digest = hashlib.sha256()
    received = 0
    with (
        target.open("wb") as out,
        tqdm(
            total=expected,
            unit="B",
            unit_scale=True,
            desc=f"download {Path(shown).name}",
            disable=None if progress else True,
        ) as bar,
    ):
        while True:
            try:
                chunk = read(CHUNK)
            except Exception as err:  # urllib3's protocol errors (a short body) and the like
                known = (requests.RequestException, http.client.HTTPException, OSError)
                why = _reason(err) if isinstance(err, known) else type(err).__name__
                raise UserError(
                    f"{shown}: the connection broke after {received} bytes ({why}); "
                    "the download is incomplete"
                ) from None
            if not chunk:
                break
            received += len(chunk)
            if received > max_bytes:
                raise UserError(f"{shown}: more than data.max_bytes ({max_bytes}) bytes")
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    if expected is not None and received != expected:
        raise UserError(
            f"{shown}: connection closed after {received} of {expected} bytes; "
            "the download is incomplete"
        )
    return digest.hexdigest()


def _fetch_file(url: str, save: Callable[..., str]) -> str:
    shown = redact(url)
    path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"{shown}: not found") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{shown}: not a regular file")
    with path.open("rb") as stream:
        return save(stream.read, info.st_size)


def _fetch_http(url: str, credentials: Credentials | None, save: Callable[..., str]) -> str:
    shown = redact(url)
    with _Session(url, credentials) as session:
        try:
            response = session.get(url, stream=True, timeout=(TIMEOUT_S, TIMEOUT_S))
        except Exception as err:  # the server's doing (or the network's): one line
            raise UserError(f"{shown}: cannot download ({_reason(err)})") from None
        with response:
            if not 200 <= response.status_code < 300:
                hint = ""
                if response.status_code in (401, 403):
                    if credentials is None:
                        hint = " (no credentials sent; see docs/data.md)"
                    elif may_send_credentials(url, response.url):
                        hint = f" (credentials sent from {credentials.origin}; see docs/data.md)"
                    else:
                        hint = (
                            f" (after a redirect to {redact(response.url)}, where credentials "
                            "are not sent)"
                        )
                reason = printable(response.reason or "")
                raise UserError(f"{shown}: HTTP {response.status_code} {reason}{hint}".rstrip())
            length = response.headers.get("Content-Length", "")
            expected = int(length) if length.isascii() and length.isdigit() else None
            return save(lambda n: response.raw.read(n, decode_content=False), expected)


def fetch_url(url: str, target: Path, *, max_bytes: int, progress: bool = False) -> str:
    """Stream ``url`` (http, https or file) into the file ``target``; return its sha256.
    A short read (fewer than Content-Length bytes), or more than ``max_bytes``, is an error
    and ``target`` is removed, never left truncated. Credentials (:func:`url_credentials`)
    go to ``url``'s host only; no message shows them, or the URL's user, password or query.
    """
    if problem := url_problem(url):
        raise UserError(f"data.url: {problem}")
    save = partial(
        _stream, target=target, max_bytes=max_bytes, shown=redact(url), progress=progress
    )
    credentials = None
    try:
        if urllib.parse.urlsplit(url).scheme.lower() == "file":
            return _fetch_file(url, save)
        credentials = url_credentials(url)
        return _fetch_http(url, credentials, save)
    except BaseException as err:
        target.unlink(missing_ok=True)
        if isinstance(err, UserError) and credentials:
            raise UserError(credentials.scrub(str(err))) from None
        raise


def verify_sha256(name: str, actual: str, expected: str) -> None:
    if actual != expected.lower():
        raise UserError(f"{name}: sha256 mismatch: expected {expected.lower()}, got {actual}")


# Local folders and archives
_KINDS = {"l": "a symbolic link", "p": "a FIFO", "s": "a socket", "c": "a device", "b": "a device"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.filemode(mode)[0], "not a regular file")


def _copy_file(source: Path, dest: Path, budget: int) -> int:
    """Copy one regular file (never through a link, never blocking on a FIFO put there
    since the walk); return its size. More than ``budget`` bytes is an error."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        if os.path.islink(source):
            raise UserError(f"{printable(str(source))}: is a symbolic link; {_LINKS}") from None
        raise
    with os.fdopen(fd, "rb") as stream, dest.open("xb") as out:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{printable(str(source))}: is {_kind(mode)}; {_LINKS}") from None
        copied = 0
        while chunk := stream.read(CHUNK):
            copied += len(chunk)
            if copied > budget:
                raise UserError(f"{printable(str(source))}: the folder grew past data.max_bytes")
            out.write(chunk)
    return copied


def copy_folder(source: Path, dest: Path, *, max_bytes: int, max_members: int) -> None:
    """Copy the folder ``source`` into the empty folder ``dest``: regular files and
    folders only, as :func:`lungct.io.archives.safe_extract` extracts (any link, FIFO,
    socket or device is refused: docs/data.md, "Local folders"). The tree is walked, and
    the limits checked, before a byte is copied; the bytes are counted again while copying.
    """
    if dest.resolve().is_relative_to(source.resolve()):
        raise UserError(
            f"{printable(str(source))}: holds the folder the data is written to "
            f"({printable(str(dest.parent))}); give the dataset's own folder"
        )
    folders: list[Path] = []
    files: list[Path] = []
    total = 0
    todo = [Path()]
    while todo:  # no recursion: a deep tree cannot overflow the stack
        relative = todo.pop()
        with os.scandir(source / relative) as entries:
            children = sorted(entries, key=lambda entry: entry.name)
        for entry in children:
            member = relative / entry.name
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                folders.append(member)
                todo.append(member)
            elif stat.S_ISREG(mode):
                files.append(member)
                total += entry.stat(follow_symlinks=False).st_size
            else:
                raise UserError(f"{printable(str(source / member))}: is {_kind(mode)}; {_LINKS}")
            if len(folders) + len(files) > max_members:
                raise UserError(
                    f"{printable(str(source))}: has more than {max_members} files and folders, "
                    f"over the limit data.max_members={max_members}"
                )
            if total > max_bytes:
                raise UserError(
                    f"{printable(str(source))}: holds more than {max_bytes} bytes, over the limit "
                    f"data.max_bytes={max_bytes}"
                )
    if not files:
        raise UserError(f"{printable(str(source))}: the folder holds no files")
    for folder in folders:  # parents come before their children
        (dest / folder).mkdir()
    budget = max_bytes
    for member in files:
        budget -= _copy_file(source / member, dest / member, budget)


def unpack_or_copy(
    source: Path, dest: Path, *, max_bytes: int, max_members: int, progress: bool
) -> None:
    """Put the dataset at ``source`` (a folder, or a zip/tar archive) into the empty ``dest``.
    ``source`` itself may be a link (the user named it); nothing in a folder may."""
    try:
        mode = source.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{printable(str(source))}: not found") from None
    if stat.S_ISDIR(mode):
        try:
            copy_folder(source, dest, max_bytes=max_bytes, max_members=max_members)
        except BaseException:
            _empty(dest)
            raise
        return
    if not stat.S_ISREG(mode):
        raise UserError(f"{printable(str(source))}: is {_kind(mode)}, not a folder or an archive")
    safe_extract(source, dest, max_bytes=max_bytes, max_members=max_members, progress=progress)


def kaggle_download(handle: str) -> Path:
    """Download a public Kaggle dataset with kagglehub (into its own cache); return its folder.
    kagglehub's failures, of many exception types (no network, no credentials, unknown
    handle), become one line naming the handle (the Kaggle key never shown)."""
    try:
        import kagglehub

        path = kagglehub.dataset_download(handle)
    except Exception as err:  # any failure of the remote call is the user's to fix
        detail = describe(err)
        for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"):
            if os.environ.get(name):
                detail = detail.replace(os.environ[name], "***")
        raise UserError(
            f"data.kaggle_handle '{handle}': Kaggle download failed ({printable(detail)})"
        ) from None
    return Path(path)
