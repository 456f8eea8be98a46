"""Reading annotation XML that may be hostile: size-capped, no DTD, no entities.

Parsing is :mod:`xml.etree.ElementTree` through ``defusedxml`` (pinned in
requirements.txt) with ``forbid_dtd=True``: a document with a DOCTYPE, an entity
declaration or an external reference is refused by the parser's own hooks, in whatever
encoding it is written (a byte search for ``<!DOCTYPE`` misses UTF-16). Files over the
size limit are not read at all.

Element names are matched by local name, case-insensitively: ``{http://www.nih.gov}roi``,
``nih:roi`` (a declared prefix) and ``roi`` are the same element.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from lungct.annotations.reasons import (
    ANNOTATION_TOO_LARGE,
    ANNOTATION_UNREADABLE,
    ANNOTATION_UNSAFE,
)
from lungct.errors import first_line
from lungct.limits import size_text

MAX_XML_BYTES = 64 * 2**20  # an LIDC-IDRI read is at most a few MiB; a VOC box 1 KiB


class AnnotationError(Exception):
    """An annotation file that cannot be used: ``reason`` is a reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_xml(path: Path, max_bytes: int = MAX_XML_BYTES) -> ET.Element:
    """The root element of an XML file, or :class:`AnnotationError`."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise AnnotationError(
                ANNOTATION_TOO_LARGE,
                f"{size_text(size)}, over the limit of {size_text(max_bytes)}",
            )
        data = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(ANNOTATION_UNREADABLE, first_line(exc)) from None
    try:
        return DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise AnnotationError(
            ANNOTATION_UNSAFE, f"{type(exc).__name__}: DTDs and entities are refused"
        ) from None
    except (ET.ParseError, ValueError, UnicodeError) as exc:
        raise AnnotationError(
            ANNOTATION_UNREADABLE, f"not well-formed XML: {first_line(exc)}"
        ) from None


def local(tag: object) -> str:
    """An element's name without namespace or prefix, lower-cased ("" for comments)."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1].lower()


def children(element: ET.Element, name: str) -> Iterator[ET.Element]:
    """The direct children named ``name`` (local name, any case)."""
    name = name.lower()
    return (child for child in element if local(child.tag) == name)


def child(element: ET.Element, name: str) -> ET.Element | None:
    return next(children(element, name), None)


def text(element: ET.Element | None, name: str | None = None) -> str:
    """The stripped text of ``element`` (or of its first child ``name``); "" when absent."""
    if element is not None and name is not None:
        element = child(element, name)
    if element is None or element.text is None:
        return ""
    return element.text.strip()


def number(element: ET.Element | None, name: str) -> float | None:
    """A finite number from the first child ``name``; None when absent or not a number."""
    value = text(element, name)
    try:
        result = float(value)
    except ValueError:
        return None
    return result if result == result and abs(result) != float("inf") else None
