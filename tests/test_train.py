import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.quality import NO_AUGMENT
from lungct.params import merge
from stages.convert import convert
from stages.download import download
from stages.split import split
from tests.conftest import ROOT


def test_cnn_shape_and_named_blocks(tiny):
    from lungct.model.network import build_cnn

    model = build_cnn(32, 1, 3, tiny.train)
    assert model.input_shape == (None, 32, 32, 1)
    assert model.output_shape == (None, 3)
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["image", "augment", "rescale"]
    assert {"conv1", "pool1", "conv2", "pool2", "dense", "dropout", "probabilities"} <= set(names)
    assert tiny.train.head in names


def test_two_convs_per_block(tiny):
    """train.convs_per_block: conv, batch norm, ReLU twice, then the block's one pool."""
    from lungct.model.network import build_cnn

    model = build_cnn(32, 1, 3, tiny.train.model_copy(update={"convs_per_block": 2}))
    names = [layer.name for layer in model.layers]
    block = names[names.index("conv1_1") : names.index("pool1") + 1]
    assert block == ["conv1_1", "bn1_1", "relu1_1", "conv1_2", "bn1_2", "relu1_2", "pool1"]
    assert "conv2_2" in names and "conv1" not in names


def test_intensity_jitter_trains_only(tiny):
    """train.augment.contrast / .brightness: the training view's intensities move (within
    0..255), inference sees the image as it is."""
    import numpy as np

    from lungct.model.network import augmentation

    jitter = tiny.train.augment.model_copy(
        update={**NO_AUGMENT, "contrast": 0.3, "brightness": 0.2}
    )
    block = augmentation(jitter, seed=1)
    assert [layer.name for layer in block.layers] == ["contrast", "brightness"]
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 1)).astype("float32")
    trained = np.asarray(block(x, training=True))
    assert np.abs(trained - x).max() > 1.0
    assert trained.min() >= 0.0 and trained.max() <= 255.0
    np.testing.assert_array_equal(np.asarray(block(x, training=False)), x)
    assert augmentation(jitter.model_copy(update={"contrast": 0.0, "brightness": 0.0}), 1) is None


def test_baseline_recipe_without_augmentation_builds(tiny_raw):
    """Every transform off (the baseline CNN's recipe): no augmentation block, not a crash."""
    from lungct.model.network import build_cnn
    from lungct.params import merge, parse_params

    params = parse_params(merge(tiny_raw, {"train": {"augment": NO_AUGMENT, "head": "flatten"}}))
    model = build_cnn(32, 1, 2, params.train)
    names = [layer.name for layer in model.layers]
    assert names[:2] == ["image", "rescale"] and "flatten" in names
    assert model.output_shape == (None, 2)


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
                for name in (
                    "metrics/train.json",
                    "metrics/eval.json",
                    "metrics/eval_details.json",
                    "metrics/predictions.csv",
                    "models/model.keras",  # one DVC hash for one training (no save time inside)
                )
            }
        )
    assert outputs[0] == outputs[1]
    contract = json.loads((splits_ready / "models/labels.json").read_text())
    assert contract["classes"] == ["benign", "malignant", "normal"]
    assert contract["windows"] == [{"center": -600.0, "width": 1500.0}]
    # The trained model loads in safe mode and its predictions are the evaluate stage's.
    from lungct.model.saving import load_model

    assert load_model(splits_ready / "models/model.keras").output_shape == (None, 3)


def test_balanced_class_weights():
    from lungct.model.network import class_weights

    # 6 of class 0, 2 of class 1, 4 of class 2: n / (classes * count)
    assert class_weights([0] * 6 + [1] * 2 + [2] * 4) == {0: 12 / 18, 1: 12 / 6, 2: 12 / 12}
    # a class with no image gets no weight; the others' mean weight per image stays 1
    assert class_weights([0] * 6 + [2] * 2) == {0: 8 / 12, 2: 8 / 4}


def test_file_cache_gives_the_same_batches_as_memory(splits_ready, tiny):
    from lungct.data.tables import read_splits, split_images
    from lungct.model.dataset import image_dataset

    table = read_splits(splits_ready / "data/splits")
    paths, labels = split_images(
        table, "train", ["benign", "malignant", "normal"], splits_ready / "data/splits"
    )
    batches = {}
    for cache in ("memory", "file", "none"):
        data = image_dataset(
            paths, labels, 32, 1, 4, shuffle_seed=1, cache=cache, cache_dir=splits_ready / "c"
        )
        batches[cache] = [x.numpy().tobytes() + y.numpy().tobytes() for x, y in data]
    assert batches["memory"] == batches["file"] == batches["none"]
    assert list((splits_ready / "c").iterdir())  # the file cache was written


