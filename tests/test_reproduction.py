"""benchmarks.reproduction's spreads: the figures docs/benchmarks.md reads noise from
(pure arithmetic; no training)."""

from __future__ import annotations

import pytest

from benchmarks.reproduction import COLUMNS, spreads


def row(balanced_accuracy: float, ece: float, epochs: int) -> dict:
    figures = dict.fromkeys(COLUMNS, 0.5)
    figures.update(balanced_accuracy=balanced_accuracy, ece=ece, epochs=epochs)
    return figures


def test_spreads_split_the_precision_effect_from_the_seed_effect():
    """Precision effect: max - min over the precisions at one seed; seed effect: max - min
    over the seeds at one precision; largest: the larger of all of them, per figure."""
    runs = {
        ("auto", 42): row(0.743, 0.080, 14),
        ("float32", 42): row(0.750, 0.105, 22),
        ("auto", 43): row(0.700, 0.090, 12),
        ("float32", 43): row(0.690, 0.070, 18),
    }
    found = spreads(runs)
    assert found["precision"][42]["balanced_accuracy"] == pytest.approx(0.007)
    assert found["precision"][43]["ece"] == pytest.approx(0.020)
    assert found["precision"][42]["epochs"] == 8
    assert found["seed"]["auto"]["balanced_accuracy"] == pytest.approx(0.043)
    assert found["seed"]["float32"]["ece"] == pytest.approx(0.035)
    assert found["largest"]["balanced_accuracy"] == pytest.approx(0.060)  # float32 over seeds
    assert found["largest"]["ece"] == pytest.approx(0.035)
    assert found["largest"]["epochs"] == 8
    assert found["largest"]["roc_auc"] == 0.0  # the same everywhere


def test_spreads_leave_out_an_axis_with_one_value():
    """One precision: no precision effect; one seed: no seed effect; a missing figure (a
    confidence interval without bootstrap) is no spread."""
    one_precision = spreads({("auto", 42): row(0.7, 0.1, 10), ("auto", 43): row(0.8, 0.1, 10)})
    assert one_precision["precision"] == {} and list(one_precision["seed"]) == ["auto"]
    one_seed = spreads({("auto", 42): row(0.7, 0.1, 10), ("float32", 42): row(0.8, 0.1, 10)})
    assert one_seed["seed"] == {} and list(one_seed["precision"]) == [42]
    runs = {
        ("auto", 42): {**row(0.7, 0.1, 10), "ci_low": None},
        ("float32", 42): {**row(0.8, 0.1, 10), "ci_low": None},
    }
    assert spreads(runs)["precision"][42]["ci_low"] == 0.0
