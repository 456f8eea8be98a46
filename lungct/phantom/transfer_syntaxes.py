"""Writing phantom slices in any lossless transfer syntax CT is stored in (docs/dicom.md).

:data:`TRANSFER_SYNTAXES` names them (``write_cohort(..., transfer_syntax=NAME)``; a UID is
accepted too) and :func:`save_slice` writes one :func:`~lungct.phantom.ct_slice_dataset` in
one of them: the native ones with pydicom (``big-endian``: pixel bytes swapped here, as pydicom
writes OW as it is); ``rle``, ``jpeg-ls`` and ``jpeg2000`` through ``Dataset.compress``; the
JPEG Lossless ones with GDCM, which pydicom can decode with but not encode with
(:func:`gdcm_encode_frame`).

Every encoder is chosen by name, not by what happens to be installed, so the same seed gives
the same bytes.  Lossy syntaxes are not offered: the phantom's HU must come back exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from lungct.names import TransferSyntax

DEFAULT_TRANSFER_SYNTAX = TransferSyntax.EXPLICIT

# name -> UID; the names are what params.yaml says (data.synthetic.transfer_syntax)
TRANSFER_SYNTAXES: dict[str, UID] = {
    TransferSyntax.EXPLICIT: ExplicitVRLittleEndian,
    TransferSyntax.IMPLICIT: ImplicitVRLittleEndian,
    TransferSyntax.DEFLATED: DeflatedExplicitVRLittleEndian,
    TransferSyntax.BIG_ENDIAN: ExplicitVRBigEndian,
    TransferSyntax.RLE: RLELossless,
    TransferSyntax.JPEG_LOSSLESS: JPEGLosslessSV1,
    TransferSyntax.JPEG_LOSSLESS_P14: JPEGLossless,
    TransferSyntax.JPEG_LS: JPEGLSLossless,
    TransferSyntax.JPEG2000: JPEG2000Lossless,
}

# Dataset.compress(...) plugin per syntax, fixed so that the bytes do not depend on what else
# is installed.
_COMPRESS_PLUGIN = {
    RLELossless: "pydicom",
    JPEGLSLossless: "pyjpegls",
    JPEG2000Lossless: "pylibjpeg",
}
GDCM_SYNTAXES = (JPEGLosslessSV1, JPEGLossless)


def resolve_transfer_syntax(name: str) -> UID:
    """The UID of a :data:`TRANSFER_SYNTAXES` name or UID; ValueError for anything else."""
    text = str(name).strip()
    for key, uid in TRANSFER_SYNTAXES.items():
        if text in (key, uid):
            return uid
    raise ValueError(
        f"unknown or lossy transfer syntax {name!r}; expected one of "
        f"{', '.join(sorted(TRANSFER_SYNTAXES))} or their UIDs"
    )


def gdcm_encode_frame(ds: Dataset, syntax: str, quality: int | None = None) -> bytes:
    """One frame of ``ds``'s native pixel data encoded by GDCM in ``syntax`` (a JPEG syntax;
    ``quality`` makes GDCM's JPEG codec lossy, for test data of the lossy syntaxes).

    GDCM is driven the way pydicom's own GDCM RLE encoder does it: an image built from the
    native bytes, converted with ``ImageChangeTransferSyntax``, one fragment back."""
    import gdcm  # optional at import time: only this encoder needs it

    writer = gdcm.ImageWriter()  # keeps the image alive while it is used
    image = writer.GetImage()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((int(ds.Columns), int(ds.Rows), 1))
    photometric = gdcm.PhotometricInterpretation.GetPIType(str(ds.PhotometricInterpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(photometric))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ImplicitVRLittleEndian))
    bits = (int(ds.BitsAllocated), int(ds.BitsStored), int(ds.HighBit))
    image.SetPixelFormat(gdcm.PixelFormat(1, *bits, int(ds.PixelRepresentation)))
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetByteStringValue(bytes(ds.PixelData))
    image.SetDataElement(element)
    converter = gdcm.ImageChangeTransferSyntax()
    converter.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(syntax))))
    if quality is not None:
        codec = gdcm.JPEGCodec()
        codec.SetLossless(False)
        codec.SetQuality(int(quality))
        converter.SetUserCodec(codec)
    converter.SetInput(image)
    if not converter.Change():
        raise RuntimeError(f"GDCM could not encode the frame as {UID(syntax).name}")
    fragments = converter.GetOutput().GetDataElement().GetSequenceOfFragments()
    if fragments is None or fragments.GetNumberOfFragments() != 1:
        raise RuntimeError("GDCM returned no single fragment for the frame")
    buffer = fragments.GetFragment(0).GetByteValue().GetBuffer()
    return buffer.encode("utf-8", "surrogateescape")


def save_slice(ds: Dataset, path: Path, syntax: UID) -> None:
    """Write ``ds`` (native pixel data, Explicit VR Little Endian file meta, as
    :func:`~lungct.phantom.ct_slice_dataset` returns it) to ``path`` in ``syntax``.

    ``ds`` is changed (its pixel data and transfer syntax).  The SOP Instance UID is kept."""
    syntax = UID(syntax)
    if syntax not in TRANSFER_SYNTAXES.values():
        raise ValueError(f"cannot write {syntax.name} ({syntax}); see TRANSFER_SYNTAXES")
    if syntax == ExplicitVRBigEndian:
        stored = np.frombuffer(ds.PixelData, dtype="<i2" if ds.PixelRepresentation else "<u2")
        ds.PixelData = stored.astype(stored.dtype.newbyteorder(">")).tobytes()
    elif syntax in _COMPRESS_PLUGIN:
        ds.compress(syntax, encoding_plugin=_COMPRESS_PLUGIN[syntax], generate_instance_uid=False)
    elif syntax in GDCM_SYNTAXES:
        ds.PixelData = encapsulate([gdcm_encode_frame(ds, syntax)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    # pydicom encodes (and deflates) the data set as the file meta's transfer syntax says
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
