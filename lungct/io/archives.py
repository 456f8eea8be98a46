"""Safe extraction of downloaded dataset archives (zip and tar, compressed or not).

A downloaded archive is untrusted input: every member is checked from the index before a
byte is written, and the limits hold again while streaming. Refused: a member path that
leaves the target folder (absolute: ``/etc/x``, in a zip also ``C:\\x`` and ``\\x``; or
``..`` that climbs out); every link, symbolic or hard, inside or out (a dataset needs
none, and a harmless link can redirect a later member); devices, FIFOs and sockets; more
members or unpacked bytes than the limits (decompression bombs). Permissions, owners and
times in the archive are ignored: files get the default mode (0o666 minus the umask).

Nothing is dropped silently: macOS leftovers (``__MACOSX/``, ``._*``) are extracted like
any other file. A refused or broken archive raises :class:`ArchiveError` (one line,
starting with the archive's file name) and leaves the target folder empty again.
"""

from __future__ import annotations

import lzma
import posixpath
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Literal

from tqdm import tqdm

from lungct.errors import UserError, printable
from lungct.limits import size_text

# What the stdlib raises on a broken or truncated archive, besides its own error types:
# gzip, bz2 and file I/O raise OSError, a stream cut short raises EOFError, corrupt
# deflate data raises zlib.error, and damaged size fields can surface as ValueError or
# struct.error. Only calls that *read the archive* are wrapped with these.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
)

# zipfile can read these; anything else (e.g. Deflate64, which Windows uses for big
# files) would fail mid-way with NotImplementedError, so it is refused up front.
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_ZIP_ENCRYPTED = 0x1
_DRIVE = re.compile(r"[A-Za-z]:")


class ArchiveError(UserError):
    """An archive that is refused or broken; the message names the archive and, where it
    applies, the member and why."""


@dataclass(frozen=True)
class ExtractStats:
    files: int  # regular files written
    bytes: int  # their total size
    members: int = field(default=0, compare=False)  # files and folders in the index


@dataclass(frozen=True)
class _Entry:
    """One member that passed the checks: where it goes and how to read it."""

    member: str  # the name as stored in the archive, for messages
    parts: tuple[str, ...]  # normalized path below dest; () is dest itself
    is_dir: bool
    size: int  # declared size; 0 for folders
    open: Callable[[], IO[bytes]] | None  # None for folders


def _detail(err: BaseException) -> str:
    return printable(str(err)) or type(err).__name__


def _error(archive: Path, message: str, member: str | None = None) -> ArchiveError:
    where = f"member '{printable(member)}' " if member is not None else ""
    return ArchiveError(f"{printable(archive.name)}: {where}{message}")


def _corrupt(archive: Path, err: BaseException | str, member: str | None = None) -> ArchiveError:
    detail = err if isinstance(err, str) else _detail(err)
    where = f"member '{printable(member)}': " if member is not None else ""
    return _error(archive, f"corrupt or truncated archive ({where}{detail})")


