"""Predictions as DICOM Structured Reports (``stages.predict --format dicom-sr``), with
highdicom: one TID 1500 Measurement Report in a Comprehensive SR per DICOM series or DICOM
image given alone, in the study of its sources and a new series per study; docs/predict.md
describes the content. ``99LUNGCT`` is this project's private coding scheme (DICOM reserves
``99`` prefixes for them), declared in the document. An exported image (PNG, JPG) has no
UIDs to reference nor a patient and study to take, so it gets no SR (:class:`NoReport`).

What a reader sees first: the series description and the report's first content item (a
TEXT ``Warning``, before the findings) say it is for research use only, with the model's
training-data warning. The software and the model are named as DICOM names equipment
(Manufacturer, Manufacturer's Model Name, Software Versions, a device observer) and as the
algorithm's version, :func:`lungct.contract.model_version`. An answer the model is not
sure enough of (:meth:`lungct.contract.Contract.answer`) is recorded as an uncertain
finding, not a class, with every probability.

What a source gives the SR (its UIDs, patient and study attributes) is the source's own
text: a source whose Study, Series or SOP Instance UID is no valid UID, or whose SR holds
any value its VR does not allow (pydicom's checks of length and form per VR, and no
control character but the line breaks of the text VRs), gets no SR (:class:`NoReport`),
and the other sources get theirs. File names are made of the (valid) UIDs only.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungct import __version__
from lungct.atomic import atomic_dir, sha256_file
from lungct.contract import MODEL_VERSION_HEX, Contract, model_version
from lungct.errors import UserError, first_line, printable
from lungct.names import UNCERTAIN
from lungct.serving.inference import Prediction

SCHEME = "99LUNGCT"
PREDICTED = "predicted_class"
WARNING = "warning"  # the report's first content item
SERIES_NUMBER = 9901
MANUFACTURER = "lungct project"
MODEL_NAME = "lungct"  # Manufacturer's Model Name
ALGORITHM = "lungct CNN"
RESEARCH_ONLY = "For research use only; not for diagnosis or any clinical use."
REFERENCED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# The VRs whose values may hold line breaks (PS3.5 6.2: LF, FF, CR); no other control
# character is allowed in any text value (ESC only opens a character set, which pydicom
# has decoded already).
MULTILINE_VRS = frozenset({"LT", "ST", "UT"})
LINE_BREAKS = frozenset("\n\f\r")
SHOWN = 80  # characters of a source's value quoted in a reason


@dataclass(frozen=True)
class Authoring:
    """What every SR of one run says of the software and the model that made it: the
    model's contract and the sha256 of the model file."""

    contract: Contract
    sha256: str

    @property
    def version(self) -> str:
        """The model's version (the algorithm's version in the SR)."""
        return model_version(self.sha256)

    @property
    def software_versions(self) -> list[str]:
        """Software Versions: the software's, then the model file's."""
        return [__version__, f"model sha256 {self.sha256[:MODEL_VERSION_HEX]}"]

    @property
    def device_uid(self) -> str:
        """The device observer's UID: the same for every SR of this model version."""
        from pydicom.uid import generate_uid

        return generate_uid(entropy_srcs=[ALGORITHM, self.version])

    @property
    def notice(self) -> str:
        """The report's first words: research use only, and the training-data warning."""
        warning = self.contract.warning
        return RESEARCH_ONLY + (f" WARNING: {warning}." if warning else "")

    @property
    def series_description(self) -> str:
        """The series description (at most 64 characters): research use only, and the
        training-data warning in a few words."""
        brief = self.contract.brief_warning
        if brief:
            return f"lungct, research use only: {brief}"
        return "lungct classification, research use only; not for diagnosis"

    @property
    def parameters(self) -> list[str]:
        """The algorithm's parameters: what it was trained on, the rule of a near tie."""
        return [
            self.contract.describe_data(),
            f"{UNCERTAIN} when the calibrated top probability is below "
            f"{self.contract.uncertain_below:.4g} (temperature {self.contract.temperature:.4g})",
        ]


@dataclass(frozen=True)
class NoReport:
    """A prediction that got no SR, and why."""

    file: str
    reason: str

    def __str__(self) -> str:
        return printable(f"{self.file}: no DICOM SR: {self.reason}")


