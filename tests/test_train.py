import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.convert import convert
from stages.download import download
from stages.split import split
from tests.conftest import ROOT


def test_cnn_shape_and_named_blocks(tiny):
    from lungct.model import build_cnn

    model = build_cnn(32, 1, 3, tiny.train)
    assert model.input_shape == (None, 32, 32, 1)
    assert model.output_shape == (None, 3)
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["image", "augment", "rescale"]
    assert {"conv1", "pool1", "conv2", "pool2", "dense", "dropout", "probabilities"} <= set(names)
    assert tiny.train.head in names


def run_stage(name: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def splits_ready(workdir, tiny_raw, tiny):
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_raw))
    download(tiny)
    convert(tiny.convert)
    split(tiny)
    return workdir


def test_same_params_same_metrics_and_predictions(splits_ready):
    outputs = []
    for _ in range(2):
        run_stage("train", splits_ready)
        run_stage("evaluate", splits_ready)
        outputs.append(
            {
                name: (splits_ready / name).read_bytes()
                for name in ("metrics/train.json", "metrics/eval.json", "metrics/predictions.csv")
            }
        )
    assert outputs[0] == outputs[1]
    contract = json.loads((splits_ready / "models/labels.json").read_text())
    assert contract["classes"] == ["benign", "malignant", "normal"]
    assert contract["windows"] == [{"center": -600.0, "width": 1500.0}]
    # The trained model loads in safe mode and its predictions are the evaluate stage's.
    from lungct.model import load_model

    assert load_model(splits_ready / "models/model.keras").output_shape == (None, 3)
