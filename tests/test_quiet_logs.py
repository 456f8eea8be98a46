"""TensorFlow's start-up chatter stays out of what a stage prints (lungct.model.quiet):
the rule on lines, the level it picks, the filter around the first TensorFlow import
(with a stand-in TensorFlow that writes like one, no TensorFlow loaded), and real stages
and predict on the tiny trained project, quiet by default and talkative with the switch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lungct.model import quiet
from tests.conftest import ROOT
from tests.trained import stage_env, trained_project

INFO = "I0000 00:00:1796614900.692701   28995 port.cc:153] oneDNN custom operations are on."
WARNING = (
    "W0000 00:00:1796614900.693868   28995 gpu_device.cc:2344] Cannot dlopen some GPU libraries."
)
ERROR = (
    "E0000 00:00:1796614904.931815   28995 cuda_platform.cc:52] failed call to cuInit: CUDA error"
)
FATAL = "F0000 00:00:1796614904.931900   28995 cpu_feature_guard.cc:99] compiled to use AVX"
ABSL_LINE = re.compile(r"^[IWEF]\d{4} ", re.MULTILINE)
# What TensorFlow printed around a stage on a machine without a GPU, but for the quiet policy
CHATTER = (
    "E0000",
    "W0000",
    "I0000",
    "cuInit",
    "absl::InitializeLog",
    "oneDNN",
    "cuda drivers",
    "cpu_feature_guard",
    "unsupported characters",  # the SavedModel export's renamed input names (absl, Python)
)


def clean_env(**extra: str) -> dict[str, str]:
    """The stages' environment without the suite's TF_CPP_MIN_LOG_LEVEL or the switch: what
    a user who sets neither gets."""
    env = stage_env()
    for name in (quiet.LEVEL, quiet.SWITCH, "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    env.update(extra)
    return env


def test_chatter_is_absl_lines_below_the_level_and_the_banner():
    assert quiet.is_chatter(quiet.BANNER + "\n", 1)
    assert quiet.is_chatter(INFO, 1) and quiet.is_chatter(INFO, 2)
    assert quiet.is_chatter(WARNING, 2) and not quiet.is_chatter(WARNING, 1)
    assert quiet.is_chatter(ERROR, 3) and not quiet.is_chatter(ERROR, 2)
    assert not quiet.is_chatter(FATAL, 3)  # never: the one hint before an abort
    for line in (INFO, WARNING, ERROR, quiet.BANNER):
        assert not quiet.is_chatter(line, 0)
    for line in ("error: models/model.keras: not found", "Traceback (most recent call last):"):
        assert not quiet.is_chatter(line, 3)
    # after absl is set up, a line carries the date
    assert quiet.is_chatter("I1114 09:32:22.280168 13509 tpu_hal.cc:448] Registered", 3)


@pytest.mark.parametrize(
    ("visible", "device_files", "gpu"),
    [
        (None, [], False),
        (None, ["/dev/nvidia0"], True),
        ("0", [], True),
        ("1,2", [], True),
        ("", ["/dev/nvidia0"], False),
        ("-1", ["/dev/nvidia0"], False),
    ],
)
def test_a_gpu_is_one_visible_or_asked_for(monkeypatch, visible, device_files, gpu):
    monkeypatch.setattr(quiet.glob, "glob", lambda pattern: device_files)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert quiet.gpu_requested() is gpu


@pytest.mark.parametrize(
    ("switch", "gpu", "preset", "level"),
    [
        (None, False, None, "3"),  # no GPU: the failed CUDA probe is an error line
        (None, True, None, "2"),  # a GPU: its errors show
        (None, False, "1", "1"),  # the user's own level stands
        ("0", False, None, "3"),
        ("1", False, None, None),  # the switch: TensorFlow's own default
    ],
)
def test_the_native_level(monkeypatch, switch, gpu, preset, level):
    monkeypatch.setattr(quiet, "gpu_requested", lambda: gpu)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # whatever it adds, undone
    for name, value in ((quiet.SWITCH, switch), (quiet.LEVEL, preset)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    quiet.quiet_tensorflow()
    assert os.environ.get(quiet.LEVEL) == level


# A stand-in for TensorFlow: native lines while it loads (absl before it is set up), a
# Python warning, a plain line, an info line of its Python logger.
FAKE_TENSORFLOW = f"""
import logging, os, sys, warnings
for line in {[quiet.BANNER, INFO, WARNING, ERROR, "plain native line", FATAL]!r}:
    os.write(2, (line + "\\n").encode())
