"""Safe archive extraction: good archives unpack exactly; hostile or broken ones are refused
with a one-line message, leave the target folder empty and write nothing outside it."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from lungct.io import archives
from lungct.io.archives import ArchiveError, ExtractStats, archive_kind, safe_extract

BIG = 10**9  # limits that never bite, for tests about something else

# A dataset-like tree, with macOS leftovers that must be extracted, not dropped.
TREE = {
    "Data/train/normal/a.png": b"\x89PNG fake a",
    "Data/train/cancer/b.png": b"\x89PNG fake bb",
    "Data/test/normal/c.png": b"c" * 3000,
    "__MACOSX/Data/._a.png": b"apple double",
}


def make_zip(path: Path, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in dirs:
            zf.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def tar_info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def make_tar(
    path: Path,
    files: dict[str, bytes],
    dirs: tuple[str, ...] = (),
    extra: tuple[tarfile.TarInfo, ...] = (),
    mode: str = "w:gz",
) -> Path:
    with tarfile.open(path, mode) as tf:
        for name in dirs:
            tf.addfile(tar_info(name, tarfile.DIRTYPE, mode=0o755))
        for name, data in files.items():
            tf.addfile(tar_info(name, size=len(data), mode=0o644), io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def refused(
    archive: Path, dest: Path, match: str, *, max_bytes: int = BIG, max_members: int = 1000
) -> str:
    """Extraction fails with ArchiveError only; one line naming the archive; no leftovers."""
    with pytest.raises(ArchiveError, match=match) as caught:
        safe_extract(archive, dest, max_bytes=max_bytes, max_members=max_members)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{archive.name}: ")
    assert list(dest.iterdir()) == []
    assert not (dest.parent / "evil.txt").exists()
    return message


# --- good archives -----------------------------------------------------------------------


def test_zip_extracts_the_exact_tree(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(tmp_path / "data.zip", TREE, dirs=("Data/", "Data/train/", "empty/"))
    assert archive_kind(archive)[0] == "zip"
    stats = safe_extract(archive, dest, max_bytes=BIG, max_members=100)
    assert tree(dest) == TREE
    assert (dest / "empty").is_dir()
    assert stats == ExtractStats(files=4, bytes=sum(len(v) for v in TREE.values()))


def test_tar_gz_extracts_the_exact_tree(tmp_path: Path, dest: Path) -> None:
    # "." is what `tar -C folder -czf x.tgz .` puts first; it is the target folder itself.
    archive = make_tar(tmp_path / "data.tar.gz", TREE, dirs=(".", "Data", "Data/train"))
    assert archive_kind(archive)[0] == "tar"
    stats = safe_extract(archive, dest, max_bytes=BIG, max_members=100, progress=True)
    assert tree(dest) == TREE
    assert stats == ExtractStats(files=4, bytes=sum(len(v) for v in TREE.values()))


@pytest.mark.parametrize("mode", ["w", "w:bz2", "w:xz"])
def test_plain_and_other_compressed_tars(tmp_path: Path, dest: Path, mode: str) -> None:
    archive = make_tar(tmp_path / "data.bin", TREE, mode=mode)
    assert archive_kind(archive)[0] == "tar"
    assert safe_extract(archive, dest, max_bytes=BIG, max_members=100).files == 4
    assert tree(dest) == TREE


def test_kind_is_detected_by_content_not_extension(tmp_path: Path, dest: Path) -> None:
    tgz = make_tar(tmp_path / "really-a-tgz.zip", TREE)
    assert archive_kind(tgz)[0] == "tar"
    assert archive_kind(make_zip(tmp_path / "really-a-zip.tar.gz", TREE))[0] == "zip"
    text = tmp_path / "notes.zip"
    text.write_text("just some text\n" * 100)
    assert archive_kind(text) == (None, "not a zip or tar archive")
    safe_extract(tgz, dest, max_bytes=BIG, max_members=100)
    assert tree(dest) == TREE


def test_zip_with_data_in_front_and_tar_holding_a_zip(tmp_path: Path, dest: Path) -> None:
    # A self-extracting zip starts with a program; a plain tar whose last member is a zip
    # has that zip's index near its end, which is_zipfile also finds: it must stay a tar.
    inner = make_zip(tmp_path / "inner.zip", TREE).read_bytes()
    sfx = tmp_path / "setup.exe"
    sfx.write_bytes(b"MZ program stub " * 64 + inner)
    assert archive_kind(sfx)[0] == "zip"
    assert safe_extract(sfx, dest, max_bytes=BIG, max_members=100).files == 4
    assert tree(dest) == TREE
    holder = make_tar(tmp_path / "holder.tar", {"inner.zip": inner}, mode="w")
    assert zipfile.is_zipfile(holder)  # the trap
    assert archive_kind(holder)[0] == "tar"
    dest2 = tmp_path / "out2"
    dest2.mkdir()
    safe_extract(holder, dest2, max_bytes=BIG, max_members=100)
    assert tree(dest2) == {"inner.zip": inner}


def test_archive_modes_are_ignored(tmp_path: Path, dest: Path) -> None:
    setuid = tar_info("run.sh", size=2, mode=0o4777)
    with tarfile.open(tmp_path / "m.tar", "w") as tf:
        tf.addfile(setuid, io.BytesIO(b"hi"))
    safe_extract(tmp_path / "m.tar", dest, max_bytes=BIG, max_members=10)
    mode = (dest / "run.sh").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_windows_backslashes_in_zip_are_separators(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(tmp_path / "win.zip", {"Data\\train\\a.png": b"a"})
    safe_extract(archive, dest, max_bytes=BIG, max_members=10)
    assert tree(dest) == {"Data/train/a.png": b"a"}


# --- paths that escape, links, special files --------------------------------------------


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../evil.txt", "escapes the target folder"),
        ("Data/../../evil.txt", "escapes the target folder"),
        ("..\\evil.txt", "escapes the target folder"),
        ("/etc/evil.txt", "absolute path"),
        ("C:\\evil.txt", "absolute path"),
        ("\\evil.txt", "absolute path"),
    ],
)
def test_zip_member_outside_dest_is_refused(
    tmp_path: Path, dest: Path, member: str, why: str
) -> None:
    archive = make_zip(tmp_path / "data.zip", {"ok.png": b"fine", member: b"pwned"})
    message = refused(archive, dest, why)
    assert f"member '{member}'" in message


def test_zip_absolute_member_pointing_at_tmp_is_refused(tmp_path: Path, dest: Path) -> None:
    evil = str(tmp_path / "evil.txt")
    archive = make_zip(tmp_path / "data.zip", {"ok.png": b"fine", evil: b"pwned"})
    assert f"member '{evil}' has an absolute path" in refused(archive, dest, "absolute")


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../evil.txt", "escapes the target folder"),
        ("Data/../../evil.txt", "escapes the target folder"),
        ("ABS", "has an absolute path"),  # the absolute path of tmp_path/evil.txt
    ],
)
def test_tar_member_outside_dest_is_refused(
    tmp_path: Path, dest: Path, member: str, why: str
) -> None:
    member = str(tmp_path / "evil.txt") if member == "ABS" else member
    archive = make_tar(tmp_path / "data.tar.gz", {"ok.png": b"fine", member: b"pwned"})
    assert f"member '{member}' {why}" in refused(archive, dest, why)


@pytest.mark.parametrize(
    ("info", "why"),
    [
        (
            tar_info("link", tarfile.SYMTYPE, linkname="/etc/passwd"),
            "symbolic link to '/etc/passwd'",
        ),
        (tar_info("link", tarfile.SYMTYPE, linkname="ok.png"), "symbolic link to 'ok.png'"),
        (tar_info("link", tarfile.SYMTYPE, linkname="../evil.txt"), "links are not allowed"),
        (tar_info("link", tarfile.LNKTYPE, linkname="/etc/passwd"), "hard link"),
        (tar_info("link", tarfile.LNKTYPE, linkname="ok.png"), "hard link"),
        (tar_info("node", tarfile.CHRTYPE, devmajor=1, devminor=3), "character device"),
        (tar_info("node", tarfile.BLKTYPE, devmajor=8, devminor=0), "block device"),
        (tar_info("node", tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_tar_links_and_special_files_are_refused(
    tmp_path: Path, dest: Path, info: tarfile.TarInfo, why: str
) -> None:
    archive = make_tar(tmp_path / "data.tar.gz", {"ok.png": b"fine"}, extra=(info,))
    assert f"member '{info.name}' is " in refused(archive, dest, why)


def test_zip_symlink_is_refused(tmp_path: Path, dest: Path) -> None:
    link = zipfile.ZipInfo("Data/link")
    link.create_system = 3  # Unix, where external_attr carries st_mode
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as zf:
        zf.writestr("Data/ok.png", b"fine")
        zf.writestr(link, "/etc/passwd")
    message = refused(tmp_path / "data.zip", dest, "links are not allowed")
    assert "member 'Data/link' is a symbolic link" in message


def test_zip_fifo_is_refused(tmp_path: Path, dest: Path) -> None:
    fifo = zipfile.ZipInfo("pipe")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as zf:
        zf.writestr("ok.png", b"fine")
        zf.writestr(fifo, b"")
    refused(tmp_path / "data.zip", dest, "member 'pipe' is a device, FIFO or socket")


def test_duplicate_and_conflicting_members_are_refused(tmp_path: Path, dest: Path) -> None:
    # A second copy would silently replace the first; a file where a folder is needed
    # would fail half way.
    with tarfile.open(tmp_path / "dup.tar", "w") as tf:
        for data in (b"one", b"two"):
            tf.addfile(tar_info("a.png", size=len(data)), io.BytesIO(data))
    refused(tmp_path / "dup.tar", dest, "member 'a.png' is the same file as member 'a.png'")
    archive = make_zip(tmp_path / "clash.zip", {"Data": b"file", "Data/a.png": b"a"})
    refused(archive, dest, "member 'Data' is a file but other members need it as a folder")


# --- decompression bombs -----------------------------------------------------------------


def test_zip_bomb_is_refused_before_writing(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zeros = 10 * 1024 * 1024
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(zeros)})
    assert archive.stat().st_size < 100_000  # it really is a bomb
    opened: list[object] = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k)
    )
    message = refused(archive, dest, "more than the limit", max_bytes=1_000_000)
    assert "max_bytes=1000000 (977 KiB)" in message and "10 MiB" in message
    assert opened == []  # no member was even opened


def test_tar_size_limit_uses_the_sum_of_member_sizes(tmp_path: Path, dest: Path) -> None:
    # Each member is under the limit; together they are over it.
    files = {f"f{i}.bin": bytes(400_000) for i in range(3)}
    archive = make_tar(tmp_path / "sum.tar.gz", files)
    message = refused(archive, dest, "unpacks to 1.14 MiB", max_bytes=1_000_000)
    assert "(1200000 bytes)" in message
    assert safe_extract(archive, dest, max_bytes=1_200_000, max_members=10).bytes == 1_200_000


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_too_many_members_are_refused(tmp_path: Path, dest: Path, maker) -> None:
    archive = maker(tmp_path / "many.bin", {f"f{i}.png": b"x" for i in range(50)})
    message = refused(archive, dest, "max_members=10", max_members=10)
    assert "members (files and folders)" in message
    # folders count too: 3 files + 2 folders is over 4
    small = maker(tmp_path / "dirs.bin", {"a": b"1", "b": b"2", "c": b"3"}, dirs=("x", "y"))
    refused(small, dest, "max_members=4", max_members=4)
    assert safe_extract(small, dest, max_bytes=BIG, max_members=5).files == 3


def test_stream_guard_stops_when_declared_sizes_lie(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zipfile itself never yields more than a member's declared size, so a real lying zip
    # cannot reach the streaming guard; switch off the check from the index to show that
    # the guard alone still stops the bomb, and cleans up what the first members wrote.
    monkeypatch.setattr(archives, "_check_size", lambda *a, **k: None)
    files = {"a.bin": bytes(600_000), "b.bin": bytes(600_000)}
    for archive in (make_zip(tmp_path / "x.zip", files), make_tar(tmp_path / "x.tgz", files)):
        message = refused(archive, dest, "member 'b.bin' unpacks to more", max_bytes=1_000_000)
        assert "max_bytes=1000000" in message


@pytest.mark.parametrize(
    ("payload", "why"),
    [(b"x" * 2000, "holds more data than the 1000 bytes"), (b"x" * 10, "ended after 10 of 1000")],
)
def test_member_data_must_match_its_declared_size(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes, why: str
) -> None:
    # tarfile and zipfile always deliver the declared size or fail; a reader that does
    # not (simulated) must still be caught by the guard, not trusted.
    archive = make_tar(tmp_path / "x.tar", {"ok.png": b"o", "a.bin": bytes(1000)}, mode="w")
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(
        tarfile.TarFile,
        "extractfile",
        lambda self, m: io.BytesIO(payload) if m.name == "a.bin" else real(self, m),
    )
    refused(archive, dest, f"member 'a.bin'.*{why}")


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="Python < 3.11.4")
@pytest.mark.parametrize(
    "info",
    [
        tar_info("../evil.txt", size=0),
        tar_info("link", tarfile.SYMTYPE, linkname="/etc/passwd"),
        tar_info("dev", tarfile.CHRTYPE),
    ],
)
def test_stdlib_data_filter_is_a_second_line_of_defence(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch, info: tarfile.TarInfo
) -> None:
    # Switch off our own path and type checks: the stdlib filter must still refuse.
    monkeypatch.setattr(archives, "_tar_refusal", lambda member: None)
    monkeypatch.setattr(
        archives, "_member_parts", lambda archive, name, zip_names: tuple(name.split("/"))
    )
    archive = make_tar(tmp_path / "x.tar", {"ok.png": b"o"}, extra=(info,), mode="w")
    refused(archive, dest, f"member '{info.name}' is refused: ")


def test_zip_whose_index_understates_a_size_is_refused(tmp_path: Path, dest: Path) -> None:
    # Patch the central directory to declare 10 bytes for a 1000-byte member: zipfile
    # stops at 10 bytes and the CRC check fails; nothing of it stays.
    data = bytearray(make_zip(tmp_path / "lie.zip", {"a.bin": b"z" * 1000}).read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    (tmp_path / "lie.zip").write_bytes(bytes(data))
    refused(
        tmp_path / "lie.zip",
        dest,
        "corrupt or truncated archive \\(member 'a.bin': ",
        max_bytes=100,
    )


# --- zip features we cannot read ---------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "value", "why"),
    [(8, 0x1, "is encrypted"), (10, 9, "uses compression method 9")],  # flags; Deflate64
)
def test_unreadable_zip_members_are_refused_up_front(
    tmp_path: Path, dest: Path, offset: int, value: int, why: str
) -> None:
    data = bytearray(make_zip(tmp_path / "x.zip", {"a.png": b"a" * 100}).read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + offset : central + offset + 2] = value.to_bytes(2, "little")
    (tmp_path / "x.zip").write_bytes(bytes(data))
    refused(tmp_path / "x.zip", dest, f"member 'a.png' {why}")


# --- empty, wrong and broken files -------------------------------------------------------


def broken_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected message part)"""
    out: dict[str, tuple[Path, str]] = {}
    out["empty zip"] = (make_zip(tmp / "empty.zip", {}), "contains no files")
    out["zip of folders"] = (make_zip(tmp / "dirs.zip", {}, dirs=("a/",)), "contains no files")
    out["empty tar"] = (make_tar(tmp / "empty.tar", {}, mode="w"), "contains no files")
    out["empty tgz"] = (make_tar(tmp / "empty.tgz", {}), "contains no files")
    (tmp / "zero.zip").write_bytes(b"")
    out["zero bytes"] = (tmp / "zero.zip", "empty file")
    (tmp / "readme.zip").write_text("this is not an archive\n" * 50)
    out["text"] = (tmp / "readme.zip", "not a zip or tar archive")
    big = {f"d/f{i}.bin": bytes(range(256)) * 40 for i in range(8)}
    whole = make_zip(tmp / "whole.zip", big).read_bytes()
    (tmp / "half.zip").write_bytes(whole[: len(whole) // 2])
    out["truncated zip"] = (tmp / "half.zip", "truncated")
    whole = make_tar(tmp / "whole.tgz", {k: v * 50 for k, v in big.items()}).read_bytes()
    (tmp / "half.tgz").write_bytes(whole[: len(whole) // 2])
    out["truncated tgz"] = (tmp / "half.tgz", "corrupt or truncated")
    (tmp / "head.tgz").write_bytes(whole[:100])  # cut inside the first tar header
    out["tgz cut in first block"] = (tmp / "head.tgz", "corrupt or truncated")
    # an uncompressed tar cut right after a member looks complete to tarfile
    whole = make_tar(tmp / "whole.tar", {"a": b"1" * 512, "b": b"2" * 512}, mode="w").read_bytes()
    (tmp / "cut.tar").write_bytes(whole[:1024])
    out["tar cut at a member"] = (tmp / "cut.tar", "end-of-archive marker is missing")
    (tmp / "mid.tar").write_bytes(whole[:700])
    out["tar cut in a member"] = (tmp / "mid.tar", "corrupt or truncated")
    return out


@pytest.mark.parametrize(
    "case",
    [
        "empty zip",
        "zip of folders",
        "empty tar",
        "empty tgz",
        "zero bytes",
        "text",
        "truncated zip",
        "truncated tgz",
        "tgz cut in first block",
        "tar cut at a member",
        "tar cut in a member",
    ],
)
def test_empty_wrong_and_broken_files_are_refused(tmp_path: Path, dest: Path, case: str) -> None:
    archive, why = broken_files(tmp_path)[case]
    refused(archive, dest, why)


def test_corrupt_deflate_data_is_refused(tmp_path: Path, dest: Path) -> None:
    data = bytearray(make_zip(tmp_path / "bad.zip", {"a.bin": bytes(range(256)) * 64}).read_bytes())
    start = 30 + len("a.bin")  # first byte of the compressed data after the local header
    data[start : start + 40] = b"\xff" * 40
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    refused(tmp_path / "bad.zip", dest, "corrupt or truncated archive \\(member 'a.bin': ")


def test_missing_archive_and_bad_dest(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(ArchiveError, match=r"^nope\.zip: cannot read"):
        archive_kind(tmp_path / "nope.zip")
    with pytest.raises(ArchiveError, match=r"^nope\.zip: cannot read"):
        safe_extract(tmp_path / "nope.zip", dest, max_bytes=BIG, max_members=10)
    archive = make_zip(tmp_path / "data.zip", TREE)
    (dest / "already.txt").write_text("x")
    with pytest.raises(ValueError, match="empty folder"):
        safe_extract(archive, dest, max_bytes=BIG, max_members=100)
    assert (dest / "already.txt").exists()  # not the caller's files: left alone


def test_message_escapes_control_characters(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(tmp_path / "data.tar", {"../evil\n.txt": b"x"}, mode="w")
    assert "member '../evil\\n.txt'" in refused(archive, dest, "escapes")
