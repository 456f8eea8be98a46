"""Reading annotation XML that may be hostile: capped in bytes and in elements, no DTD,
no entities.

``defusedxml`` refuses a DOCTYPE, an entity declaration or an external reference by the
parser's own hooks, in whatever encoding (a byte search for ``<!DOCTYPE`` misses UTF-16).
Element names are matched by local name, case-insensitively: ``{http://www.nih.gov}roi``,
``nih:roi`` and ``roi`` are the same element.
"""

from __future__ import annotations

import io
import math
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
# An LIDC-IDRI read has some 10^5 elements at most (three per outline point); 64 MiB of
# empty elements would be 1.7 * 10^7, seconds and gigabytes to build as a tree.
MAX_XML_ELEMENTS = 2**19


class AnnotationError(Exception):
    """An annotation file that cannot be used: ``reason`` is a reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_capped(path: Path, max_bytes: int) -> bytes:
    """A file's bytes; :class:`AnnotationError` when unreadable or over ``max_bytes`` (unread)."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise AnnotationError(
                ANNOTATION_TOO_LARGE, f"{size_text(size)}, over the limit of {size_text(max_bytes)}"
            )
        return path.read_bytes()
    except OSError as exc:
        raise AnnotationError(ANNOTATION_UNREADABLE, first_line(exc)) from None


def read_xml(
    path: Path, max_bytes: int = MAX_XML_BYTES, max_elements: int = MAX_XML_ELEMENTS
) -> ET.Element:
    """The root element of an XML file, or :class:`AnnotationError`. Parsed incrementally:
    the file is refused (``annotation_too_large``) at its ``max_elements + 1``-th element,
    before the rest is built."""
    data = read_capped(path, max_bytes)
    try:
        events = DET.iterparse(
            io.BytesIO(data),
            events=("start",),
            forbid_dtd=True,
            forbid_entities=True,
            forbid_external=True,
        )
        for count, _ in enumerate(events, start=1):
            if count > max_elements:
                raise AnnotationError(
                    ANNOTATION_TOO_LARGE, f"more than {max_elements} XML elements, not read"
                )
        return events.root  # type: ignore[attr-defined]
    except DefusedXmlException as exc:
        raise AnnotationError(
            ANNOTATION_UNSAFE, f"{type(exc).__name__}: DTDs and entities are refused"
        ) from None
    except (ET.ParseError, ValueError) as exc:  # UnicodeError is a ValueError
        raise AnnotationError(
            ANNOTATION_UNREADABLE, f"not well-formed XML: {first_line(exc)}"
        ) from None


def local(tag: str) -> str:
    """An element's name without namespace or prefix, lower-cased (the parser drops
    comments and processing instructions, whose tags are not names)."""
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1].lower()


def children(element: ET.Element, name: str) -> Iterator[ET.Element]:
    """The direct children named ``name`` (local name, any case)."""
    name = name.lower()
    return (child for child in element if local(child.tag) == name)


def child(element: ET.Element, name: str) -> ET.Element | None:
    return next(children(element, name), None)


def text(element: ET.Element | None, name: str) -> str:
    """The stripped text of the first child ``name`` of ``element``; "" when absent."""
    found = child(element, name) if element is not None else None
    return found.text.strip() if found is not None and found.text is not None else ""


def number(element: ET.Element | None, name: str) -> float | None:
    """A finite number from the first child ``name``; None when absent or not a number."""
    try:
        result = float(text(element, name))
    except ValueError:
        return None
    return result if math.isfinite(result) else None
