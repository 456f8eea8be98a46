"""The model card, ``models/card.json``: what a trained model is, for whoever serves it
(why a card of its own, written by evaluate: docs/deploy.md). It names the model file it
scored by sha256: readers (the service, the app) show its figures for that model only. Its
``model_version`` is :func:`lungct.contract.model_version` of that sha256, the version the
service, predict and the DICOM SR name the same model by.
"""

from __future__ import annotations

import math
from pathlib import Path

from lungct.artifacts import LEAKY
from lungct.atomic import read_json, sha256_file, write_json
from lungct.contract import Contract, model_version

CARD_FILE = Path("models/card.json")
INTENDED_USE = (
    "research and pipeline checks; not a medical device, not for diagnosis; slice-level "
    "figures on the test split named here, not a clinical validation"
)


def write_card(
    path: Path, model: Path, contract: Contract, headline: dict, images: int, groups: int
) -> dict:
    sha256 = sha256_file(model)
    card = {
        "model_sha256": sha256,
        "model_version": model_version(sha256),
        "classes": list(contract.classes),
        "data": contract.data.to_dict() if contract.data is not None else None,
        "test": {**headline, "images": images, "groups": groups},
        "intended_use": INTENDED_USE,
        "warning": contract.warning,
    }
    write_json(path, card)
    return card


def read_card(path: Path, model: Path, sha256: str | None = None) -> tuple[dict | None, str]:
    """The card of ``model`` (or of the model whose sha256 is given: the one an export was
    made from), or None and why not (no card, unreadable, not of :func:`card_problem`'s
    shape, another model's): a reader shows a card's figures as they are."""
    try:
        card = read_json(Path(path))
    except FileNotFoundError:
        return None, f"{path}: not found (evaluate writes it: dvc repro)"
    except (OSError, UnicodeDecodeError, ValueError):
        return None, f"{path}: not a readable model card (rerun dvc repro)"
    problem = card_problem(card)
    if problem:
        return None, f"{path}: not a model card ({problem}; rerun dvc repro)"
    if card.get("model_sha256") != (sha256 or sha256_file(Path(model))):
        return None, f"{path}: describes another model than {model} (rerun dvc repro)"
    return card, ""


# The card's test figures a reader shows: numbers (an interval bound may be null).
FIGURES = ("balanced_accuracy", "images")
BOUNDS = ("ci_low", "ci_high")


def card_problem(card: object) -> str | None:
    """Why ``card`` is not of the shape :func:`write_card` writes, in a few words, or None:
    an object whose ``test`` holds the figures as numbers, an interval as two numbers or
    two nulls, the split's flag as true or false, and the text fields as text. The one
    check of a card, where it is read."""
    if not isinstance(card, dict) or not isinstance(card.get("test"), dict):
        return "an object with a 'test' object expected"
    test = card["test"]
    figures = [key for key, value in test.items() if key != LEAKY and not _number_or_null(value)]
    missing = [key for key in FIGURES if not _number(test.get(key))]
    bounds = [test.get(key) for key in BOUNDS]
    if missing or figures:
        return f"test.{(missing or figures)[0]} must be a number"
    if not (all(_number(b) for b in bounds) or all(b is None for b in bounds)):
        return "test.ci_low and test.ci_high must both be numbers or both null"
    if not isinstance(test.get(LEAKY, False), bool):
        return f"test.{LEAKY} must be true or false"
    for key in ("model_sha256", "model_version", "intended_use", "warning"):
        if not isinstance(card.get(key), str | None):  # model_version: absent from older cards
            return f"{key} must be text"
    classes = card.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return "classes must be a list of names"
    return None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number_or_null(value: object) -> bool:
    return value is None or _number(value)
