"""Calibrated probabilities and answers that may be "uncertain", in NumPy: the one home of
the maths that train fits on the val split and evaluate measures on test.

* Temperature scaling (Guo et al., 2017): one scalar ``T`` and ``softmax(log(p) / T)``. For
  one softmax model that is ``softmax(logits / T)``; for an ensemble it scales the log of
  the averaged output. It never changes which class is most probable.
  :class:`lungct.model.calibrate.Temperature` is the same in the model's graph.
  :func:`choose_temperature` keeps a fitted temperature only where it clearly lowers the
  loss of held-out patients it was not fitted on (cross-fitting), since on a small val
  split a temperature fitted to all of it can be noise.
* Reliability: top-label confidence against accuracy in equal-width bins; the expected
  calibration error (ECE) is their size-weighted gap.
* Selective answers: an image whose calibrated top probability is below a threshold is
  "uncertain". :func:`choose_threshold` picks the lowest threshold at which the answered
  val images reach a target accuracy, within a cap on the share left uncertain; the
  risk-coverage curve and its area (AURC, Geifman and El-Yaniv, 2017) measure the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The temperatures a model may have, the range the fit searches (a model 20 times too sure,
# or too unsure, is beyond repair by one scalar); a contract holding another is refused.
TEMPERATURE_RANGE = (0.05, 20.0)

# temperature: auto halves the held-out groups at random this many times (cross-fitting)
CROSSFIT_DRAWS = 20
CROSSFIT_MIN_GROUPS = 4  # fewer held-out groups cannot be halved into evidence: no temperature

RELIABILITY_BINS = 15  # equal-width confidence bins of the ECE and the reliability diagram
CALIBRATED_DRAWS = 200  # label sets drawn by ece_if_calibrated
# Probabilities below this are taken as this before the log (float32's smallest normal).
TINY = float(np.finfo(np.float32).tiny)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` per row, in float64: ``T`` > 1 softens, < 1 sharpens."""
    logits = np.log(np.clip(np.asarray(probabilities, np.float64), TINY, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def negative_log_likelihood(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean of ``-log p(true class)`` (the loss the temperature minimises)."""
    picked = np.asarray(probabilities, np.float64)[np.arange(len(y_true)), y_true]
    return float(-np.log(np.clip(picked, TINY, 1.0)).mean())


def fit_temperature(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``y_true`` (class
    indices) under :func:`apply_temperature` of ``probabilities`` (searched on log T within
    :data:`TEMPERATURE_RANGE`), rounded to 4 decimals; 1.0 for no images."""
    from scipy.optimize import minimize_scalar

    y_true = np.asarray(y_true, dtype=int)
    if not len(y_true):
        return 1.0
    low, high = np.log(TEMPERATURE_RANGE)
    found = minimize_scalar(
        lambda log_t: negative_log_likelihood(
            y_true, apply_temperature(probabilities, np.exp(log_t))
        ),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return round(float(np.exp(found.x)), 4)


def crossfit_loss(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    groups: np.ndarray,
    draws: int = CROSSFIT_DRAWS,
    seed: int = 0,
) -> dict[str, float]:
    """The negative log-likelihood of held-out images without a temperature (``none``) and
    with one fitted on other patients (``temperature``): ``draws`` times, the ``groups``
    (patients) are halved at random, a temperature is fitted on each half's images and
    scores the other half's (each image's loss the mean over the draws). ``gain_se``: the
    standard error of the gain ``none - temperature``, from the patients' sums (images of
    one patient are not independent evidence)."""
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    _, which = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    count = int(which.max()) + 1
    rows = np.arange(len(y_true))

    def losses(q: np.ndarray) -> np.ndarray:
        return -np.log(np.clip(q[rows, y_true], TINY, 1.0))

    rng = np.random.default_rng(seed)
    scaled = np.zeros(len(y_true))
    for _ in range(draws):
        first = np.isin(which, rng.permutation(count)[: count // 2])
        out = np.empty_like(probabilities)
        for fit_on in (first, ~first):
            temperature = fit_temperature(y_true[fit_on], probabilities[fit_on])
            out[~fit_on] = apply_temperature(probabilities[~fit_on], temperature)
        scaled += losses(out) / draws
    gain = losses(probabilities) - scaled
    # the cluster-robust standard error of the mean gain over the images
    per_group = np.bincount(which, gain, count) - np.bincount(which, None, count) * gain.mean()
    gain_se = np.sqrt((per_group**2).sum() * count / (count - 1)) / len(gain)
    return {
        "none": round(float(losses(probabilities).mean()), 6),
        "temperature": round(float(scaled.mean()), 6),
        "gain_se": round(float(gain_se), 6),
    }


def choose_temperature(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    groups: np.ndarray,
    mode: bool | str,
    seed: int = 0,
) -> tuple[float, dict]:
    """The temperature ``train.calibration.temperature`` gives these held-out images, and
    the evidence: ``False``: 1.0; ``True``: :func:`fit_temperature` on all of them;
    ``"auto"``: that fit where :func:`crossfit_loss` says a temperature fitted on some
    patients lowers the loss of the others by more than one standard error of that gain
    (the one-standard-error rule: the simpler model unless the evidence is clear), else 1.0;
    1.0 too with fewer than :data:`CROSSFIT_MIN_GROUPS` groups. The record holds the mode
    and, for ``auto``, the cross-fitted losses (``metrics/train.json``'s
    ``calibration.choice``)."""
    record: dict = {"mode": mode}
    if mode is False:
        return 1.0, record
    if mode == "auto":
        if len(np.unique(np.asarray(groups).astype(str))) < CROSSFIT_MIN_GROUPS:
            record["crossfit"] = None
            return 1.0, record
        losses = crossfit_loss(y_true, probabilities, groups, seed=seed)
        record["crossfit"] = {**losses, "draws": CROSSFIT_DRAWS}
        if losses["none"] - losses["temperature"] <= losses["gain_se"]:
            return 1.0, record
    return fit_temperature(y_true, probabilities), record


def reliability(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int = RELIABILITY_BINS
) -> list[dict]:
    """Per equal-width bin of top-label confidence that holds images: its bounds, the
    images in it, their mean confidence and their accuracy (the reliability diagram)."""
    confidence = np.asarray(probabilities).max(axis=1)
    correct = np.asarray(probabilities).argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            rows.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "images": int(in_bin.sum()),
                    "confidence": float(confidence[in_bin].mean()),
                    "accuracy": float(correct[in_bin].mean()),
                }
            )
    return rows


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Top-label ECE: |accuracy - confidence| per :func:`reliability` bin, weighted by its
    share of the images (the standard definition, Guo et al. 2017; scikit-learn has none)."""
    rows = reliability(y_true, probabilities)
    total = sum(row["images"] for row in rows)
    return sum(row["images"] / total * abs(row["accuracy"] - row["confidence"]) for row in rows)


def ece_if_calibrated(
    probabilities: np.ndarray, draws: int = CALIBRATED_DRAWS, seed: int = 0
) -> float:
    """The ECE a perfectly calibrated model shows on images this many and this confident:
    the mean ECE over ``draws`` label sets drawn from ``probabilities`` themselves. Binned
    ECE is biased upwards on small sets (a few images a bin), so a measured ECE near this
    figure is as calibrated as the set can tell, and a goal below it cannot be shown."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, None)
    p = p / p.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(p, axis=1)
    cumulative[:, -1] = 1.0
    errors = []
    for _ in range(draws):
        labels = (rng.random((len(p), 1)) < cumulative).argmax(axis=1)
        errors.append(expected_calibration_error(labels, p))
    return float(np.mean(errors))


def risk_coverage(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(coverage, risk, threshold)``: answering the images whose top probability is at
    least ``threshold``, the share answered and the share of those that are wrong; one point
    per distinct confidence, from the most confident image down to all answered."""
    confidence = np.asarray(probabilities).max(axis=1)
    wrong = np.asarray(probabilities).argmax(axis=1) != np.asarray(y_true)
    order = np.argsort(-confidence, kind="stable")
    confidence, wrong = confidence[order], wrong[order]
    answered = np.arange(1, len(order) + 1)
    risk = np.cumsum(wrong) / answered
    last_of_tie = np.r_[confidence[1:] != confidence[:-1], True]
    return answered[last_of_tie] / len(order), risk[last_of_tie], confidence[last_of_tie]


def aurc(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """The area under the risk-coverage curve: the mean risk over coverages 1/n ... n/n
    (ties answered together); lower is better, 0 for a model never wrong."""
    coverage, risk, _ = risk_coverage(y_true, probabilities)
    answered = np.round(coverage * len(y_true)).astype(int)
    # each image's step takes the risk of the tie group it is answered with
    return float(np.repeat(risk, np.diff(np.r_[0, answered])).mean()) if len(risk) else 0.0


@dataclass(frozen=True)
class Selective:
    """An "uncertain" rule and what it does on the images it was measured on."""

    threshold: float  # uncertain below this calibrated top probability (0: never)
    coverage: float  # share of images answered
    accuracy: float | None  # of the images answered; None when none are

    def to_dict(self) -> dict:
        accuracy = None if self.accuracy is None else round(self.accuracy, 6)
        return {
            "threshold": self.threshold,
            "coverage": round(self.coverage, 6),
            "accuracy": accuracy,
        }


def selective(y_true: np.ndarray, probabilities: np.ndarray, threshold: float) -> Selective:
    """What answering only images whose top probability reaches ``threshold`` gives."""
    answered = np.asarray(probabilities).max(axis=1) >= threshold
    correct = np.asarray(probabilities).argmax(axis=1) == np.asarray(y_true)
    accuracy = float(correct[answered].mean()) if answered.any() else None
    return Selective(threshold, float(answered.mean()) if len(answered) else 0.0, accuracy)


def choose_threshold(
    y_true: np.ndarray, probabilities: np.ndarray, answered_accuracy: float, max_uncertain: float
) -> Selective:
    """The "uncertain" rule, chosen on these (val) images: the lowest top-probability
    threshold at which the images answered are at least ``answered_accuracy`` accurate, but
    one that leaves at most ``max_uncertain`` of them uncertain (the cap wins where the
    target needs more). 0 (never uncertain) when all images answered already reach it."""
    if not len(y_true) or max_uncertain <= 0:
        return selective(y_true, probabilities, 0.0)
    coverage, risk, thresholds = risk_coverage(y_true, probabilities)
    if 1.0 - risk[-1] >= answered_accuracy:
        return selective(y_true, probabilities, 0.0)
    # the widest answered set that reaches the target, then the cap on what is left out
    reaching = np.flatnonzero(1.0 - risk >= answered_accuracy)
    widest = int(reaching[-1]) if len(reaching) else 0
    allowed = np.flatnonzero(coverage >= 1.0 - max_uncertain)
    pick = max(widest, int(allowed[0]))
    # rounded down: the picked image stays answered
    return selective(y_true, probabilities, float(np.floor(thresholds[pick] * 1e6) / 1e6))
