"""A small, deterministic XML writer for the annotation files of the phantom.

Elements are ``(tag, attributes, content)`` with ``attributes`` a sequence of (name, value)
pairs written in that order and ``content`` a text (one line), a list of elements, or a
``(text, elements)`` pair: the text and the elements on the start tag's line, then the end tag
on a line of its own (Lung-PET-CT-Dx's ``<source>``).  The output is indented by two spaces
per level.
ElementTree is not used: its namespace handling reorders declarations and it cannot write a
text followed by elements (which Lung-PET-CT-Dx's files have).
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

Element = tuple[str, Sequence[tuple[str, str]], object]


def leaves(**texts: object) -> list[Element]:
    """Text elements without attributes, in keyword order: ``leaves(width=64)``."""
    return [(tag, (), str(text)) for tag, text in texts.items()]


def _lines(element: Element, depth: int, indent: str) -> list[str]:
    tag, attributes, content = element
    pad = indent * depth
    attrs = "".join(f" {name}={quoteattr(str(value))}" for name, value in attributes)
    if isinstance(content, str):
        return [f"{pad}<{tag}{attrs}>{escape(content)}</{tag}>"]
    if isinstance(content, tuple):  # a text, its elements on the same line, then the end tag
        inline = "".join("".join(_lines(child, 0, "")) for child in content[1])
        return [f"{pad}<{tag}{attrs}>{escape(content[0])}{inline}", f"{pad}</{tag}>"]
    if not content:
        return [f"{pad}<{tag}{attrs}/>"]
    lines = [f"{pad}<{tag}{attrs}>"]
    for child in content:
        lines.extend(_lines(child, depth + 1, indent))
    lines.append(f"{pad}</{tag}>")
    return lines


def xml_text(root: Element, *, declaration: bool = True, final_newline: bool = True) -> bytes:
    """UTF-8 bytes of the document ``root``."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>'] if declaration else []
    lines.extend(_lines(root, 0, "  "))
    return ("\n".join(lines) + ("\n" if final_newline else "")).encode("utf-8")