def check_output_dir(path: Path) -> None:
    """``--output`` of dicom-sr: a new path or an empty folder (it is replaced whole, so a
    folder holding anything is refused rather than emptied); never a file or a link."""
    if path.is_symlink():
        raise UserError(f"{path}: is a symbolic link; give a new or empty folder for the SRs")
    if path.exists() and not path.is_dir():
        raise UserError(
            f"{path}: is not a folder; --format dicom-sr writes one SR file per "
            "series or image into a folder: give a new or empty folder"
        )
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"{path}: is not empty; give a new or empty folder for the SRs")


def reports(
    rows: Sequence[Prediction], authoring: Authoring
) -> tuple[list[tuple[str, object]], list[NoReport]]:
    """The SR datasets to write, as (file name, dataset), and the rows that get none."""
    series = [row for row in rows if row.level == "series"]
    images = [row for row in rows if row.level == "image"]
    groups = [(row, [image for image in images if _in_series(image, row)]) for row in series]
    covered = {id(image) for _, members in groups for image in members}
    groups += [(image, [image]) for image in images if id(image) not in covered]

    headers: dict[str, object] = {}
    out: list[tuple[str, object]] = []
    skipped: list[NoReport] = []
    study_series: dict[str, str] = {}
    names: set[str] = set()
    for row, members in groups:
        try:
            evidence = [_header(image.file, headers) for image in members]
        except _NotDicom as exc:
            skipped.append(NoReport(row.file, str(exc)))
            continue
        try:
            with _quiet():  # what pydicom warns of, invalid_value() says as the reason
                document = _report(row, members, evidence, authoring, study_series, len(out))
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom refuses
            reason = f"highdicom refuses its sources ({_shown(first_line(exc))})"
            skipped.append(NoReport(row.file, reason))
            continue
        problem = invalid_value(document)
        if problem:
            skipped.append(NoReport(row.file, f"its SR would not be valid DICOM: {problem}"))
            continue
        out.append((_name(row, evidence[0], names), document))
    return out, skipped


def _in_series(image: Prediction, series: Prediction) -> bool:
    return image.series_uid == series.series_uid and Path(image.file).is_relative_to(series.file)


class _NotDicom(Exception):
    pass


def _header(file: str, cache: dict[str, object]):
    """The DICOM header of a source file (pixel data left unread), cached per file, with
    the UIDs an SR references (and its file is named by): present, and valid UIDs."""
    if file not in cache:
        import pydicom
        from pydicom.uid import UID

        try:
            with _quiet():
                dataset = pydicom.dcmread(file, stop_before_pixels=True)
                uids = {key: dataset.get(key) for key in REFERENCED}
        except Exception:  # not DICOM: an exported image
            raise _NotDicom(
                "an exported image has no Study, Series or SOP Instance UID to reference"
            ) from None
        missing = [key for key, uid in uids.items() if not uid]
        if missing:
            raise _NotDicom(f"{Path(file).name} has no {', '.join(missing)} to reference")
        with _quiet():  # UID() itself warns of an invalid one
            invalid = [key for key, uid in uids.items() if not UID(str(uid)).is_valid]
        if invalid:
            raise _NotDicom(f"the {', '.join(invalid)} of {Path(file).name} is no valid UID")
        cache[file] = dataset
    return cache[file]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pydicom reading and highdicom building a source's values without pydicom's own
    warnings and log lines of them: :func:`invalid_value` checks the result instead, and
    one line says why a source gets no SR."""
    from pydicom import config

    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with config.disable_value_validation(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def invalid_value(dataset) -> str | None:
    """The first value of ``dataset`` (nested sequences included) that its VR does not
    allow, said in one line, or None: pydicom's checks of each VR's length and form
    (:func:`pydicom.valuerep.validate_value`), and no control character but the line breaks
    of :data:`MULTILINE_VRS`. The one check of an SR before it is written."""
    from pydicom import config
    from pydicom.multival import MultiValue
    from pydicom.valuerep import STR_VR, validate_value

    for element in dataset.iterall():
        if element.VR == "SQ" or element.value is None:
            continue
        values = element.value if isinstance(element.value, MultiValue) else [element.value]
        name = element.keyword or str(element.tag)
        for value in values:
            if element.VR in STR_VR:  # checked as written: the text (a PN's, an IS's)
                value = str(value)
                allowed = LINE_BREAKS if element.VR in MULTILINE_VRS else frozenset()
                if any(not ch.isprintable() and ch not in allowed for ch in value):
                    return f"{name} ({element.VR}) holds a control character: {_shown(value)}"
            try:
                validate_value(element.VR, value, config.RAISE)
            except ValueError as exc:
                reason = first_line(exc).split(" Please see")[0]  # pydicom's link to PS3.5
                return f"{name} ({element.VR}): {_shown(reason)}"
    return None


def _shown(text: str) -> str:
    """A source's text in a reason: at most :data:`SHOWN` characters, escaped."""
    return printable(text if len(text) <= SHOWN else text[: SHOWN - 3] + "...")


