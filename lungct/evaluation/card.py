"""The model card, ``models/card.json``: what a trained model is, for whoever serves it
(why a card of its own, written by evaluate: docs/deploy.md). It names the model file it
scored by sha256: readers (the service, the app) show its figures for that model only. Its
``model_version`` is :func:`lungct.contract.model_version` of that sha256, the version the
service, predict and the DICOM SR name the same model by.
"""

from __future__ import annotations

import json
from pathlib import Path

from lungct.atomic import sha256_file, write_json
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
    made from), or None and why not (no card, unreadable, another model's)."""
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{path}: not found (evaluate writes it: dvc repro)"
    except (OSError, UnicodeDecodeError, ValueError):
        return None, f"{path}: not a readable model card (rerun dvc repro)"
    if not isinstance(card, dict) or not isinstance(card.get("test"), dict):
        return None, f"{path}: not a model card (rerun dvc repro)"
    if card.get("model_sha256") != (sha256 or sha256_file(Path(model))):
        return None, f"{path}: describes another model than {model} (rerun dvc repro)"
    return card, ""
