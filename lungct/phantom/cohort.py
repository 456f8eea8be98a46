"""The phantom cohort: per-patient labels, ids and rngs, and :func:`write_cohort`.

Patient ``i`` (0-based) of a cohort with seed ``s`` is ``patient_id(i)``, labelled
``assign_labels(...)[i]`` and rendered from ``patient_rng(s, i)``; its sex, age and UIDs are
derived from ``s`` and the patient id too, so a cohort is byte-identical for the same
parameters.

Forms (``annotations``): ``labels`` (the DICOM series only; the caller writes labels.csv),
``lidc`` (plus one LIDC-IDRI reading message per series, :mod:`~lungct.phantom.lidc_xml`),
``luna16`` (plus ``annotations.csv``, :mod:`~lungct.phantom.luna16`), ``luna16-mhd`` (MetaImage
volumes in ``subset0/`` and ``annotations.csv``, no DICOM) and ``voc`` (Lung-PET-CT-Dx: Pascal
VOC boxes of the malignant patients, :mod:`~lungct.phantom.voc`).  The annotated forms use a
clinical series by default (``series``): slices 1-2.5 mm apart, so that the nodule shows on
some slices only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lungct.names import AnnotationForm
from lungct.params import SYNTHETIC_CLASSES as CLASSES
from lungct.phantom import lidc_xml, luna16, voc
from lungct.phantom.dicom_writer import ct_slice_dataset
from lungct.phantom.geometry import fov_mask
from lungct.phantom.patient import PhantomPatient, check_render_args, phantom_patient
from lungct.phantom.records import SeriesRecord
from lungct.phantom.transfer_syntaxes import (
    DEFAULT_TRANSFER_SYNTAX,
    resolve_transfer_syntax,
    save_slice,
)

_LABEL_STREAM = 0x1AB31  # rng stream of the label shuffle
_PATIENT_STREAM = 0x9E3779B9  # rng stream of a patient's rendering
_DEMOGRAPHICS_STREAM = 0x3E7A  # rng stream of a patient's sex and age
_SPACING_STREAM = 0x5BAC  # rng stream of a clinical series' slice spacing

ANNOTATION_FORMS = tuple(AnnotationForm)  # lungct.names.FORM_LAYOUTS: the layout each is read as
_LUNA16_FORMS = (AnnotationForm.LUNA16, AnnotationForm.LUNA16_MHD)
SERIES_KINDS = ("auto", "fitted", "clinical")
# Slice spacing (= thickness) of a clinical series, and how often each is drawn (LIDC-IDRI
# is mostly 1.25-2.5 mm; LUNA16 kept series up to 2.5 mm).
CLINICAL_SPACINGS_MM = (1.0, 1.25, 1.5, 2.0, 2.5)
_CLINICAL_WEIGHTS = (0.15, 0.30, 0.15, 0.25, 0.15)


def patient_rng(seed: int, index: int) -> np.random.Generator:
    """Generator used by :func:`write_cohort` for patient ``index`` (0-based) of a cohort."""
    return np.random.default_rng([int(seed), int(index), _PATIENT_STREAM])


def patient_id(index: int) -> str:
    """PatientID of patient ``index`` (0-based): ``PHANTOM-0001`` for index 0."""
    return f"PHANTOM-{index + 1:04d}"


def series_uid(seed: int, pid: str) -> str:
    """SeriesInstanceUID of the series of patient ``pid`` (LUNA16's ``seriesuid``)."""
    return generate_uid(entropy_srcs=[str(seed), pid, "series"])


def clinical_spacing(seed: int, index: int) -> float:
    """Slice spacing (mm) of patient ``index``'s clinical series."""
    rng = np.random.default_rng([int(seed), int(index), _SPACING_STREAM])
    return CLINICAL_SPACINGS_MM[int(rng.choice(len(CLINICAL_SPACINGS_MM), p=_CLINICAL_WEIGHTS))]


def _check_seed(seed: int) -> int:
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return seed


def _validate_balance(class_balance: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(class_balance) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown classes in class_balance: {unknown}; expected {CLASSES}")
    weights = {c: float(class_balance.get(c, 0.0)) for c in CLASSES}
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        raise ValueError(f"class_balance weights must be finite and >= 0: {dict(class_balance)}")
    if sum(weights.values()) <= 0:
        raise ValueError("class_balance needs at least one positive weight")
    return weights


def assign_labels(patients: int, class_balance: dict[str, float], seed: int) -> list[str]:
    """Deterministic per-patient labels.

    Counts are proportional to ``class_balance`` (largest-remainder rounding, ties broken in
    ``CLASSES`` order); every class with a positive weight gets at least one patient when
    ``patients`` is at least the number of such classes.  The list is then shuffled with
    ``seed``.
    """
    patients = int(patients)
    if patients < 0:
        raise ValueError(f"patients must be >= 0, got {patients}")
    weights = _validate_balance(class_balance)
    total = sum(weights.values())
    positive = [c for c in CLASSES if weights[c] > 0]
    quotas = {c: patients * weights[c] / total for c in positive}
    counts = {c: int(math.floor(quotas[c])) for c in positive}
    left = patients - sum(counts.values())
    order = sorted(positive, key=lambda c: (-(quotas[c] - counts[c]), CLASSES.index(c)))
    for c in order[:left]:
        counts[c] += 1
    if patients >= len(positive):
        for c in positive:
            if counts[c] == 0:
                donor = max(positive, key=lambda d: (counts[d], -CLASSES.index(d)))
                counts[donor] -= 1
                counts[c] += 1
    labels = [c for c in positive for _ in range(counts[c])]
    rng = np.random.default_rng([_check_seed(seed), _LABEL_STREAM])
    order_idx = rng.permutation(len(labels))
    return [labels[i] for i in order_idx]


def _write_patient(
    series_root: Path | None,
    patient: PhantomPatient,
    pid: str,
    seed: int,
    idx: int,
    fov: np.ndarray,
    syntax: str,
) -> SeriesRecord:
    """Write one patient's series as ``series_root/<SeriesInstanceUID>/<NNNN>.dcm`` in
    ``syntax`` (nothing is written when ``series_root`` is None) and return its record."""
    meta_rng = np.random.default_rng([seed, idx, _DEMOGRAPHICS_STREAM])
    sex = "M" if meta_rng.random() < 0.5 else "F"
    age = f"{int(meta_rng.integers(40, 86)):03d}Y"
    study_uid = generate_uid(entropy_srcs=[str(seed), pid, "study"])
    series = series_uid(seed, pid)
    for_uid = generate_uid(entropy_srcs=[str(seed), pid, "frame-of-reference"])
    series_dir = None if series_root is None else series_root / series
    if series_dir is not None:
        series_dir.mkdir(parents=True, exist_ok=False)
    sop_uids, stored = [], []
    for k in range(patient.hu.shape[0]):
        inst = k + 1
        sop_uid = generate_uid(entropy_srcs=[str(seed), pid, "sop", str(inst)])
        ds = ct_slice_dataset(
            patient.hu[k],
            patient_id=pid,
            study_uid=study_uid,
            series_uid=series,
            sop_uid=sop_uid,
            instance_number=inst,
            z_mm=float(patient.z_positions_mm[k]),
            pixel_spacing_mm=patient.pixel_spacing_mm,
            slice_thickness_mm=patient.slice_spacing_mm,
            fov_mask=fov,
            frame_of_reference_uid=for_uid,
            patient_name=f"Phantom^{pid.split('-')[-1]}",
            patient_sex=sex,
            patient_age=age,
        )
        sop_uids.append(sop_uid)
        stored.append(np.frombuffer(ds.PixelData, dtype="<i2").reshape(ds.Rows, ds.Columns))
        if series_dir is not None:
            save_slice(ds, series_dir / f"{inst:04d}.dcm", syntax)
    return SeriesRecord(
        index=idx,
        patient_id=pid,
        label=patient.label,
        study_uid=study_uid,
        series_uid=series,
        sop_uids=tuple(sop_uids),
        patient=patient,
        stored=np.stack(stored),
        series_dir=series_dir,
    )


def _check_options(annotations: str, transfer_syntax: str, series: str) -> str:
    if annotations not in ANNOTATION_FORMS:
        raise ValueError(
            f"annotations must be one of {', '.join(ANNOTATION_FORMS)}, got {annotations!r}"
        )
    if series not in SERIES_KINDS:
        raise ValueError(f"series must be one of {SERIES_KINDS}, got {series!r}")
    syntax = resolve_transfer_syntax(transfer_syntax)
    if annotations == AnnotationForm.LUNA16_MHD and syntax != ExplicitVRLittleEndian:
        raise ValueError(
            f"annotations 'luna16-mhd' writes MetaImage volumes, no DICOM: transfer_syntax "
            f"must stay '{DEFAULT_TRANSFER_SYNTAX}', got {transfer_syntax!r}"
        )
    return syntax


def write_cohort(
    out_dir: Path,
    *,
    patients: int,
    slices: int,
    image_size: int,
    class_balance: dict[str, float],
    seed: int,
    annotations: str = AnnotationForm.LABELS,
    transfer_syntax: str = DEFAULT_TRANSFER_SYNTAX,
    series: str = "auto",
) -> list[tuple[str, str]]:
    """Write ``out_dir/<PatientID>/<SeriesInstanceUID>/<NNNN>.dcm`` for every patient.

    Patient ``i`` (0-based) is ``patient_id(i)``, labelled ``assign_labels(...)[i]`` and rendered
    with ``phantom_patient(patient_rng(seed, i), label, slices, image_size, spacing)``.
    ``NNNN`` is the 4-digit InstanceNumber (1 = most superior slice).  Returns
    ``[(patient_id, label), ...]`` in patient order; no labels file is written.  ``out_dir`` is
    created if needed and must not already contain files (stale patients would silently join
    the cohort).

    ``annotations``: one of :data:`ANNOTATION_FORMS` (see the module docstring); in ``voc``
    the malignant patients' ids are ``Lung_Dx-<letter><NNNN>`` (the returned rows say so).
    ``transfer_syntax``: a name of :data:`~lungct.phantom.transfer_syntaxes.TRANSFER_SYNTAXES`
    or its UID; all lossless.  ``series``: ``fitted`` (spacing fitted to the nodule, the
    default series), ``clinical`` (:func:`clinical_spacing`), or ``auto``: fitted for
    ``labels``, clinical otherwise.
    """
    seed = _check_seed(seed)
    patients = int(patients)
    if patients < 1:
        raise ValueError(f"patients must be >= 1, got {patients}")
    check_render_args(CLASSES[0], slices, image_size)
    syntax = _check_options(annotations, transfer_syntax, series)
    clinical = series == "clinical" or (series == "auto" and annotations != AnnotationForm.LABELS)
    labels = assign_labels(patients, class_balance, seed)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it before writing a new cohort")
    out_dir.mkdir(parents=True, exist_ok=True)
    fov = fov_mask(int(image_size))
    codes = voc.lung_dx_codes(labels, seed) if annotations == AnnotationForm.VOC else {}
    luna_rows: list[tuple] = []
    rows: list[tuple[str, str]] = []
    for idx, label in enumerate(labels):
        pid = voc.PATIENT_PREFIX + codes[idx] if idx in codes else patient_id(idx)
        spacing = clinical_spacing(seed, idx) if clinical else None
        patient = phantom_patient(patient_rng(seed, idx), label, slices, image_size, spacing)
        root = None if annotations == AnnotationForm.LUNA16_MHD else out_dir / pid
        record = _write_patient(root, patient, pid, seed, idx, fov, syntax)
        if annotations == AnnotationForm.LIDC:
            lidc_xml.write_lidc_xml(record, seed)
        elif annotations in _LUNA16_FORMS:
            luna_rows.extend(luna16.annotation_rows(record))
            if annotations == AnnotationForm.LUNA16_MHD:
                luna16.write_metaimage(out_dir / luna16.SUBSET, record)
        elif annotations == AnnotationForm.VOC and idx in codes:
            voc.write_voc_annotations(out_dir, record, codes[idx], seed)
        rows.append((pid, label))
    if annotations in _LUNA16_FORMS:
        luna16.write_annotations_csv(out_dir / luna16.ANNOTATIONS_CSV, luna_rows)
    return rows
