"""The named choices (lungct/names.py) and the reason codes (lungct/reasons.py) are
defined once: the code uses the registries, never the bare strings, and the docs tables
list exactly what they hold."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from lungct import reasons as file_reasons
from lungct.annotations import reasons as annotation_reasons
from lungct.artifacts import is_leaky
from lungct.errors import printable
from lungct.names import (
    FORM_LAYOUTS,
    AnnotationForm,
    Crop,
    Framing,
    Layout,
    TransferSyntax,
)

ROOT = Path(__file__).resolve().parents[1]
CODE = [*sorted((ROOT / "lungct").rglob("*.py")), *sorted((ROOT / "stages").glob("*.py"))]
CODE.append(ROOT / "app.py")
REGISTRIES = {ROOT / "lungct/names.py", ROOT / "lungct/reasons.py"}
REGISTRIES.add(ROOT / "lungct/annotations/reasons.py")
ROW = re.compile(r"^\| `([^`]+)` \|", re.MULTILINE)


def table_codes(doc: str, heading: str) -> list[str]:
    """The first column of the first table after ``heading`` in a docs page."""
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    section = text.split(heading, 1)[1]
    table = section[section.index("\n|") :].split("\n\n", 1)[0]
    return ROW.findall(table)


def params_row(key: str) -> str:
    text = (ROOT / "docs/params.md").read_text(encoding="utf-8")
    (row,) = [line for line in text.splitlines() if line.startswith(f"| `{key}`")]
    return row


def literals(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_the_registry_constants_are_its_codes():
    for module in (file_reasons, annotation_reasons):
        codes = {v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)}
        assert codes == set(module.REASONS)
        assert all(meaning and "\n" not in meaning for meaning in module.REASONS.values())


def test_docs_table_lists_exactly_the_reason_codes():
    codes = table_codes("dicom.md", "## Reason codes")
    assert len(codes) == len(set(codes))
    assert set(codes) == set(file_reasons.REASONS)


def test_code_uses_the_registries_not_bare_strings():
    """A reason code, a layout, an annotation form or a transfer syntax written as a
    string literal outside its registry would be a second definition of it."""
    codes = set(file_reasons.REASONS) | set(annotation_reasons.REASONS)
    names = {m.value for enum in (Layout, AnnotationForm, TransferSyntax) for m in enum}
    names |= {Framing.BODY.value, Crop.LESION.value}  # "image" and "none" mean other things too
    found = [
        f"{path.relative_to(ROOT)}:{line}: {value!r}"
        for path in CODE
        if path not in REGISTRIES
        for line, value in literals(path)
        if value in codes | names
    ]
    assert found == []


@pytest.mark.parametrize(
    ("key", "enum"),
    [
        ("data.layout", Layout),
        ("data.synthetic.annotations", AnnotationForm),
        ("data.synthetic.transfer_syntax", TransferSyntax),
        ("convert.framing", Framing),
        ("convert.crop", Crop),
    ],
)
def test_params_docs_name_every_choice(key, enum):
    row = params_row(key)
    assert [m.value for m in enum if f"`{m.value}`" not in row] == []


def test_layouts_table_is_the_layouts():
    assert table_codes("data.md", "## Layouts and classes") == list(Layout)


def test_the_phantom_writes_every_form_and_syntax():
    from lungct.params import SyntheticParams
    from lungct.phantom import ANNOTATION_FORMS
    from lungct.phantom.transfer_syntaxes import TRANSFER_SYNTAXES

    assert set(TRANSFER_SYNTAXES) == set(TransferSyntax)
    assert set(ANNOTATION_FORMS) == set(FORM_LAYOUTS) == set(AnnotationForm)
    fields = SyntheticParams.model_fields
    assert set(fields["annotations"].annotation.__args__) == set(AnnotationForm)
    assert set(fields["transfer_syntax"].annotation.__args__) == set(TransferSyntax)


def test_printable_escapes_what_would_break_a_line():
    assert printable("a\nb\tc\x1b\udcff é") == "a\\nb\\tc\\x1b\\udcff é"


def test_is_leaky_reads_the_flag_and_its_absence():
    assert is_leaky({"leaky": True}) and not is_leaky({"leaky": False}) and not is_leaky({})