def _name(row: Prediction, first, used: set[str]) -> str:
    """The SR's file name: the series' or the image's UID (valid UIDs are digits and dots,
    :func:`_header`), the frame number, and a count for the same file given twice."""
    if row.level == "series":
        stem = f"series-{first.SeriesInstanceUID}"
    else:
        stem = f"image-{first.SOPInstanceUID}"
        if row.frame is not None:
            stem += f"-frame-{row.frame + 1}"
    name, n = f"{stem}.dcm", 1
    while name in used:  # the same file given twice
        n += 1
        name = f"{stem}-{n}.dcm"
    used.add(name)
    return name


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning[:64])


def _report(row, members, evidence, authoring: Authoring, study_series, index):
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes

    contract = authoring.contract
    probabilities = np.asarray(row.probabilities, dtype=np.float64)
    answer = contract.answer(probabilities)
    if answer == UNCERTAIN:
        below = f"{contract.uncertain_below:.4g}"
        finding = _code(UNCERTAIN, f"Uncertain: top probability below {below}")
    else:
        finding = _code(answer, answer)
    sources = [
        hd.sr.SourceImageForMeasurementGroup.from_source_image(
            dataset,
            referenced_frame_numbers=[image.frame + 1] if image.frame is not None else None,
        )
        for image, dataset in zip(members, evidence, strict=True)
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"lungct {row.level} classification"
        ),
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=ALGORITHM, version=authoring.version, parameters=authoring.parameters
        ),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=_code(PREDICTED, "Predicted class"), value=finding)
        ],
        measurements=[
            hd.sr.Measurement(
                name=_code(f"p_{cls}", f"Probability of {cls}"),
                value=float(p),
                unit=codes.UCUM.NoUnits,
            )
            for cls, p in zip(contract.classes, probabilities, strict=True)
        ],
        source_images=sources,
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=authoring.device_uid,
                    name=ALGORITHM,
                    manufacturer_name=MANUFACTURER,
                    model_name=MODEL_NAME,
                ),
            )
        ),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group],
    )
    _put_first(report[0].ContentSequence, authoring.notice)
    study = evidence[0].StudyInstanceUID
    series_uid = study_series.setdefault(study, hd.UID())
    return hd.sr.ComprehensiveSR(
        evidence=_unique(evidence),
        content=report,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=index + 1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=authoring.software_versions,
        is_complete=True,
        series_description=authoring.series_description,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=SCHEME, name="lungct model classes and probabilities"
            )
        ],
    )


def _put_first(items, notice: str) -> None:
    """The notice as the report's first content item (TEXT ``Warning``): before the findings,
    after only the items that qualify the whole report (its language, the observation
    context, the procedure: relationships HAS CONCEPT MOD and HAS OBS CONTEXT), which
    TID 1500 puts first and viewers show as its heading. TID 1500 is extensible."""
    from highdicom.sr import RelationshipTypeValues, TextContentItem

    contains = RelationshipTypeValues.CONTAINS
    at = next(i for i, item in enumerate(items) if item.RelationshipType == contains.value)
    items.insert(
        at,
        TextContentItem(name=_code(WARNING, "Warning"), value=notice, relationship_type=contains),
    )


def _unique(datasets: list) -> list:
    """The first dataset of each SOP Instance UID."""
    unique: dict[str, object] = {}
    for dataset in datasets:
        unique.setdefault(dataset.SOPInstanceUID, dataset)
    return list(unique.values())


def write_reports(
    out: Path, rows: Sequence[Prediction], contract: Contract, model: Path
) -> tuple[list[Path], list[NoReport]]:
    """The SRs of ``rows`` written into the folder ``out`` (:func:`check_output_dir`):
    built first, written into a temporary sibling, moved into place whole. Returns the
    paths written and the rows that got no SR."""
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # a line per copied module
    documents, skipped = reports(rows, Authoring(contract, sha256_file(model)))
    check_output_dir(out)  # again: it may have changed while the model ran
    with atomic_dir(out) as tmp:
        for name, document in documents:
            document.save_as(tmp / name, enforce_file_format=True)
    return [out / name for name, _ in documents], skipped
