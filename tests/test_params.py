import os
import subprocess
import sys

import pytest
import yaml

from lungct.errors import UserError
from lungct.names import Crop
from lungct.params import (
    CROP_MM,
    GATES,
    RESTORE,
    Preprocessing,
    load_params,
    merge,
    parse_params,
    yaml_value,
)
from tests.conftest import ROOT, TINY, project_params

BACK = RESTORE.format(path="params.yaml")  # how every params error ends


def test_project_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.convert.windows[0].width > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"data": {"source": "ftp"}}, "data.source: input should be 'synthetic'"),
        ({"train": {"epochs": 0}}, "train.epochs: input should be greater than 0"),
        ({"train": {"epochs": -3}}, "train.epochs: input should be greater than 0"),
        ({"train": {"epochs": 2.5}}, "train.epochs: input should be a valid integer"),
        ({"train": {"lrr": 0.1}}, "train.lrr: unknown key"),
        ({"convert": {"windows": [{"center": -600, "width": 0}]}}, "convert.windows.0.width"),
        ({"convert": {"windows": [{"center": 0, "width": 1}] * 2}}, "convert.windows: give 1"),
        ({"convert": {"windows": []}}, "convert.windows: list should have at least 1 item"),
        ({"convert": {"max_skipped_fraction": 1.5}}, "convert.max_skipped_fraction"),
        ({"split": {"val_fraction": 0.5, "test_fraction": 0.45}}, "split.test_fraction: "),
        ({"split": {"test_fraction": 1.5}}, "split.test_fraction: input should be less than 1"),
        (
            {"convert": {"image_size": 16}, "train": {"filters": [8, 8, 8, 8]}},
            "convert.image_size: 16 is too small for 4 pooling blocks",
        ),
        ({"data": {"synthetic": {"patients": 5}}}, "data.synthetic.patients: 5 is too few"),
        (
            {"data": {"synthetic": {"class_balance": {"cancer": 1.0}}}},
            "data.synthetic.class_balance",
        ),
        ({"typo_section": {}}, "typo_section: unknown key"),
        ({"train": {"convs_per_block": 0}}, "train.convs_per_block: input should be greater"),
        ({"train": {"augment": {"contrast": 1.0}}}, "train.augment.contrast: input should be less"),
        ({"train": {"augment": {"brightness": -0.1}}}, "train.augment.brightness: input should"),
        (
            {"convert": {"framing": "tight"}},
            "convert.framing: input should be 'image', 'body' or 'lungs'",
        ),
        (
            {"convert": {"framing": "body", "context_slices": 1}},
            "framing: 'body' frames each image by itself",
        ),
    ],
)
def test_bad_params_name_the_key(override, message):
    raw = merge(project_params(), override)
    with pytest.raises(UserError) as err:
        parse_params(raw)
    text = str(err.value)
    assert "\n" not in text
    assert message in text
    assert text.endswith(f"; correct it, {BACK}") or "unknown key" in text


def test_missing_key_is_named():
    raw = project_params()
    del raw["train"]["epochs"]
    with pytest.raises(UserError) as err:
        parse_params(raw)
    assert str(err.value) == f"params.yaml: train.epochs: missing; add it (docs/params.md), {BACK}"


def test_unknown_key_says_how_to_get_back():
    """What `dvc exp run -S +train.lrr=0.1` leaves in params.yaml stops every later run:
    the line says how to undo it."""
    with pytest.raises(UserError) as err:
        parse_params(merge(project_params(), {"train": {"lrr": 0.1}}))
    assert str(err.value) == (
        "params.yaml: train.lrr: unknown key; remove it, "
        "or restore the committed file: git checkout params.yaml"
    )


# --------------------------------------------------------------------------- unread keys

# For each gated key: a value that is not its unset one, and a value of its governor
# that does not read it.
SET_UNREAD = {
    "data.kaggle_handle": ("owner/dataset", "synthetic"),
    "data.url": ("https://data.example/ct.zip", "synthetic"),
    "data.sha256": ("a" * 64, "synthetic"),
    "data.path": ("/some/folder", "synthetic"),
    "data.layout": ("dicom", "synthetic"),
    "convert.crop_mm": (48.0, "none"),
    "train.pretrained": (True, "cnn"),
    "train.precision": ("float32", "mobilenet_v2"),
}