def test_cosine_schedule_decays_to_zero(tiny):
    from lungct.model.network import learning_rate

    schedule = learning_rate(tiny.train.model_copy(update={"lr_schedule": "cosine"}), 10)
    assert float(schedule(0)) == pytest.approx(tiny.train.lr)
    assert float(schedule(tiny.train.epochs * 10)) == pytest.approx(0.0, abs=1e-9)
    constant = tiny.train.model_copy(update={"lr_schedule": "constant"})
    assert learning_rate(constant, 10) == tiny.train.lr


MIRRORED = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
import json
from lungct.params import load_params
from stages.train import train
metrics = train(load_params())
from lungct.model.runtime import distribution_strategy
print(json.dumps({"mirrored": distribution_strategy("mirrored").num_replicas_in_sync,
                  "auto": distribution_strategy("auto").num_replicas_in_sync, **metrics}))
"""


def test_mirrored_strategy_on_two_logical_cpus(splits_ready, tiny_raw):
    raw = dict(tiny_raw, train={**tiny_raw["train"], "strategy": "mirrored", "epochs": 2})
    (splits_ready / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED], cwd=splits_ready, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["mirrored"] == 2 and out["auto"] == 1  # auto mirrors GPUs only
    assert out["replicas"] == 2  # the stage trained on both devices
    assert out["epochs"] == 2 and out["train_images"] == 6


def test_early_stopping_restores_the_best_epoch(splits_ready, tiny_raw):
    train_params = {**tiny_raw["train"], "epochs": 8, "lr": 0.05, "early_stopping_patience": 1}
    (splits_ready / "params.yaml").write_text(yaml.safe_dump(dict(tiny_raw, train=train_params)))
    run_stage("train", splits_ready)
    metrics = json.loads((splits_ready / "metrics/train.json").read_text())
    assert metrics["restored_best_weights"] is True
    assert metrics["epochs"] < 8  # stopped early
    assert metrics["best_epoch"] == metrics["epochs"] - 1  # patience 1: one epoch past the best


def test_seed_ensemble_averages_models_from_consecutive_seeds(splits_ready, tiny_raw):
    """train.seeds: 2 saves the mean of two models fitted on the same images, the first
    the very model train.seeds: 1 saves (same seed), the second from base.seed + 1; the
    saved model's temperature scales the mean, as the contract says."""
    from lungct.contract import Contract
    from lungct.evaluation.calibration import apply_temperature
    from lungct.model.calibrate import uncalibrated
    from lungct.model.network import ensemble_members
    from lungct.model.saving import load_model

    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 1)).astype(np.float32)
    outputs = {}
    for seeds in (1, 2):
        raw = merge(tiny_raw, {"train": {"seeds": seeds}})
        (splits_ready / "params.yaml").write_text(yaml.safe_dump(raw))
        run_stage("train", splits_ready)
        metrics = json.loads((splits_ready / "metrics/train.json").read_text())
        assert metrics["members"] == seeds
        saved = load_model(splits_ready / "models/model.keras")
        members = ensemble_members(saved) or [saved]
        assert len(members) == seeds
        outputs[seeds] = [uncalibrated(saved).predict(x, verbose=0)]
        outputs[seeds] += [m.predict(x, verbose=0) for m in members]
        temperature = Contract.read(splits_ready / "models/labels.json").temperature
        assert metrics["calibration"]["temperature"] == temperature
        np.testing.assert_allclose(
            saved.predict(x, verbose=0),
            apply_temperature(outputs[seeds][0], temperature),
            atol=1e-5,
        )
    assert len(metrics["member_best_val_loss"]) == 2
    first, second = outputs[2][1], outputs[2][2]
    np.testing.assert_allclose(first, outputs[1][0], atol=1e-6)  # the seeds: 1 model
    assert not np.allclose(first, second, atol=1e-3)  # another seed, other weights
    np.testing.assert_allclose(outputs[2][0], (first + second) / 2, atol=1e-6)


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0"])
def test_backbones_build_offline(tiny, name):
    from lungct.model.network import build_cnn

    params = tiny.train.model_copy(update={"backbone": name, "pretrained": False})
    model = build_cnn(32, 1, 3, params)
    assert model.output_shape == (None, 3)
    assert any(layer.name.startswith(name.split("_")[0]) for layer in model.layers)
