"""Lung CT slice classifier: upload DICOM, PNG or JPG slices and see what the trained model says.

    streamlit run app.py

Uses ``models/model.keras`` and ``models/labels.json`` (what ``dvc repro`` trains; the
environment variables ``LUNGCT_MODEL`` and ``LUNGCT_LABELS`` point elsewhere) and the convert
stage's own preprocessing (``lungct.io.preprocess``), so each upload reaches the model exactly as
the training images did. Shows what the model was trained on and its test figures (the model
card ``models/card.json``, when it names this model), with a warning for a model of the
built-in synthetic cohort; and per upload: the image as the model sees it, the probability
of every class, and a Grad-CAM map with its caveat.

The model is loaded once per process (``st.cache_resource``) and reloaded when its files
change. Uploads are read from memory; the DICOM and image readers take a path, so each upload
is written to its own private temporary folder and removed at once (``lungct.serving.inference.
predict_bytes``); nothing is written to a shared name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from lungct.artifacts import CONTRACT_FILE, MODEL_FILE, is_leaky
from lungct.errors import SkippedFile, UserError
from lungct.evaluation.card import read_card
from lungct.names import UNCERTAIN
from lungct.serving.inference import Predictor, UploadResult, predict_bytes

HERE = Path(__file__).resolve().parent
MODEL = Path(os.environ.get("LUNGCT_MODEL") or HERE / MODEL_FILE)
LABELS = Path(os.environ.get("LUNGCT_LABELS") or HERE / CONTRACT_FILE)
DISPLAY_WIDTH = 320  # pixels on screen; the model's input is usually smaller

GRADCAM_CAVEAT = (
    "Grad-CAM shows which regions most influenced this prediction, at the coarse resolution "
    "of the last convolutional layer. It is **not a lesion segmentation**: it does not outline "
    "a nodule or a tumour, it can highlight normal anatomy or the black padding, and a "
    "bright area is not a finding."
)
REJECTED = "Rejected: not a CT slice or image this app can read."
NOT_A_DEVICE = (
    "A research model trained on this project's data, for checking the pipeline. "
    "Not a medical device; not for diagnosis."
)


def test_figures() -> str:
    """The model's test figures from its card, or why there are none."""
    card, why = read_card(MODEL.parent / "card.json", MODEL)
    if card is None:
        return f"No test figures ({why.split(': ', 1)[-1]})."
    test = card["test"]
    interval = ""
    if test.get("ci_low") is not None:
        interval = f" (95 % interval {test['ci_low']:.2f}-{test['ci_high']:.2f})"
    leaky = " on a LEAKY split" if is_leaky(test) else ""
    return (
        f"Test balanced accuracy {test['balanced_accuracy']:.3f}{interval} on "
        f"{test['images']} images{leaky}."
    )


def stamp(*paths: Path) -> tuple:
    """Changes when a model file changes, so the cached model is reloaded."""
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths if p.exists())


@st.cache_resource(show_spinner="Loading the model...")
def load_predictor(model: str, labels: str, _stamp: tuple) -> Predictor | str:
    """The model and its contract, once per process (or a one-line reason it cannot load)."""
    del _stamp  # part of the cache key only
    try:
        return Predictor.load(Path(model), Path(labels))
    except UserError as err:
        return str(err)


@st.cache_resource(show_spinner=False)
def load_gradcam(_predictor: Predictor, key: tuple):
    """Grad-CAM of the loaded model, built once (or a one-line reason it is unavailable)."""
    del key
    from lungct.model.gradcam import GradCam, GradCamUnavailable

    try:
        return GradCam(_predictor.model)
    except GradCamUnavailable as err:
        return str(err)


def analyse(predictor: Predictor, data: bytes, keep: set[str]) -> UploadResult | str:
    """An upload -> its model images and probabilities, or the reason it was rejected.
    Kept for the session while the upload is there (the page reruns on every interaction);
    ``keep`` collects the keys in use."""
    key = hashlib.sha256(data).hexdigest()
    keep.add(key)
    cache = st.session_state.setdefault("analysed", {})
    if key not in cache:
        try:
            cache[key] = predict_bytes(predictor, data)
        except SkippedFile as skip:
            cache[key] = f"{skip.reason}" + (f" ({skip.detail})" if skip.detail else "")
        except Exception as exc:  # a reader bug on one odd file must not end the page
            cache[key] = f"unreadable ({type(exc).__name__})"
    return cache[key]


