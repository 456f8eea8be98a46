"""Which annotated dataset a folder holds, from its content (the checks, in order, are in
docs/annotations.md, Detection), cheaply whatever the size of the tree: at most
:data:`MAX_OPENED` files are opened (and only their first :data:`HEAD_BYTES` read) and
:data:`MAX_FOLDERS` folders listed.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

from lungct.annotations.luna16 import LUNA16_COLUMNS
from lungct.names import ANNOTATED_LAYOUTS, Layout

LIDC, LUNA16, LUNG_PET_CT_DX = Layout.LIDC, Layout.LUNA16, Layout.LUNG_PET_CT_DX
DATASETS = ANNOTATED_LAYOUTS  # the layouts named after these datasets (lungct.names)
MAX_OPENED = 50  # files opened per call
MAX_FOLDERS = 5000  # folders listed per call
HEAD_BYTES = 4096  # read from each file opened
CSV_DEPTH = 2
ANNOTATION_DEPTH = 2
UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")
ROOT_ELEMENT = re.compile(rb"<([A-Za-z_][\w.:-]*)")


def _walk(root: Path, max_depth: int | None = None) -> Iterator[tuple[Path, list[str], list[str]]]:
    """Folders top-down in name order, without following links, at most MAX_FOLDERS."""
    for folder, dirs, files in itertools.islice(os.walk(root), MAX_FOLDERS):
        dirs.sort()
        files.sort()
        here = Path(folder)
        if max_depth is not None and len(here.relative_to(root).parts) >= max_depth:
            dirs[:] = []
        yield here, dirs, files


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(HEAD_BYTES)
    except OSError:
        return b""


def root_element(path: Path) -> str:
    """The local name of an XML file's root element from its first bytes ("" if none):
    after the declaration, comments and processing instructions; no parsing."""
    head = _head(path)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        head = head.decode("utf-16", "ignore").encode()
    head = re.sub(rb"<\?.*?\?>|<!--.*?-->|<!.*?>", b"", head, flags=re.S)
    match = ROOT_ELEMENT.search(head)
    return match.group(1).decode().rsplit(":", 1)[-1] if match else ""


def _is_luna16_csv(path: Path) -> bool:
    first = _head(path).decode("utf-8-sig", "ignore").splitlines()[:1]
    columns = {c.strip() for c in first[0].split(",")} if first else set()
    return set(LUNA16_COLUMNS) <= columns


def detect(root: Path) -> Layout | None:
    """``"lidc"``, ``"luna16"``, ``"lung-pet-ct-dx"``, or None when none fits."""
    root = Path(root)
    if not root.is_dir():
        return None
    opened = 0
    for folder, _, files in _walk(root, CSV_DEPTH):
        if "annotations.csv" in files:
            opened += 1
            if _is_luna16_csv(folder / "annotations.csv"):
                return LUNA16
    for folder, dirs, _ in _walk(root, ANNOTATION_DEPTH):
        if "Annotation" in dirs:
            for patient, _, files in _walk(folder / "Annotation", 1):
                for name in files:
                    if name.lower().endswith(".xml") and UID.match(name[:-4]):
                        opened += 1
                        if root_element(patient / name).lower() == "annotation":
                            return LUNG_PET_CT_DX
                        break  # one file per patient folder
                if opened >= MAX_OPENED // 2:
                    break
    for folder, _, files in _walk(root):
        for name in files:
            if name.lower().endswith(".xml"):
                if opened >= MAX_OPENED:
                    return None
                opened += 1
                if root_element(folder / name).lower() == "lidcreadmessage":
                    return LIDC
    return None


def annotation_files(root: Path, dataset: str) -> list[Path]:
    """The annotation files of a detected dataset under ``root``, sorted: LIDC-IDRI's XML
    files (all of them; the readers report those that are not CT reads), LUNA16's
    ``annotations.csv``, Lung-PET-CT-Dx's ``Annotation/<patient>/*.xml``."""
    root = Path(root)
    if dataset == LIDC:
        return sorted(p for p in root.rglob("*") if p.suffix.lower() == ".xml" and p.is_file())
    if dataset == LUNA16:
        return sorted(p for p in root.rglob("annotations.csv") if p.is_file())
    if dataset == LUNG_PET_CT_DX:
        return sorted(
            p
            for folder in root.rglob("Annotation")
            if folder.is_dir()
            for p in folder.glob("*/*")
            if p.suffix.lower() == ".xml" and p.is_file()
        )
    raise ValueError(f"unknown dataset {dataset!r}; one of {', '.join(DATASETS)}")
