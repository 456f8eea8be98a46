"""Test-time augmentation: the mean over the image and four shifted copies, in evaluate
(``evaluate.tta``), predict (``--tta``) and the cv stage's fold scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from stages.predict import predict
from tests.trained import trained_project


def shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``x`` (N, H, W, C) moved dy down and dx right, the uncovered border 0."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[:, yd, xd] = x[:, ys, xs]
    return out


def test_tta_model_is_the_mean_over_shifted_copies(tiny):
    from lungct.model.network import build_cnn, tta_model, tta_shifts
    from lungct.model.saving import inference_model

    model = inference_model(build_cnn(64, 1, 3, tiny.train, 1))
    x = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 1)).astype(np.float32)
    views = tta_shifts(64)
    assert views == [(0, 0), (3, 0), (-3, 0), (0, 3), (0, -3)]  # 4 % of the side
    want = np.mean([model.predict(shifted(x, dy, dx), verbose=0) for dy, dx in views], axis=0)
    np.testing.assert_allclose(tta_model(model).predict(x, verbose=0), want, atol=1e-6)


def test_predict_tta(tmp_path: Path, monkeypatch):
    from lungct.model.network import tta_shifts
    from lungct.model.saving import load_model

    project = trained_project()
    monkeypatch.chdir(project)
    files = sorted((project / "data/splits/test").rglob("*.png"))
    outputs = {}
    for name, extra in (("plain", []), ("tta", ["--tta"])):
        out = tmp_path / f"{name}.csv"
        assert predict(["data/splits/test", *extra, "--output", str(out)]) == 0
        outputs[name] = pd.read_csv(out, comment="#").set_index("file")
    columns = [c for c in outputs["tta"].columns if c.startswith("p_")]
    x = np.stack([np.asarray(Image.open(f), dtype=np.float32)[..., None] for f in files])
    model = load_model(project / "models/model.keras")
    size = x.shape[1]
    want = np.mean(
        [model.predict(shifted(x, dy, dx), verbose=0) for dy, dx in tta_shifts(size)], axis=0
    )
    keys = [str(f.relative_to(project)) for f in files]
    got = outputs["tta"].loc[keys, columns].to_numpy(dtype=float)
    np.testing.assert_allclose(got, want, atol=1e-5)
    plain = outputs["plain"].loc[keys, columns].to_numpy(dtype=float)
    assert np.abs(got - plain).max() > 1e-4  # the views moved the answer
