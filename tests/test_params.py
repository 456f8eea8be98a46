import subprocess
import sys

import pytest
import yaml

from lungct.errors import UserError
from lungct.params import load_params, merge, parse_params
from tests.conftest import ROOT, TINY, project_params


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
    ],
)
def test_bad_params_name_the_key(override, message):
    raw = merge(project_params(), override)
    with pytest.raises(UserError) as err:
        parse_params(raw)
    text = str(err.value)
    assert "\n" not in text
    assert message in text


def test_missing_key_is_named():
    raw = project_params()
    del raw["train"]["epochs"]
    with pytest.raises(UserError, match=r"train\.epochs: missing"):
        parse_params(raw)


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
        "error: params.yaml: train.epochs: input should be greater than 0 (got 0)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_unreadable_params_file(tmp_path):
    (tmp_path / "params.yaml").write_text("base: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "missing.yaml")
