"""Safe extraction of downloaded dataset archives (zip and tar, compressed or not).

A downloaded archive is untrusted input. Everything is checked from the archive's
index before a single byte is written, and limits are enforced again while streaming:

- member paths must stay inside the target folder: absolute paths (``/etc/x``; in a zip
  also ``C:\\x`` and ``\\x``) and ``..`` that climbs out are refused;
- only regular files and folders are extracted: every link (symbolic or hard, pointing
  inside or outside) is refused, because a dataset has no need for them and a link that
  is harmless alone can redirect a later member; devices, FIFOs and sockets are refused;
- the member count and the total unpacked size are capped (decompression bombs);
- permissions, owners and times stored in the archive are ignored: files are created
  with the default mode (0o666 minus the umask), owned by whoever runs the stage.

Nothing is dropped silently: macOS leftovers (``__MACOSX/``, ``._*``) are extracted like
any other file and accounted for by a later stage. A refused or broken archive raises
:class:`ArchiveError` (one line, starting with the archive's file name) and leaves the
target folder empty again.
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
from dataclasses import dataclass
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
    except _READ_ERRORS as err:
        # is_tarfile lets e.g. EOFError through for a compressed stream cut short
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


def _too_many(archive: Path, count: str, max_members: int) -> ArchiveError:
    return _error(
        archive,
        f"has {count} members (files and folders), over the limit max_members={max_members}",
    )


def _check_size(archive: Path, total: int, *, max_bytes: int) -> None:
    """Refuse an archive whose index says it unpacks to too much, before anything is written."""
    if total > max_bytes:
        raise _error(
            archive,
            f"unpacks to {size_text(total)} ({total} bytes), more than the limit "
            f"max_bytes={max_bytes} ({size_text(max_bytes)})",
        )


def _zip_entries(archive: Path, zf: zipfile.ZipFile, *, max_members: int) -> list[_Entry]:
    infos = zf.infolist()
    if len(infos) > max_members:
        # Checked before the per-member checks, so a huge index is not walked at all.
        raise _too_many(archive, str(len(infos)), max_members)
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
        entries.append(
            _Entry(info.filename, parts, False, info.file_size, lambda i=info: zf.open(i))
        )
    return entries


def _tar_refusal(member: tarfile.TarInfo) -> str | None:
    """Why a tar member's type is refused, or None for a file or folder."""
    if member.issym():
        return f"is a symbolic link to '{printable(member.linkname)}'; links are not allowed"
    if member.islnk():
        return f"is a hard link to '{printable(member.linkname)}'; links are not allowed"
    if member.isreg() or member.isdir():
        return None
    if member.ischr():
        kind = "a character device"
    elif member.isblk():
        kind = "a block device"
    elif member.isfifo():
        kind = "a FIFO"
    else:
        kind = f"of unknown type {member.type!r}"
    return f"is {kind}; only files and folders are allowed"


def _tar_entries(
    archive: Path, tf: tarfile.TarFile, dest: Path, *, max_members: int
) -> list[_Entry]:
    entries = []
    # Iterating reads the headers one by one; stopping at the limit keeps a tar with
    # millions of members from filling memory with them.
    for count, member in enumerate(tf, start=1):
        if count > max_members:
            raise _too_many(archive, f"more than {max_members}", max_members)
        reason = _tar_refusal(member)
        if reason:
            raise _error(archive, reason, member.name)
        parts = _member_parts(archive, member.name, zip_names=False)
        # Second line of defence: the stdlib's own rules for untrusted tars (3.11.4+).
        # Our checks above are stricter, so this only fires if they have a hole.
        data_filter = getattr(tarfile, "data_filter", None)
        if data_filter is not None:
            try:
                data_filter(member, str(dest))
            except tarfile.FilterError as err:
                raise _error(archive, f"is refused: {_detail(err)}", member.name) from err
        if member.isdir():
            entries.append(_Entry(member.name, parts, True, 0, None))
        else:
            entries.append(
                _Entry(member.name, parts, False, member.size, lambda m=member: _tar_open(tf, m))
            )
    # tarfile stops quietly when the data just ends, so a tar cut at a member boundary
    # would look complete with files missing. A whole tar ends with a zero block where
    # the listing stopped (tf.offset).
    assert tf.fileobj is not None
    tf.fileobj.seek(tf.offset)
    if tf.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise _error(archive, "corrupt or truncated archive (the end-of-archive marker is missing)")
    return entries