def nested(key: str, value: object) -> dict:
    """``{"a": {"b": value}}`` for ``"a.b"``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value  # type: ignore[return-value]


def test_every_gate_has_a_case():
    assert list(SET_UNREAD) == [gate.key for gate in GATES]


@pytest.mark.parametrize("gate", GATES, ids=[gate.key for gate in GATES])
def test_a_key_set_where_nothing_reads_it_is_an_error(gate):
    value, governor = SET_UNREAD[gate.key]
    raw = merge(merge(project_params(), nested(gate.key, value)), nested(gate.governor, governor))
    with pytest.raises(UserError) as err:
        parse_params(raw)
    reads = " or ".join(", ".join(map(str, gate.reads)).rsplit(", ", 1))
    assert str(err.value) == (
        f"params.yaml: {gate.key}: set, but {gate.governor} is {governor} "
        f"(only {gate.governor}: {reads} reads it); "
        f"unset it ({gate.key}: {yaml_value(gate.unset)}), {BACK}"
    )


def test_the_unset_value_is_accepted_whatever_the_governor():
    for gate in GATES:
        _, governor = SET_UNREAD[gate.key]
        raw = merge(project_params(), nested(gate.governor, governor))
        parse_params(merge(raw, nested(gate.key, gate.unset)))


def test_the_example_of_a_path_without_its_source():
    with pytest.raises(UserError) as err:
        parse_params(merge(project_params(), {"data": {"path": "/some/folder"}}))
    assert str(err.value).startswith(
        "params.yaml: data.path: set, but data.source is synthetic "
        "(only data.source: path reads it); "
    )


@pytest.mark.parametrize(
    "override",
    [  # the README's and docs' experiments, and each gated key where it is read
        {"data": {"source": "kaggle", "kaggle_handle": "mohamedhanyyy/chest-ctscan-images"}},
        {"data": {"source": "path", "path": "path/to/chest-ctscan-images.zip"}},
        {"data": {"source": "path", "path": "path/to/LUNA16"}, "convert": {"crop": "lesion"}},
        {"data": {"source": "url", "url": "https://data.example.org/ct.zip", "sha256": "a" * 64}},
        {"data": {"source": "path", "path": "x", "layout": "lidc"}},
        {"convert": {"crop": "lesion", "crop_mm": 40.0}},
        {"train": {"backbone": "mobilenet_v2", "pretrained": True}},
        {"train": {"backbone": "efficientnet_b0"}},
        {"train": {"precision": "float32"}},
    ],
)
def test_a_key_where_it_is_read_is_accepted(override):
    framing = {"convert": {"framing": "image"}} if "crop" in override.get("convert", {}) else {}
    parse_params(merge(merge(project_params(), override), framing))


def test_an_unset_crop_side_is_the_default_where_a_crop_reads_it():
    raw = merge(project_params(), {"convert": {"framing": "image"}})
    assert raw["convert"]["crop_mm"] is None  # params.yaml: unset, as nothing reads it
    none = Preprocessing.from_params(parse_params(raw).convert)
    lesion = parse_params(merge(raw, {"convert": {"crop": Crop.LESION.value}})).convert
    assert none.crop_mm == 0.0 and Preprocessing.from_params(lesion).crop_mm == CROP_MM
    set_side = merge(raw, {"convert": {"crop": Crop.LESION.value, "crop_mm": 40.0}})
    assert Preprocessing.from_params(parse_params(set_side).convert).crop_mm == 40.0
    # a dump (benchmarks lay overrides over one) parses again: unset stays unset
    dumped = parse_params(raw).model_dump()
    assert dumped["convert"]["crop_mm"] is None and parse_params(dumped) == parse_params(raw)


def test_params_docs_list_the_gated_keys():
    """docs/params.md's list of the keys read only under another key's value is GATES."""
    text = (ROOT / "docs/params.md").read_text(encoding="utf-8")
    listed = text.split("## Keys read only under another key", 1)[1].split("\n\n", 2)[1]
    expected = [
        f"- `{gate.key}`, read only with `{gate.governor}`: "
        + ", ".join(f"`{value}`" for value in gate.reads)
        + f"; unset: `{yaml_value(gate.unset)}`"
        for gate in GATES
    ]
    assert listed.splitlines() == expected
    assert f"{CROP_MM:g} mm" in text


def test_tiny_overrides_are_valid():
    parse_params(merge(project_params(), TINY))


def test_stage_reports_bad_params_in_one_line_and_writes_nothing(tmp_path):
    raw = merge(project_params(), {"train": {"epochs": 0}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [sys.executable, "-m", "stages.download"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: train.epochs: input should be greater than 0 (got 0); "
        "correct it, or restore the committed file: git checkout params.yaml"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_unreadable_params_file(tmp_path):
    (tmp_path / "params.yaml").write_text("base: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------- hostile files

PROJECT_TEXT = (ROOT / "params.yaml").read_text(encoding="utf-8")


def refused(tmp_path, data: bytes) -> str:
    (tmp_path / "params.yaml").write_bytes(data)
    with pytest.raises(UserError) as err:
        load_params(tmp_path / "params.yaml")
    text = str(err.value)
    assert "\n" not in text, text
    assert len(text.replace(str(tmp_path / "params.yaml"), "params.yaml")) < 400, text
    assert text.endswith(RESTORE.format(path=tmp_path / "params.yaml")), text
    return text.removeprefix(f"{tmp_path / 'params.yaml'}: ")


ALIASES = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (PROJECT_TEXT.encode("utf-16"), "not UTF-8 text (byte 0 cannot be decoded)"),
        (("# caf\u00e9\n" + PROJECT_TEXT).encode("latin-1"), "not UTF-8 text (byte 5"),
        (b"x: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", "nested deeper than 32 levels"),
        (b"x: " + b"{a: " * 10_000 + b"1" + b"}" * 10_000, "nested deeper than 32 levels"),
        (
            PROJECT_TEXT.replace("seed: 42", "seed: " + "7" * 4301).encode(),
            "base.seed: integer too large (at most 9223372036854775807)",
        ),
        (
            PROJECT_TEXT.replace("  epochs:", "  epochs: 1" + "0" * 30 + "\n  x:").encode(),
            "train.epochs: integer too large",
        ),
        (
            PROJECT_TEXT.replace("seed: 42", "seed: 4294967296").encode(),
            "base.seed: input should be less than or equal to 4294967295",
        ),
        (
            (PROJECT_TEXT + "\nbase:\n  seed: 1\n").encode(),
            f"line {PROJECT_TEXT.count(chr(10)) + 2}: duplicate key 'base' (first given at line 2)",
        ),
        (
            PROJECT_TEXT.replace("seed: 42", "seed: 42\n  seed: 43").encode(),
            "not valid YAML (line 4: duplicate key 'seed' (first given at line 3))",
        ),
        (PROJECT_TEXT.replace("seed: 42", "seed: 2024-13-01").encode(), "line 3: month must be"),
        (b"!!python/object/apply:os.system ['echo hi']\n", "could not determine a constructor"),
        (b"base: {seed: 1\x00}\n", "not valid YAML (unacceptable character #x0000"),
        (b"", "expected a mapping of sections, got NoneType"),
        (b"- base\n", "expected a mapping of sections, got list"),
        (
            (ALIASES + PROJECT_TEXT.replace("base:\n  seed: 42", "base: *i")).encode(),
            "base: input should be a valid dictionary",
        ),
        (
            PROJECT_TEXT.replace("malignant: 1.0", "malignant: .nan").encode(),
            "data.synthetic.class_balance.malignant: input should be a finite number",
        ),
    ],
    ids=[
        "utf-16",
        "latin-1",
        "deep-list",
        "deep-mapping",
        "4301-digit-seed",
        "huge-epochs",
        "seed-over-32-bits",
        "duplicate-section",
        "duplicate-key",
        "impossible-date",
        "python-tag",
        "nul-byte",
        "empty",
        "a-list",
        "alias-bomb",
        "nan-weight",
    ],
)
def test_hostile_params_files_are_one_line(tmp_path, data, message):
    assert message in refused(tmp_path, data)


def test_params_file_that_is_not_a_regular_file(tmp_path):
    (tmp_path / "params.yaml").mkdir()
    with pytest.raises(UserError, match="params.yaml: not a regular file"):
        load_params(tmp_path / "params.yaml")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # reading it would block
    with pytest.raises(UserError, match="fifo.yaml: not a regular file"):
        load_params(fifo)


def test_parse_params_checks_what_yaml_did_not_load():
    """Overrides built in Python (tests, benchmarks) get the same checks."""
    deep: list = []
    for _ in range(100):
        deep = [deep]
    for override, message in [
        ({"base": {"seed": 10**4000}}, "base.seed: integer too large"),
        ({"train": {"filters": deep}}, "train.filters.0.0.0.0..: nested deeper than 32 levels"),
    ]:
        with pytest.raises(UserError, match=message.replace(".", r"\.")):
            parse_params(merge(project_params(), override))


def test_a_url_password_never_reaches_the_message(tmp_path):
    text = PROJECT_TEXT.replace('url: ""', 'url: "ftp://reader:hunter2@host/a.zip"')
    assert "hunter2" not in refused(tmp_path, text.encode())
    text = PROJECT_TEXT.replace('url: ""', "url: [http://reader:hunter2@host/a.zip]")
    message = refused(tmp_path, text.encode())
    assert "data.url: input should be a valid string" in message and "hunter2" not in message


# Every number a real run could never use, from a hostile review: each ran (7 GB RSS,
# ResourceExhausted, a TypeError after metrics/train.json was replaced) before the ranges.
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"data": {"synthetic": {"patients": 10**9}}},
            "data.synthetic.patients: input should be less",
        ),
        ({"train": {"dense_units": 10**9}}, "train.dense_units: input should be less"),
        ({"train": {"filters": [10**6]}}, "train.filters.0: input should be less"),
        ({"train": {"epochs": 2**62}}, "train.epochs: input should be less"),
        ({"train": {"batch_size": 10**7}}, "train.batch_size: input should be less"),
        ({"evaluate": {"batch_size": 10**7}}, "evaluate.batch_size: input should be less"),
        ({"train": {"early_stopping_patience": 10**9}}, "train.early_stopping_patience"),
        ({"data": {"max_bytes": 2**60}}, "data.max_bytes: input should be less"),
        ({"convert": {"max_image_bytes": 2**50}}, "convert.max_image_bytes: input should be less"),
        ({"convert": {"windows": [{"center": 1e12, "width": 10}]}}, "convert.windows.0.center"),
        (
            {"train": {"head": "flatten", "filters": [1024], "dense_units": 8192}},
            "train.dense_units: 8192 units on a flattened",
        ),
    ],
)
def test_numbers_past_what_a_run_can_use_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        parse_params(merge(project_params(), override))


def test_every_number_in_the_schema_has_an_upper_bound():
    """Each int or float field of params (nested sections, list items, dict values) says
    how large it may be: ``le`` or ``lt``, as docs/params.md "Ranges" lists them."""
    import typing

    import annotated_types
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

    from lungct.params import Params, Window

    def bounded(annotation, metadata) -> bool:
        flat = [x for m in metadata for x in (m.metadata if isinstance(m, FieldInfo) else [m])]
        return any(isinstance(m, annotated_types.Le | annotated_types.Lt) for m in flat)

    unbounded = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            key, kind = f"{prefix}{name}", info.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                walk(kind, f"{key}.")
            elif kind in (int, float) and not bounded(kind, info.metadata):
                unbounded.append(key)
            args = getattr(kind, "__args__", ())
            for arg in args:  # list[...] items, dict[..., ...] values
                meta = getattr(arg, "__metadata__", ())
                if getattr(arg, "__origin__", None) in (int, float) and not bounded(arg, meta):
                    unbounded.append(f"{key}[]")

    walk(Params, "")
    for name, kind in typing.get_type_hints(Window, include_extras=True).items():
        if not bounded(kind, kind.__metadata__):
            unbounded.append(f"convert.windows[].{name}")
    assert unbounded == []


def test_params_docs_give_a_range_for_every_number():
    text = (ROOT / "docs" / "params.md").read_text(encoding="utf-8").split("## Ranges")[1]
    for key in ("data.synthetic.patients", "train.dense_units", "train.filters", "train.epochs"):
        assert f"`{key}`" in text, key