def archive_kind(path: Path) -> tuple[Literal["zip", "tar"] | None, str]:
    """Detect an archive by its content, not by its extension: ``"zip"`` or ``"tar"`` (tar
    uncompressed or gzip, bzip2 or xz compressed), or None and why it is neither (empty,
    truncated, corrupt, something else); :class:`ArchiveError` when the file cannot be
    opened (missing, a folder, no permission)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise _error(path, f"cannot read: {err.strerror or _detail(err)}") from err
    if not head:
        return None, "is an empty file (0 bytes), not a zip or tar archive"
    # A zip is found by its index at the *end* of the file, which an uncompressed tar
    # holding a zip as its last member also has; so tar is asked first, unless the file
    # starts like a zip (local header, or the end record of an empty zip).
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")) and zipfile.is_zipfile(path):
        return "zip", ""
    broken: BaseException | None = None
    try:
        if tarfile.is_tarfile(path):
            return "tar", ""
    except _READ_ERRORS as err:  # e.g. EOFError, for a compressed stream cut short
        broken = err
    if zipfile.is_zipfile(path):  # a zip with data in front (self-extracting)
        return "zip", ""
    if broken is not None:
        return None, f"corrupt or truncated archive ({_detail(broken)})"
    if head.startswith(b"PK\x03\x04"):
        return None, "corrupt or truncated zip archive (its index at the end is missing)"
    return None, "not a zip or tar archive"


def _member_parts(archive: Path, member: str, *, zip_names: bool) -> tuple[str, ...]:
    """The normalized path of a member below the target folder, or a refusal."""
    name = member
    if zip_names:
        # Zips written on Windows may use backslashes (against the spec); they are
        # separators there, so they are checked and extracted as such.
        name = name.replace("\\", "/")
        if _DRIVE.match(name):
            raise _error(archive, "has an absolute path (a drive letter)", member)
    if name.startswith("/"):
        raise _error(archive, "has an absolute path", member)
    norm = posixpath.normpath(name) if name else "."
    if norm == ".." or norm.startswith("../"):
        raise _error(archive, "escapes the target folder", member)
    return () if norm == "." else tuple(norm.split("/"))


def _check_tree(archive: Path, entries: list[_Entry]) -> None:
    """Refuse two members at one path, or a file where a folder must be: one would
    silently replace the other, or extraction would fail half way."""
    files: dict[tuple[str, ...], str] = {}
    folders: set[tuple[str, ...]] = set()
    for entry in entries:
        if not entry.is_dir:
            if not entry.parts:
                raise _error(archive, "has no file name", entry.member)
            if entry.parts in files:
                other = printable(files[entry.parts])
                raise _error(archive, f"is the same file as member '{other}'", entry.member)
            files[entry.parts] = entry.member
        else:
            folders.add(entry.parts)
        folders.update(entry.parts[:i] for i in range(len(entry.parts)))
    for parts, member in files.items():
        if parts in folders:
            raise _error(archive, "is a file but other members need it as a folder", member)


# How the messages name the limits; a caller whose limits are a share of a larger budget
# (the service: what is left of one request's) names them its own way (``limit_names``).
LIMIT_NAMES = ("max_bytes", "max_members")


def _too_many(archive: Path, count: str, max_members: int, name: str) -> ArchiveError:
    return _error(
        archive, f"has {count} members (files and folders), over the limit {name}={max_members}"
    )


def _check_size(archive: Path, total: int, *, max_bytes: int, name: str) -> None:
    """Refuse an archive whose index says it unpacks to too much, before anything is written."""
    if total > max_bytes:
        raise _error(
            archive,
            f"unpacks to {size_text(total)} ({total} bytes), more than the limit "
            f"{name}={max_bytes} ({size_text(max_bytes)})",
        )


def _zip_entries(
    archive: Path, zf: zipfile.ZipFile, *, max_members: int, name: str
) -> list[_Entry]:
    infos = zf.infolist()
    if len(infos) > max_members:
        # Checked before the per-member checks, so a huge index is not walked at all.
        raise _too_many(archive, str(len(infos)), max_members, name)
    entries = []
    for info in infos:
        mode = info.external_attr >> 16  # Unix st_mode, where the zip was made on Unix
        if stat.S_ISLNK(mode):
            raise _error(archive, "is a symbolic link; links are not allowed", info.filename)
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _error(
                archive,
                "is a device, FIFO or socket; only files and folders are allowed",
                info.filename,
            )
        parts = _member_parts(archive, info.filename, zip_names=True)
        if info.is_dir():
            entries.append(_Entry(info.filename, parts, True, 0, None))
            continue
        if info.flag_bits & _ZIP_ENCRYPTED:
            raise _error(archive, "is encrypted (password protected)", info.filename)
        if info.compress_type not in _ZIP_METHODS:
            raise _error(
                archive,
                f"uses compression method {info.compress_type}, which cannot be read "
                "(repack the archive with plain deflate)",
                info.filename,
            )
        entries.append(_Entry(info.filename, parts, False, info.file_size, partial(zf.open, info)))
    return entries


_TAR_KINDS = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


def _tar_refusal(member: tarfile.TarInfo) -> str | None:
    """Why a tar member's type is refused, or None for a file or folder."""
    if member.issym():
        return f"is a symbolic link to '{printable(member.linkname)}'; links are not allowed"
    if member.islnk():
        return f"is a hard link to '{printable(member.linkname)}'; links are not allowed"
    if member.isreg() or member.isdir():
        return None
    kind = _TAR_KINDS.get(member.type, f"of unknown type {member.type!r}")
    return f"is {kind}; only files and folders are allowed"


def _tar_entries(
    archive: Path, tf: tarfile.TarFile, dest: Path, *, max_members: int, name: str
) -> list[_Entry]:
    entries = []
    # Headers are read one by one: a tar of millions of members stops at the limit.
    for count, member in enumerate(tf, start=1):
        if count > max_members:
            raise _too_many(archive, f"more than {max_members}", max_members, name)
        reason = _tar_refusal(member)
        if reason:
            raise _error(archive, reason, member.name)
        parts = _member_parts(archive, member.name, zip_names=False)
        # Second line of defence (3.11.4+): the stdlib's rules, laxer than ours above.
        data_filter = getattr(tarfile, "data_filter", None)
        if data_filter is not None:
            try:
                data_filter(member, str(dest))
            except tarfile.FilterError as err:
                raise _error(archive, f"is refused: {_detail(err)}", member.name) from err
        if member.isdir():
            entries.append(_Entry(member.name, parts, True, 0, None))
        else:  # a regular file: extractfile gives its data
            entries.append(
                _Entry(member.name, parts, False, member.size, partial(tf.extractfile, member))
            )
    # tarfile stops quietly where the data ends: a tar cut at a member boundary would look
    # whole. A whole tar has a zero block where the listing stopped (tf.offset).
    tf.fileobj.seek(tf.offset)
    if tf.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise _error(archive, "corrupt or truncated archive (the end-of-archive marker is missing)")
    return entries