def as_display(pixels: np.ndarray) -> np.ndarray:
    """The model input as an image: grayscale, or the window channels as RGB."""
    return pixels if pixels.ndim == 2 or pixels.shape[-1] == 3 else pixels[..., 0]


def window_text(result: UploadResult) -> str:
    if result.mode == "HU":
        return "CT window(s) " + ", ".join(f"{c:g}/{w:g} HU" for c, w in result.windows)
    return f"image (mode {result.mode}) to grayscale"


def show_upload(file_id: str, result: UploadResult, predictor: Predictor) -> None:
    classes, contract = list(predictor.classes), predictor.contract
    frames = len(result.probabilities)
    index = 0
    if frames > 1:
        mean = result.probabilities.astype(np.float64).mean(axis=0)
        st.write(
            f"{frames} frames; mean over all frames: **{contract.answer(mean)}** "
            f"(top probability {mean.max():.3f})"
        )
        index = st.slider("Frame", 1, frames, 1, key=f"frame-{file_id}") - 1
    probabilities = result.probabilities[index].astype(np.float64)
    best = int(probabilities.argmax())
    answer = contract.answer(probabilities)
    st.markdown(f"Predicted: **{answer}** (top probability {probabilities[best]:.3f})")
    if answer == UNCERTAIN:
        st.info(
            f"The model is not sure enough to name a class ({contract.describe_uncertain()}, "
            f"chosen on the val split); the most probable is {classes[best]}."
        )

    size = predictor.prep.image_size
    pixels = result.pixels[index]
    left, middle, right = st.columns(3)
    with left:
        st.image(
            as_display(pixels),
            caption=f"As the model sees it: {size} x {size}, {window_text(result)}",
            width=DISPLAY_WIDTH,
        )
    with middle:
        gradcam = load_gradcam(predictor, stamp(MODEL))
        if isinstance(gradcam, str):
            st.info(f"Grad-CAM not available for this model: {gradcam}")
        else:
            from lungct.model.gradcam import overlay

            image = pixels if pixels.ndim == 3 else pixels[..., None]
            cam = gradcam(image.astype(np.float32), best)
            gray = pixels if pixels.ndim == 2 else pixels[..., 0]
            st.image(
                overlay(gray, cam),
                caption=f"Grad-CAM for {classes[best]} (layer {gradcam.layer_name})",
                width=DISPLAY_WIDTH,
            )
            st.caption(GRADCAM_CAVEAT)
    with right:
        table = pd.DataFrame({"class": classes, "probability": probabilities})
        st.bar_chart(table, x="class", y="probability", horizontal=True, height=220)
        st.table(table.assign(probability=table["probability"].map("{:.4f}".format)))


def main() -> None:
    st.set_page_config(page_title="Lung CT slice classifier", layout="wide")
    st.title("Lung CT slice classifier")
    predictor = load_predictor(str(MODEL), str(LABELS), stamp(MODEL, LABELS))
    if isinstance(predictor, str):
        st.error(predictor)
        st.stop()
    prep = predictor.prep
    if predictor.contract.warning:
        st.warning(f"Not for real CT: {predictor.contract.warning}.")
    st.caption(
        f"Model `{MODEL}`: classes {', '.join(predictor.classes)}; input {prep.image_size} x "
        f"{prep.image_size}, {prep.channels} channel(s), windows "
        + ", ".join(f"{c:g}/{w:g} HU" for c, w in prep.windows)
        + f"; {predictor.contract.describe_data()}. {test_figures()} {NOT_A_DEVICE}"
    )
    uploads = st.file_uploader(
        "CT slices: DICOM files (any name), PNG or JPG",
        accept_multiple_files=True,
        key="uploads",
    )
    in_use: set[str] = set()
    for upload in uploads or []:
        st.divider()
        # File names and reasons (which can quote the file's own attributes) are the
        # uploader's text: shown as plain text, never as markdown (links, images, HTML).
        st.text(upload.name)
        result = analyse(predictor, upload.getvalue(), in_use)
        if isinstance(result, str):
            st.error(REJECTED)
            st.text(f"{upload.name}: {result}")
            continue
        show_upload(upload.file_id, result, predictor)
    analysed = st.session_state.get("analysed", {})
    for key in set(analysed) - in_use:  # removed uploads
        del analysed[key]


main()
