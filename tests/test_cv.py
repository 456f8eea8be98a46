"""Cross-validation folds (split stage), the cv stage, and the fold ensemble (train stage)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lungct.data.split import NO_FOLD, assign_folds
from lungct.errors import UserError
from lungct.params import merge, parse_params
from stages.convert import convert
from stages.download import download
from stages.split import split
from tests.conftest import project_params


def images_table(groups_per_class: int = 12, seed: int = 0) -> pd.DataFrame:
    """Groups of 1-4 images, three classes, a test split; as the split stage holds them."""
    rng = np.random.default_rng(seed)
    rows = []
    for name in ("a", "b", "c"):
        for g in range(groups_per_class):
            split = "test" if g < 2 else "train" if g % 3 else "val"
            rows += [
                {"class": name, "group": f"{name}{g}", "split": split}
                for _ in range(rng.integers(1, 5))
            ]
    return pd.DataFrame(rows)


def test_folds_keep_groups_whole_stratified_and_test_untouched():
    images = images_table()
    folds = assign_folds(images, 3, seed=7)
    assert (folds[images["split"] == "test"] == NO_FOLD).all()
    pool = images[images["split"] != "test"].assign(fold=folds)
    assert set(pool["fold"]) == {1, 2, 3}
    assert (pool.groupby("group")["fold"].nunique() == 1).all()  # whole groups
    # Stratified: every class in every fold, in about equal numbers of groups.
    groups = pool.drop_duplicates("group").groupby(["class", "fold"]).size().unstack()
    assert groups.notna().all().all() and (groups.max(axis=1) - groups.min(axis=1) <= 2).all()
    assert folds.equals(assign_folds(images, 3, seed=7))  # seeded
    assert not folds.equals(assign_folds(images, 3, seed=8))
    assert (assign_folds(images, 0, seed=7) == NO_FOLD).all()


def test_too_many_folds_is_one_line():
    images = images_table(groups_per_class=3)  # 1 train/val group per class
    with pytest.raises(UserError, match=r"split.folds: 5 folds need at least 5 groups"):
        assign_folds(images, 5, seed=0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"split": {"folds": 1}}, "split.folds: 0 (off) or at least 2"),
        ({"split": {"folds": 21}}, "split.folds"),
        ({"train": {"ensemble": True}}, "train.ensemble: averages the cross-validation"),
        ({"train": {"seeds": 0}}, "train.seeds"),
    ],
)
def test_fold_params_are_checked(tiny_raw, override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_params(merge(tiny_raw, override))


@pytest.fixture
def folded(workdir: Path, tiny_raw: dict):
    """The tiny project split into two folds (9 patients: 2 per class in train+val)."""
    raw = merge(tiny_raw, {"split": {"folds": 2}})
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    download(params)
    convert(params.convert)
    split(params)
    return workdir, raw


def test_cv_stage_scores_each_fold_and_the_ensemble_averages_them(folded):
    from lungct.data.tables import read_splits
    from lungct.model.cv import FOLDS_FILE
    from stages.cv import cv
    from stages.train import train

    workdir, raw = folded
    table = read_splits(workdir / "data/splits")
    pool = table[table["split"] != "test"]
    assert set(pool["fold"]) == {"1", "2"} and set(table.loc[table["split"] == "test", "fold"]) == {
        "0"
    }
    details = cv(parse_params(raw))
    assert details["folds"] == 2 and [row["fold"] for row in details["per_fold"]] == [1, 2]
    assert sum(row["val_images"] for row in details["per_fold"]) == len(pool)
    for row in details["per_fold"]:
        assert row["train_images"] + row["val_images"] == len(pool)
        assert set(row["tta"]) == {"balanced_accuracy", "macro_f1", "loss"}
        assert set(row["reframed"]) == {"balanced_accuracy", "macro_f1", "loss"}
    assert details["reframed"]["loss"]["mean"] == pytest.approx(
        np.mean([row["reframed"]["loss"] for row in details["per_fold"]]), abs=1e-6
    )
    assert details["tta"]["loss"]["mean"] == pytest.approx(
        np.mean([row["tta"]["loss"] for row in details["per_fold"]]), abs=1e-6
    )
    headline = json.loads((workdir / "metrics/cv.json").read_text())
    assert set(headline) == {"balanced_accuracy", "macro_f1", "loss"}
    scores = [row["balanced_accuracy"] for row in details["per_fold"]]
    assert headline["balanced_accuracy"] == pytest.approx(np.mean(scores), abs=1e-6)
    assert json.loads((workdir / "metrics/cv_details.json").read_text()) == details
    record = json.loads((workdir / "models/folds" / FOLDS_FILE).read_text())
    assert record["models"] == ["fold1.keras", "fold2.keras"]
    assert (workdir / "metrics/cv/fold2/plots/metrics/eval/loss.tsv").is_file()

    # The ensemble: one model, the mean of the fold models' softmaxes, then its temperature,
    # fitted on each fold model's own held-out images (every train and val image once).
    from lungct.contract import Contract
    from lungct.evaluation.calibration import apply_temperature
    from lungct.model.calibrate import uncalibrated
    from lungct.model.gradcam import GradCam
    from lungct.model.network import ensemble_members
    from lungct.model.saving import load_model

    # train.seeds is unused then: the fold models are the ensemble
    ensemble_params = parse_params(merge(raw, {"train": {"ensemble": True, "seeds": 3}}))
    trained = train(ensemble_params)
    assert trained["members"] == 2
    assert trained["calibration"]["images"] == sum(row["val_images"] for row in details["per_fold"])
    temperature = Contract.read(workdir / "models/labels.json").temperature
    assert trained["calibration"]["temperature"] == temperature
    saved = load_model(workdir / "models/model.keras", for_inference=False)
    assert len(ensemble_members(saved)) == 2
    x = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 1)).astype(np.float32)
    members = [
        load_model(workdir / "models/folds" / name, for_inference=False)
        for name in record["models"]
    ]
    mean = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(uncalibrated(saved).predict(x, verbose=0), mean, atol=1e-6)
    calibrated = apply_temperature(mean, temperature)
    np.testing.assert_allclose(saved.predict(x, verbose=0), calibrated, atol=1e-5)
    # For inference: each member in float32 with batch norm folded (as a lone model is).
    folded_model = load_model(workdir / "models/model.keras")
    assert len(ensemble_members(folded_model)) == 2
    inference = [load_model(workdir / "models/folds" / name) for name in record["models"]]
    mean = np.mean([m.predict(x, verbose=0) for m in inference], axis=0)
    np.testing.assert_allclose(uncalibrated(folded_model).predict(x, verbose=0), mean, atol=1e-6)
    cam = GradCam(folded_model)(x[0], 1)
    assert cam.shape == (32, 32) and cam.min() >= 0.0 and cam.max() <= 1.0
    assert "of each of 2 members" in GradCam(folded_model).layer_name


def test_cv_off_trains_nothing_and_writes_an_empty_metric(workdir, tiny_raw):
    from stages.cv import cv

    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_raw))
    params = parse_params(tiny_raw)
    download(params)
    convert(params.convert)
    split(params)
    assert cv(params) == {"folds": 0}
    assert json.loads((workdir / "metrics/cv.json").read_text()) == {}
    assert json.loads((workdir / "models/folds/folds.json").read_text())["models"] == []


def test_ensemble_without_fold_models_is_one_line(folded):
    from stages.train import train

    workdir, raw = folded
    (workdir / "models/folds").mkdir(parents=True)  # as the cv stage leaves it with folds 0
    record = {"folds": 0, "classes": [], "models": []}
    (workdir / "models/folds/folds.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"models/folds/folds.json: no fold models"):
        train(parse_params(merge(raw, {"train": {"ensemble": True}})))


def test_ensemble_evaluates_and_exports(folded):
    """evaluate and export (SavedModel, ONNX, checked against Keras) take the ensemble."""
    from stages.cv import cv
    from stages.evaluate import evaluate
    from stages.export import export
    from stages.train import train

    workdir, raw = folded
    params = parse_params(merge(raw, {"train": {"ensemble": True}}))
    cv(params)
    train(params)
    metrics = evaluate(params)
    assert metrics["images"] == 6
    plain = pd.read_csv(workdir / "metrics/predictions.csv")
    shifted = evaluate(
        parse_params(merge(raw, {"train": {"ensemble": True}, "evaluate": {"tta": True}}))
    )
    assert shifted["images"] == 6 and shifted["loss"] != metrics["loss"]  # evaluate.tta is used
    assert not pd.read_csv(workdir / "metrics/predictions.csv").equals(plain)
    export()
    assert (workdir / "models/export").is_dir()


class ScaleReader:
    """A 'model' that reads the framing, not the chest: class 1 when the bright part fills
    over 0.6 of the image (a tight export), else class 0."""

    def predict(self, batch, batch_size=None, verbose=0):
        tight = (batch[..., 0] > 40).mean(axis=(1, 2)) > 0.6
        return np.stack([~tight, tight], axis=1).astype(np.float32)


class BrightnessReader:
    """A 'model' that reads the body itself: class 1 when the body (what is brighter than
    40) is brighter than 125 on average."""

    def predict(self, batch, batch_size=None, verbose=0):
        body = batch[..., 0] > 40
        bright = (batch[..., 0] * body).sum(axis=(1, 2)) / np.maximum(body.sum(axis=(1, 2)), 1)
        return np.stack([bright <= 125, bright > 125], axis=1).astype(np.float32)


def exports(folder: Path, framing: str) -> tuple[list[str], list[int]]:
    """Two tight exports (class 1: the body fills the image) and two wide ones (class 0),
    their bodies of brightness 130, 140, 110, 100, written as convert writes them."""
    from PIL import Image

    from lungct.io.images import fit_square, framed

    paths, labels = [], []
    for i, (inner, label, level) in enumerate(
        [(60, 1, 130), (58, 1, 140), (30, 0, 110), (34, 0, 100)]
    ):
        image = np.zeros((64, 64), np.uint8)
        lo = (64 - inner) // 2
        image[lo : lo + inner, lo : lo + inner] = level
        view = fit_square(framed(image, framing), 64) if framing == "body" else image
        Image.fromarray(view).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
        labels.append(label)
    return paths, labels


@pytest.mark.parametrize(
    ("framing", "model", "reframed"),
    [("image", ScaleReader(), 0.5), ("body", BrightnessReader(), 1.0)],
)
def test_reframed_scores_see_a_model_that_reads_the_framing(tmp_path, framing, model, reframed):
    """Folds drawn from the same exports reward reading the framing (the official Chest
    CT-Scan folders: tight cancer crops, wide normals): such a model is perfect on them and
    at chance re-framed. A body-framed recipe is shown its body again, whatever the margin."""
    from PIL import Image

    from lungct.contract import Contract
    from lungct.model.cv import reframed_scores

    params = parse_params(merge(project_params(), {"convert": {"framing": framing}}))
    paths, labels = exports(tmp_path, framing)
    as_is = model.predict(np.stack([np.asarray(Image.open(p)) for p in paths])[..., None])
    assert (as_is.argmax(axis=1) == labels).all()  # in-distribution: perfect
    contract = Contract.from_params(params, ["wide", "tight"], None)
    scores = reframed_scores(model, contract, (paths, labels), ["wide", "tight"], params)
    assert set(scores) == {"balanced_accuracy", "macro_f1", "loss"}
    assert scores["balanced_accuracy"] == pytest.approx(reframed)


def test_the_search_chooses_by_the_worse_framing():
    """benchmarks.sweep: a recipe is as good as the lower of its plain and reframed fold
    means (the official folders' default: 0.824 plain, 0.703 reframed; body: 0.775, 0.762)."""
    from benchmarks.sweep import robust_score

    def details(plain: float, reframed: float) -> dict:
        return {
            "balanced_accuracy": {"mean": plain},
            "reframed": {"balanced_accuracy": {"mean": reframed}},
        }

    reads_the_framing, framed = details(0.824, 0.703), details(0.775, 0.762)
    assert robust_score(reads_the_framing) == 0.703 and robust_score(framed) == 0.762
    assert robust_score(details(0.7, 0.75)) == 0.7  # a shift that helps does not count


def test_the_sweep_names_the_model_a_recipe_saves():
    """benchmarks.sweep's test rows say what was tested: the fold ensemble takes
    precedence over train.seeds (as in the train stage), more than one seed is an ensemble."""
    from benchmarks.sweep import model_label

    assert model_label({"train": {"seeds": 1}}) == "single"
    assert model_label({"train": {"seeds": 3}}) == "3 seeds"
    assert model_label({"train": {"seeds": 3, "ensemble": True}}) == "fold ensemble"


# One seed's metrics/eval_details.json, as far as benchmarks.sweep reads it.
SEED_EVAL = {
    "images": 144,
    "groups": 24,
    "balanced_accuracy": 0.75,
    "macro_f1": 0.74,
    "loss": 0.5,
    "calibration": {
        "ece": 0.031,
        "ece_if_calibrated": 0.06,
        "before": {"ece": 0.08, "loss": 0.55},
    },
    "uncertain": {"coverage": 0.9, "accuracy": 0.8},
}


def test_the_sweep_rows_show_class_recall_calibration_and_coverage():
    """benchmarks.sweep: a search row shows each class's mean fold recall (the small-lesion
    class is where a recipe fails); a test row the loss and ECE before and after the
    temperature and the share the "uncertain" rule answers, with their accuracy."""
    from benchmarks.sweep import search_row, test_row

    spread = {"mean": 0.8, "std": 0.01}
    details = {
        "balanced_accuracy": spread,
        "macro_f1": spread,
        "loss": spread,
        "reframed": {"balanced_accuracy": spread},
        "tta": {"balanced_accuracy": spread},
        "recall": {"benign": {"mean": 0.625, "std": 0.1}, "normal": {"mean": 0.9, "std": 0}},
        "per_fold": [{"epochs": 12}, {"epochs": 15}],
    }
    assert "| benign 0.62 normal 0.90 |" in search_row("r", details, 60)
    row = test_row(42, "3 seeds", SEED_EVAL, 60)
    assert "| 0.550 -> 0.500 | 0.080 -> 0.031 (0.060) | 0.900 (0.800) |" in row


def test_a_stopped_sweep_keeps_the_seeds_it_finished(tmp_path, monkeypatch):
    """benchmarks.sweep rewrites --out after each test seed: a run that fails (or is
    stopped) at its second seed leaves the first seed's figures in the JSON."""
    import benchmarks.sweep as sweep

    seeds = []
    monkeypatch.setattr(sweep, "stage", lambda name, project: None)
    monkeypatch.setattr(
        sweep, "write_params", lambda project, params: seeds.append(params["base"]["seed"])
    )

    def read_metrics(project, name):
        if seeds[-1] == 43:
            raise RuntimeError("stopped")
        return SEED_EVAL

    monkeypatch.setattr(sweep, "read_metrics", read_metrics)
    out = tmp_path / "sweep.json"
    with pytest.raises(RuntimeError, match="stopped"):
        sweep.main(
            ["--data", "synthetic", "--choose", "default", "--seeds", "42,43", "--out", str(out)]
        )
    saved = json.loads(out.read_text())
    assert saved["chosen"] == "default"
    assert [t["seed"] for t in saved["test"]] == [42]
    assert saved["test"][0]["eval"]["balanced_accuracy"] == 0.75


def test_nested_cv_never_fits_on_the_outer_fold(workdir, tiny_raw, monkeypatch):
    """benchmarks.nested: with an outer fold playing the test split, neither the single
    model (nor its other seeds) nor any inner-fold member sees it; the single model trains
    on the rest's train images and stops on its val images, the inner folds partition the
    rest."""
    import lungct.model.train
    from benchmarks.nested import outer_fold
    from lungct.data.tables import read_splits

    raw = merge(tiny_raw, {"data": {"synthetic": {"patients": 24}}, "split": {"folds": 2}})
    params = parse_params(raw)
    download(params)
    convert(params.convert)
    split(params)
    splits_dir = workdir / "data/splits"
    table = read_splits(splits_dir)
    fits = []
    real_fit = lungct.model.train.fit_model

    def spy(cfg, contract, seed, train, val, **kwargs):
        fits.append((set(train[0]), set(val[0])))
        return real_fit(cfg, contract, seed, train, val, **kwargs)

    monkeypatch.setattr(lungct.model.train, "fit_model", spy)
    result = outer_fold(params, table, 1, splits_dir, seed_members=2)

    def paths(rows: pd.DataFrame) -> set[str]:
        return {str(splits_dir / image) for image in rows["image"]}

    pool = table[table["split"] != "test"]
    held_out, rest = paths(pool[pool["fold"] == "1"]), pool[pool["fold"] != "1"]
    assert result["held_out_images"] == len(held_out) > 0
    # the single model, its second seed, then one member per inner fold
    assert len(fits) == 2 + 2
    assert all(not (train | val) & held_out for train, val in fits)
    single = (paths(rest[rest["split"] == "train"]), paths(rest[rest["split"] == "val"]))
    assert fits[0] == single and fits[1] == single
    inner_vals = [val for _, val in fits[2:]]
    assert set().union(*inner_vals) == paths(rest) and not inner_vals[0] & inner_vals[1]
    assert all(train == paths(rest) - val for train, val in fits[2:])
    for model in ("single", "ensemble", "members", "seeds"):
        assert 0.0 <= result[model]["balanced_accuracy"] <= 1.0
        assert set(result[model]["reframed"]) == {"balanced_accuracy", "macro_f1", "loss"}


def test_nested_summary_compares_robust_scores_fold_by_fold():
    from benchmarks.nested import summary

    def scores(plain: float, reframed: float) -> dict:
        return {"balanced_accuracy": plain, "reframed": {"balanced_accuracy": reframed}}

    results = [
        {"single": scores(0.8, 0.7), "ensemble": scores(0.9, 0.8), "members": scores(0.8, 0.7)},
        {"single": scores(0.6, 0.9), "ensemble": scores(0.5, 0.9), "members": scores(0.6, 0.6)},
    ]
    s = summary(results)
    assert s["single_robust"]["mean"] == pytest.approx(0.65)  # min(0.8, 0.7), min(0.6, 0.9)
    assert s["ensemble_reframed"]["mean"] == pytest.approx(0.85)
    gain = s["ensemble_minus_single_robust"]
    assert gain["mean"] == pytest.approx(0.0) and gain["folds_better"] == 1  # +0.1, -0.1