@contextmanager
def _reading(archive: Path, member: str | None = None) -> Iterator[None]:
    """What goes wrong reading the archive (:data:`_READ_ERRORS`) as an ArchiveError."""
    try:
        yield
    except _READ_ERRORS as err:
        raise _corrupt(archive, err, member) from err


def _write(
    archive: Path,
    dest: Path,
    entries: list[_Entry],
    max_bytes: int,
    bar: tqdm,
    name: str,
    check: Callable[[], None] | None,
) -> int:
    """Create the folders and stream the files, stopping as soon as more comes out than a
    member declares or than ``max_bytes`` in all (sizes can lie); return the bytes written.
    ``check`` is called before each chunk is written."""
    written = 0
    for entry in entries:
        target = dest.joinpath(*entry.parts)
        try:
            if entry.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            assert entry.open is not None
            with _reading(archive, entry.member):
                src = entry.open()
            count = 0
            # "xb": never replace or follow anything there (as the checks already ensure)
            with src, open(target, "xb") as out:
                while True:
                    with _reading(archive, entry.member):
                        data = src.read(1 << 20)
                    if not data:
                        break
                    if check is not None:
                        check()
                    count += len(data)
                    written += len(data)
                    if written > max_bytes:
                        raise _error(
                            archive,
                            f"unpacks to more than the limit {name}={max_bytes} "
                            f"({size_text(max_bytes)}), more than its index declared",
                            entry.member,
                        )
                    if count > entry.size:
                        raise _error(
                            archive,
                            f"holds more data than the {entry.size} bytes its header declares",
                            entry.member,
                        )
                    bar.update(len(data))
                    out.write(data)
            if count != entry.size:
                detail = f"ended after {count} of {entry.size} bytes"
                raise _corrupt(archive, detail, entry.member)
        except ArchiveError:
            raise
        except OSError as err:
            # Writing failed (disk full, name too long, no permission): one line, naming it
            raise _error(archive, f"cannot be written: {_detail(err)}", entry.member) from err
    return written


def _empty(dest: Path) -> None:
    """Remove everything below dest (not dest itself): the caller's folder is reused."""
    # Best effort: a failure here must not hide the error that got us here.
    with suppress(OSError):
        for child in dest.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def safe_extract(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int,
    max_members: int,
    progress: bool = False,
    limit_names: tuple[str, str] = LIMIT_NAMES,
    check: Callable[[], None] | None = None,
) -> ExtractStats:
    """Extract a zip or tar ``archive`` (its kind found by content) into the existing,
    empty folder ``dest``; return the number of regular files written and their bytes.

    All members are checked before anything is written (the rules: the module docstring);
    ``max_bytes`` holds from the index, then again while streaming. A tar.gz is
    decompressed twice (to list, then to extract): tar has no index. ``progress`` shows a
    bar over bytes (hidden when stderr is not a terminal). A refused or broken archive is
    an :class:`ArchiveError` and leaves ``dest`` empty; a ``dest`` that is not an existing
    empty folder is a ValueError (a bug in the caller).

    Budget hooks, for a caller that shares limits between archives: ``limit_names``, how
    the messages name ``max_bytes`` and ``max_members``; ``check``, called before each
    chunk (1 MiB) is written, raises to stop (a cancelled request), and ``dest`` is
    emptied as for a refusal.
    """
    if not dest.is_dir() or any(dest.iterdir()):
        raise ValueError(f"safe_extract needs an existing empty folder, got {dest}")
    kind, why = archive_kind(archive)
    if kind is None:
        raise _error(archive, why)
    try:
        # Opening reads the index (zip) or the first header (tar); tarfile.open's default
        # mode "r" is "r:*": any compression, or none.
        opener = zipfile.ZipFile if kind == "zip" else tarfile.open
        with _reading(archive):
            handle = opener(archive)
        with handle:
            with _reading(archive):
                if isinstance(handle, zipfile.ZipFile):
                    entries = _zip_entries(
                        archive, handle, max_members=max_members, name=limit_names[1]
                    )
                else:
                    entries = _tar_entries(
                        archive, handle, dest, max_members=max_members, name=limit_names[1]
                    )
            files = [e for e in entries if not e.is_dir]
            if not files:
                raise _error(archive, "contains no files")
            _check_tree(archive, entries)
            total = sum(e.size for e in files)
            _check_size(archive, total, max_bytes=max_bytes, name=limit_names[0])
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"extract {archive.name}",
                disable=None if progress else True,
            ) as bar:
                written = _write(archive, dest, entries, max_bytes, bar, limit_names[0], check)
    except BaseException:
        # Also on KeyboardInterrupt: the caller's atomic folder must not keep half an archive.
        _empty(dest)
        raise
    return ExtractStats(files=len(files), bytes=written, members=len(entries))