warnings.warn("a real Python warning")
print("a Python line on stderr", file=sys.stderr)
"""
IMPORT = (
    "import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
    "import lungct.model, tensorflow; "
    "logging.getLogger('tensorflow').info('tensorflow info'); "
    "logging.getLogger('tensorflow').warning('tensorflow warning'); "
    "print('imported', file=sys.stderr)"
)


def import_fake_tensorflow(tmp_path: Path, **env: str) -> list[str]:
    (tmp_path / "tensorflow").mkdir(exist_ok=True)
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    result = subprocess.run(
        [sys.executable, "-c", IMPORT],
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_the_first_tensorflow_import_drops_native_chatter_and_passes_on_the_rest(tmp_path):
    lines = import_fake_tensorflow(tmp_path, CUDA_VISIBLE_DEVICES="-1")
    assert lines[0] == "plain native line" and lines[1] == FATAL, lines  # in order
    assert any(line.endswith("UserWarning: a real Python warning") for line in lines), lines
    assert lines[-3:] == ["a Python line on stderr", "tensorflow warning", "imported"], lines
    for chatter in (quiet.BANNER, INFO, WARNING, ERROR, "tensorflow info"):
        assert chatter not in lines


def test_with_a_gpu_its_errors_show(tmp_path):
    lines = import_fake_tensorflow(tmp_path, CUDA_VISIBLE_DEVICES="0")
    assert lines[:3] == [ERROR, "plain native line", FATAL], lines


def test_the_switch_passes_everything(tmp_path):
    lines = import_fake_tensorflow(tmp_path, CUDA_VISIBLE_DEVICES="-1", LUNGCT_TF_LOGS="1")
    assert lines[:6] == [quiet.BANNER, INFO, WARNING, ERROR, "plain native line", FATAL]
    assert "tensorflow info" in lines


# Real stages on the tiny trained project, on CPU, with neither TF_CPP_MIN_LOG_LEVEL nor the
# switch set.


@pytest.fixture(scope="module")
def project() -> Path:
    return trained_project()


def run(project: Path, *args: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=clean_env(CUDA_VISIBLE_DEVICES="-1", **env),  # on CPU, even on a GPU machine
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_a_stage_prints_its_own_lines_and_no_tensorflow_chatter(project):
    output = run(project, "-m", "stages.export")
    lines = output.splitlines()
    assert [line.split(",")[0] for line in lines] == ["export: SavedModel", "export: ONNX"], output
    found = [line for line in lines if ABSL_LINE.match(line) or any(c in line for c in CHATTER)]
    assert not found, output


def test_predict_prints_its_warning_and_table_only(project):
    output = run(project, "-m", "stages.predict", "data/splits/test")
    lines = output.splitlines()
    assert lines[0].split()[:2] == ["file", "predicted"], output  # stdout first, then stderr
    assert lines[-1].startswith("warning: this model was trained on the built-in synthetic")
    assert not [line for line in lines if any(c in line for c in CHATTER)], output


def test_the_switch_brings_tensorflow_chatter_back(project):
    output = run(project, "-m", "stages.export", LUNGCT_TF_LOGS="1")
    assert ABSL_LINE.search(output), output
    assert "unsupported characters" in output, output
    assert "export: SavedModel" in output and "export: ONNX" in output
