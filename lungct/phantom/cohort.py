"""The phantom cohort: per-patient labels, ids and rngs, and :func:`write_cohort`.

Patient ``i`` (0-based) of a cohort with seed ``s`` is ``patient_id(i)``, labelled
``assign_labels(...)[i]`` and rendered from ``patient_rng(s, i)``; its sex, age and UIDs are
derived from ``s`` and the patient id too, so a cohort is byte-identical for the same
parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from lungct.params import SYNTHETIC_CLASSES as CLASSES
from lungct.phantom.dicom_writer import ct_slice_dataset
from lungct.phantom.geometry import fov_mask
from lungct.phantom.patient import PhantomPatient, check_render_args, phantom_patient

__all__ = ["assign_labels", "patient_id", "patient_rng", "write_cohort"]

_LABEL_STREAM = 0x1AB31  # rng stream of the label shuffle
_PATIENT_STREAM = 0x9E3779B9  # rng stream of a patient's rendering
_DEMOGRAPHICS_STREAM = 0x3E7A  # rng stream of a patient's sex and age


def patient_rng(seed: int, index: int) -> np.random.Generator:
    """Generator used by :func:`write_cohort` for patient ``index`` (0-based) of a cohort."""
    return np.random.default_rng([int(seed), int(index), _PATIENT_STREAM])


def patient_id(index: int) -> str:
    """PatientID of patient ``index`` (0-based): ``PHANTOM-0001`` for index 0."""
    return f"PHANTOM-{index + 1:04d}"


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
    series_root: Path, patient: PhantomPatient, pid: str, seed: int, idx: int, fov: np.ndarray
) -> None:
    """Write one patient's series as ``series_root/<SeriesInstanceUID>/<NNNN>.dcm``."""
    meta_rng = np.random.default_rng([seed, idx, _DEMOGRAPHICS_STREAM])
    sex = "M" if meta_rng.random() < 0.5 else "F"
    age = f"{int(meta_rng.integers(40, 86)):03d}Y"
    study_uid = generate_uid(entropy_srcs=[str(seed), pid, "study"])
    series_uid = generate_uid(entropy_srcs=[str(seed), pid, "series"])
    for_uid = generate_uid(entropy_srcs=[str(seed), pid, "frame-of-reference"])
    series_dir = series_root / series_uid
    series_dir.mkdir(parents=True, exist_ok=False)
    for k in range(patient.hu.shape[0]):
        inst = k + 1
        ds = ct_slice_dataset(
            patient.hu[k],
            patient_id=pid,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=generate_uid(entropy_srcs=[str(seed), pid, "sop", str(inst)]),
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
        ds.save_as(series_dir / f"{inst:04d}.dcm", enforce_file_format=True)


def write_cohort(
    out_dir: Path,
    *,
    patients: int,
    slices: int,
    image_size: int,
    class_balance: dict[str, float],
    seed: int,
) -> list[tuple[str, str]]:
    """Write ``out_dir/<PatientID>/<SeriesInstanceUID>/<NNNN>.dcm`` for every patient.

    Patient ``i`` (0-based) is ``patient_id(i)``, labelled ``assign_labels(...)[i]`` and rendered
    with ``phantom_patient(patient_rng(seed, i), label, slices, image_size)``.  ``NNNN`` is the
    4-digit InstanceNumber (1 = most superior slice).  Returns ``[(patient_id, label), ...]`` in
    patient order; no labels file is written.  ``out_dir`` is created if needed and must not
    already contain files (stale patients would silently join the cohort).
    """
    seed = _check_seed(seed)
    patients = int(patients)
    if patients < 1:
        raise ValueError(f"patients must be >= 1, got {patients}")
    check_render_args(CLASSES[0], slices, image_size)
    labels = assign_labels(patients, class_balance, seed)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it before writing a new cohort")
    out_dir.mkdir(parents=True, exist_ok=True)
    fov = fov_mask(int(image_size))
    rows: list[tuple[str, str]] = []
    for idx, label in enumerate(labels):
        pid = patient_id(idx)
        patient = phantom_patient(patient_rng(seed, idx), label, slices, image_size)
        _write_patient(out_dir / pid, patient, pid, seed, idx, fov)
        rows.append((pid, label))
    return rows