def _tar_open(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    src = tf.extractfile(member)
    assert src is not None  # only regular files get here
    return src


class _Budget:
    """Bytes written so far, against max_bytes, across all members."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class _GuardedReader:
    """A member's data stream that turns read errors into ArchiveError and stops as soon as
    more comes out than declared or than the byte budget allows (sizes can lie)."""

    def __init__(
        self,
        src: IO[bytes],
        archive: Path,
        entry: _Entry,
        budget: _Budget,
        bar: tqdm | None,
    ) -> None:
        self.src, self.archive, self.entry, self.budget, self.bar = src, archive, entry, budget, bar
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.src.read(size)
        except _READ_ERRORS as err:
            raise _corrupt(self.archive, err, self.entry.member) from err
        self.count += len(data)
        self.budget.used += len(data)
        if self.budget.used > self.budget.limit:
            raise _error(
                self.archive,
                f"unpacks to more than the limit max_bytes={self.budget.limit} "
                f"({size_text(self.budget.limit)}), more than its index declared",
                self.entry.member,
            )
        if self.count > self.entry.size:
            raise _error(
                self.archive,
                f"holds more data than the {self.entry.size} bytes its header declares",
                self.entry.member,
            )
        if self.bar is not None:
            self.bar.update(len(data))
        return data


def _write(
    archive: Path, dest: Path, entries: list[_Entry], budget: _Budget, bar: tqdm | None
) -> int:
    """Create the folders and stream the files; return the bytes written."""
    for entry in entries:
        target = dest.joinpath(*entry.parts)
        try:
            if entry.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            assert entry.open is not None
            try:
                src = entry.open()
            except _READ_ERRORS as err:
                raise _corrupt(archive, err, entry.member) from err
            reader = _GuardedReader(src, archive, entry, budget, bar)
            # "xb": never replace or follow anything already there; the checks above
            # make that impossible, this makes it certain.
            with src, open(target, "xb") as out:
                shutil.copyfileobj(reader, out, 1 << 20)  # type: ignore[arg-type]
            if reader.count != entry.size:
                detail = f"ended after {reader.count} of {entry.size} bytes"
                raise _corrupt(archive, detail, entry.member)
        except ArchiveError:
            raise
        except OSError as err:
            # Writing failed (disk full, name too long, no permission): a one-line
            # message naming the member helps more than a traceback.
            raise _error(archive, f"cannot be written: {_detail(err)}", entry.member) from err
    return budget.used


def _empty(dest: Path) -> None:
    """Remove everything below dest (not dest itself): the caller's folder is reused."""
    # Best effort: a failure here must not hide the error that got us here.
    with suppress(OSError):
        for child in dest.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


@contextmanager
def _opened(archive: Path, kind: str) -> Iterator[zipfile.ZipFile | tarfile.TarFile]:
    # Opening reads the index (zip) or the first header (tar), so it is wrapped too.
    # tarfile.open's default mode "r" is "r:*": any compression, or none.
    opener = zipfile.ZipFile if kind == "zip" else tarfile.open
    try:
        handle = opener(archive)
    except _READ_ERRORS as err:
        raise _corrupt(archive, err) from err
    with handle:
        yield handle


def safe_extract(
    archive: Path, dest: Path, *, max_bytes: int, max_members: int, progress: bool = False
) -> ExtractStats:
    """Extract a zip or tar ``archive`` into the existing empty folder ``dest``.

    All members are checked before anything is written; see the module docstring for
    the rules. A tar.gz is decompressed twice (once to list, once to extract): tar has
    no index, and the limits must hold before writing.

    Args:
        archive: The archive; its kind is found by content, not by extension.
        dest: An existing, empty folder (e.g. the temporary folder of ``atomic_dir``).
        max_bytes: Refuse if the files unpack to more bytes than this (checked from the
            index first, then again while streaming).
        max_members: Refuse if the archive has more members (files and folders).
        progress: Show a progress bar over bytes (hidden when stderr is not a terminal).

    Returns:
        The number of regular files written and their total size in bytes.

    Raises:
        ArchiveError: The archive is not a zip or tar, is corrupt or truncated, holds no
            files, or is refused by a rule; ``dest`` is left empty again.
        ValueError: ``dest`` is not an existing empty folder (a bug in the caller).
    """
    if not dest.is_dir() or any(dest.iterdir()):
        raise ValueError(f"safe_extract needs an existing empty folder, got {dest}")
    kind, why = archive_kind(archive)
    if kind is None:
        raise _error(archive, why)
    try:
        with _opened(archive, kind) as handle:
            try:
                if isinstance(handle, zipfile.ZipFile):
                    entries = _zip_entries(archive, handle, max_members=max_members)
                else:
                    entries = _tar_entries(archive, handle, dest, max_members=max_members)
            except _READ_ERRORS as err:
                raise _corrupt(archive, err) from err
            files = [e for e in entries if not e.is_dir]
            if not files:
                raise _error(archive, "contains no files")
            _check_tree(archive, entries)
            total = sum(e.size for e in files)
            _check_size(archive, total, max_bytes=max_bytes)
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"extract {archive.name}",
                disable=None if progress else True,
            ) as bar:
                written = _write(archive, dest, entries, _Budget(max_bytes), bar)
    except BaseException:
        # Also on KeyboardInterrupt: the caller's atomic folder must not keep half an archive.
        _empty(dest)
        raise
    return ExtractStats(files=len(files), bytes=written)
