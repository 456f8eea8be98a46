"""Known dataset layouts, recognised from folder and file names, their labels and class
presets (the table in docs/data.md): ``iqothnccd``, ``chest-ctscan`` (train and valid class
folders with TNM suffixes), the annotated layouts (``lungct.annotations``), ``dicom``
(labelled by ``labels.csv`` or class subfolders; the synthetic cohort's layout) and, last,
``folders`` (any other image dataset in class folders).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from lungct.annotations import detect as detect_annotated
from lungct.errors import UserError, printable
from lungct.io.dicom import has_dicom_prefix
from lungct.names import ANNOTATED_LAYOUTS, Layout, class_name_problem
from lungct.params import SYNTHETIC_CLASSES

LAYOUTS = tuple(Layout)
IQOTHNCCD_FOLDERS = {"bengin cases", "benign cases", "malignant cases", "normal cases"}
CHEST_CTSCAN_SPLITS = {"train", "valid", "test"}
# A dataset's own split folders (split.strategy: official), as this project's split names.
OFFICIAL_SPLITS = {
    "train": "train",
    "valid": "val",
    "val": "val",
    "validation": "val",
    "test": "test",
}
DICOM_PROBES = 200  # files to open when looking for DICOM


def is_dicom_file(path: Path) -> bool:
    """A readable DICOM Part 10 file (an unreadable file is not one)."""
    try:
        return has_dicom_prefix(path)
    except OSError:
        return False


def detect_layout(root: Path) -> Layout:
    """Name the layout of the dataset under ``root``; a :class:`UserError` if none fits."""
    entries = list(root.rglob("*"))  # one walk of the tree for every test below
    folders = [p for p in entries if p.is_dir()]
    names = {p.name.lower() for p in folders}
    if names & IQOTHNCCD_FOLDERS:
        return Layout.IQOTHNCCD
    chest_classes = tuple(CLASS_PRESETS[Layout.CHEST_CTSCAN]["default"])  # its class folders
    for folder in folders:  # every class folder one of its four ("normal" alone is not enough)
        if folder.name.lower() in CHEST_CTSCAN_SPLITS:
            children = [c.name.lower() for c in folder.iterdir() if c.is_dir()]
            if children and all(c.startswith(chest_classes) for c in children):
                return Layout.CHEST_CTSCAN
    annotated = detect_annotated(root)  # before the DICOM probe: these are DICOM trees too
    if annotated is not None:
        return annotated
    files = (path for path in entries if path.is_file())
    if any(is_dicom_file(path) for path in itertools.islice(files, DICOM_PROBES)):
        return Layout.DICOM
    classes = image_folders(root, entries)
    if len(classes) >= 2:
        return Layout.FOLDERS
    raise UserError(
        f"{root}: cannot tell the dataset layout (no IQ-OTH/NCCD or Chest CT-Scan class "
        f"folders, no DICOM file, images in {len(classes)} class folder(s), 2 or more needed); "
        f"set data.layout to one of {', '.join(LAYOUTS)}"
    )


def image_folders(root: Path, entries: list[Path]) -> set[str]:
    """The names (lower case) of the folders that hold image files among ``entries`` (the
    paths under ``root``), told by the file extensions Pillow reads; neither ``root`` nor a
    split folder (``test/`` of unlabelled images, say) is a class folder."""
    from PIL import Image

    suffixes = Image.registered_extensions()
    return {
        p.parent.name.lower()
        for p in entries
        if p.suffix.lower() in suffixes and p.parent != root and p.is_file()
    } - set(OFFICIAL_SPLITS)


def folder_class(raw: str) -> str:
    """The class a ``folders`` dataset's folder names: lower case, each run of other
    characters than letters and digits one ``_`` ("Malignant cases" -> malignant_cases),
    checked as every class name is (:func:`lungct.names.class_name_problem`) before the
    split stage writes anything."""
    name = re.sub(r"[^a-z0-9]+", "_", raw.lower()).strip("_")
    problem = class_name_problem(name) if name else "no class name"
    if problem:
        shown = printable(raw if len(raw) <= 80 else raw[:77] + "...")
        raise UserError(f"split.classes: folder '{shown}' gives {problem}; give a mapping")
    return name


def label_from_path(rel: PurePosixPath, layout: str) -> tuple[str, str] | None:
    """The raw label and official split ("" if none) a layout gives a file by its path; None
    when the path carries none (a description file, or a tree labelled by ``labels.csv``)."""
    parts = rel.parts
    if layout == Layout.IQOTHNCCD:
        for part in reversed(parts[:-1]):
            if part.lower() in IQOTHNCCD_FOLDERS:
                return part, ""
        return None
    if layout == Layout.CHEST_CTSCAN:
        if len(parts) >= 3 and parts[-3].lower() in CHEST_CTSCAN_SPLITS:
            return parts[-2], parts[-3].lower()
        return None
    if layout in ANNOTATED_LAYOUTS:  # labelled slice by slice by their annotations
        return None
    if layout == Layout.FOLDERS:  # a split folder holding images directly is no class
        if len(parts) < 2 or parts[-2].lower() in OFFICIAL_SPLITS:
            return None
        official = parts[-3].lower() if len(parts) >= 3 else ""
        return parts[-2], official if official in OFFICIAL_SPLITS else ""
    return (parts[0], "") if len(parts) >= 2 else None  # dicom: class subfolders


DROPPED = ""  # a class mapping's value for raw labels left out of the split


def _with_binary(default: dict[str, str]) -> dict[str, dict[str, str]]:
    """A ``default`` preset and its ``binary`` task: normal and benign without cancer, every
    other class with, the labels it leaves out (:data:`DROPPED`) still out."""

    def binary(name: str) -> str:
        if name == DROPPED:
            return DROPPED
        return "without_cancer" if name in ("normal", "benign") else "with_cancer"

    return {"default": default, "binary": {raw: binary(name) for raw, name in default.items()}}


# Raw label -> class, per layout. Chest CT-Scan train/valid folders carry TNM suffixes
# (adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib): a key matches the label or its part
# before the first underscore.
CLASS_PRESETS: dict[str, dict[str, dict[str, str]]] = {
    Layout.DICOM: _with_binary({name: name for name in SYNTHETIC_CLASSES}),
    Layout.IQOTHNCCD: _with_binary(
        {
            "bengin cases": "benign",  # sic, as the dataset spells it
            "benign cases": "benign",
            "malignant cases": "malignant",
            "normal cases": "normal",
        }
    ),
    # LIDC-IDRI slices (docs/annotations.md): a median malignancy of exactly 3 is left out.
    Layout.LIDC: _with_binary(
        {"malignant": "malignant", "benign": "benign", "normal": "normal", "indeterminate": DROPPED}
    ),
    Layout.LUNA16: {"default": {"nodule": "nodule", "normal": "normal"}},
    # Lung-PET-CT-Dx: the histology letters of the tumour boxes (every box is a cancer).
    Layout.LUNG_PET_CT_DX: {
        "default": {"a": "adenocarcinoma", "b": "small_cell", "e": "large_cell", "g": "squamous"},
    },
    # binary: the binary notebook project's task
    Layout.CHEST_CTSCAN: _with_binary(
        {
            "adenocarcinoma": "adenocarcinoma",
            "large.cell.carcinoma": "large_cell",
            "squamous.cell.carcinoma": "squamous",
            "normal": "normal",
        }
    ),
}


def class_mapping(
    layout: str, classes: str | dict[str, str], labels: Iterable[str] = ()
) -> dict[str, str]:
    """The raw-label -> class mapping for a layout: a preset name or the user's own mapping
    (a raw label mapped to ``""`` is left out of the split, :data:`DROPPED`). ``labels``:
    the data's raw labels, which the ``folders`` layout's ``default`` preset names
    (:func:`folder_class`)."""
    if isinstance(classes, dict):
        return {raw.lower(): name for raw, name in classes.items()}
    if layout == Layout.FOLDERS:
        presets = {"default": {raw.lower(): folder_class(raw) for raw in labels}}
    else:
        presets = CLASS_PRESETS[layout]
    if classes not in presets:
        raise UserError(
            f"split.classes: layout '{layout}' has no '{classes}' preset "
            f"({', '.join(presets)}; or give a mapping of raw labels to classes)"
        )
    return presets[classes]


def map_labels(labels: list[str], mapping: dict[str, str]) -> list[str]:
    """Map raw labels to classes; an unmapped label is a :class:`UserError` listing them all."""
    out, unmapped = [], set()
    for label in labels:
        key = label.lower()
        name = mapping.get(key, mapping.get(key.split("_", 1)[0]))
        if name is None:
            unmapped.add(label)
        out.append(name)
    if unmapped:
        raise UserError(
            f"split.classes: no class for raw label(s) {sorted(unmapped)}; "
            f"mapped labels are {sorted(mapping)}"
        )
    return out
