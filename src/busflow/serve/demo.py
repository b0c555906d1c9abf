"""``busflow demo``: a local web page to try a trained model on one image (after P003's GUI).

Pick a trained model of ``results/`` (its test metrics shown), upload an image or pick one of the model's
test images, and see the image, the lesion overlay (opacity and threshold adjustable without re-running the
model), the class probabilities and the lesion's shape descriptors. A cascade shows its crop box too.

Safety: bound to 127.0.0.1 unless told otherwise; uploads are capped in bytes and pixels (Pillow's
decompression-bomb limit is set to the same cap) and checked before decoding; the browser only ever sends a
model key and a test-image ID chosen from lists the server built, so no browser input names a file.
Every problem with an input is a message in the page, never a stack trace.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr  # handlers' type hints (gr.Request) are resolved in this module's namespace
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from busflow.data.folder import IMAGE_SUFFIXES
from busflow.data.preprocess import load_grayscale, normalise
from busflow.data.spacing import check_spacing
from busflow.errors import DatasetError
from busflow.evaluate.lesion_size import lesion_size_mm
from busflow.model_card import NetworkCard, read_card
from busflow.serve.predict import ImageOutputs, image_outputs, overlay_image, shape_descriptors

MAX_PIXELS = 40_000_000  # larger than any ultrasound frame; a decompression bomb is refused before decoding
READABLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F"})
BOX_COLOUR = (255, 210, 0)
DISPLAY_MIN_SIDE = 320
log = logging.getLogger("busflow.serve.demo")


class InputError(ValueError):
    """A problem with what the user gave the page, shown to them as a message."""


@dataclass(frozen=True)
class TrainedModel:
    key: str  # "<run>/<model>/fold<k>": what the page sends back
    path: Path
    headline: str
    tasks: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.key}  ({self.headline or 'not evaluated'})"


def _headline(model_dir: Path) -> str:
    from busflow.io import read_json
    from busflow.stages.evaluate import headline

    metrics_path = model_dir / "metrics.json"
    return headline(read_json(metrics_path)) if metrics_path.is_file() else ""


def discover_models(results: Path) -> list[TrainedModel]:
    """Every trained fold of every run under ``results`` (models and ensembles; ablation cells and the leaky
    split's models left out), with its test metrics."""
    found = []
    for card_path in sorted([*results.glob("*/models/*/fold*/model.json"), *results.glob("*/ensembles/*/fold*/model.json")]):
        model_dir = card_path.parent
        run, model = model_dir.parents[2].name, model_dir.parent.name
        key = f"{run}/{model}/{model_dir.name}" if model_dir.parents[1].name == "models" else f"{run}/ensembles/{model}/{model_dir.name}"
        card = read_card(model_dir)
        cascade = isinstance(card, NetworkCard) and card.cascade is not None
        tasks = tuple(sorted({*card.tasks, *(["seg"] if cascade else [])}))  # a cascade also segments
        found.append(TrainedModel(key, model_dir, _headline(model_dir), tasks))
    return found


def model_test_images(model: TrainedModel, project_root: Path) -> dict[str, Path]:
    """The model's own test images (those its predictions.csv lists), ID → file, from its run's index."""
    from busflow.io import read_table

    predictions, index_path = model.path / "predictions.csv", model.path.parents[2] / "data" / "index.csv"
    if not predictions.is_file() or not index_path.is_file():
        return {}
    index = read_table(index_path).set_index("image_id")["image_path"]
    ids = [i for i in read_table(predictions)["image_id"].astype(str) if i in index.index]
    return {i: Path(index[i]) if Path(index[i]).is_absolute() else project_root / index[i] for i in ids}


def test_image_spacing(model: TrainedModel, image_id: str) -> float:
    """Pixel spacing (mm) of one of the model's test images, from its run's index; NaN when the source gave none."""
    from busflow.io import read_table

    index = read_table(model.path.parents[2] / "data" / "index.csv").set_index("image_id")
    if "pixel_spacing_mm" not in index.columns or image_id not in index.index:
        return math.nan
    return float(index.at[image_id, "pixel_spacing_mm"])


def check_image_file(path: Path, max_bytes: int, name: str | None = None) -> None:
    """Refuse, with a message naming the file, what the demo should not decode."""
    name = name or path.name
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"{name}: not an image file type the demo reads ({', '.join(sorted(IMAGE_SUFFIXES))})")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{name}: the file is empty")
    if size > max_bytes:
        raise InputError(f"{name}: {size / 1e6:.1f} MB is larger than the {max_bytes / 1e6:.0f} MB the demo accepts")
    try:
        with Image.open(path) as image:  # reads the header only
            width, height, mode, frames = image.width, image.height, image.mode, getattr(image, "n_frames", 1)
    except Image.DecompressionBombError:
        raise InputError(f"{name}: more than the {MAX_PIXELS / 1e6:.0f} megapixels the demo accepts (refused before decoding)") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"{name}: not an image (it cannot be decoded: {error})") from None
    if width * height > MAX_PIXELS:
        raise InputError(f"{name}: {width}×{height} px is more than the {MAX_PIXELS / 1e6:.0f} megapixels the demo accepts")
    if mode not in READABLE_MODES:
        bands = Image.getmodebands(mode) if mode in Image.MODES else "?"
        raise InputError(f"{name}: pixel format {mode} ({bands} channels) is not a gray, RGB or RGBA image")
    if frames > 1:
        raise InputError(f"{name}: holds {frames} frames; save the frame to analyse as its own image")


@dataclass
class Analysis:
    """One image through one model: everything the page re-renders from when a slider moves."""

    name: str
    gray: np.ndarray  # display image (uint8, original resolution)
    classes: list[str]
    outputs: ImageOutputs
    seconds: float = 0.0
    pixel_spacing_mm: float = math.nan  # of the original image; NaN when not known


def analyse(predictor: Any, image_path: Path, name: str, pixel_spacing_mm: float = math.nan) -> Analysis:
    started = time.perf_counter()
    try:
        gray = load_grayscale(image_path)
    except DatasetError as error:
        raise InputError(f"{name}: {str(error).split(': ', 1)[-1]}") from None
    outputs = image_outputs(predictor.predict([gray]), 0, gray.shape)
    return Analysis(name, normalise(gray), list(predictor.classes), outputs, time.perf_counter() - started, pixel_spacing_mm)


def render(analysis: Analysis, opacity: float, threshold: float) -> tuple[np.ndarray, dict[str, float] | None, pd.DataFrame, str]:
    """Overlay picture, class probabilities, descriptor table and a one-line summary for the page."""
    summary = [f"**{analysis.name}**"]
    probabilities = None
    outputs = analysis.outputs
    if outputs.class_probs is not None:
        probabilities = {c: float(p) for c, p in zip(analysis.classes, outputs.class_probs)}
        best = max(probabilities, key=probabilities.get)
        summary.append(f"predicted **{best}** ({probabilities[best]:.2f})")
    if outputs.lesion_probs is None:
        picture = np.repeat(analysis.gray[..., None], 3, axis=2)
        descriptors = pd.DataFrame({"descriptor": ["note"], "value": ["this model has no segmentation output"]})
    else:
        mask = outputs.lesion_probs >= threshold
        picture = overlay_image(analysis.gray, mask, opacity)
        described = shape_descriptors(mask)
        if not math.isnan(analysis.pixel_spacing_mm):
            described.update(pixel_spacing_mm=analysis.pixel_spacing_mm,
                             **lesion_size_mm(mask, (analysis.pixel_spacing_mm, analysis.pixel_spacing_mm)))
        descriptors = pd.DataFrame({"descriptor": list(described),
                                    "value": ["–" if isinstance(v, float) and math.isnan(v) else round(float(v), 3) for v in described.values()]})
        summary.append(f"lesion area {described['lesion_area_px']} px")
        if not math.isnan(described.get("largest_lesion_diameter_mm", math.nan)):
            summary.append(f"longest diameter {described['largest_lesion_diameter_mm']:.1f} mm")
    if outputs.roi_box:
        import cv2

        box = outputs.roi_box
        cv2.rectangle(picture, (box["roi_left"], box["roi_top"]), (box["roi_right"] - 1, box["roi_bottom"] - 1), BOX_COLOUR,
                      max(1, min(picture.shape[:2]) // 150))
        summary.append("yellow box: the crop the cascade classified")
    summary.append(f"{analysis.seconds:.2f} s")
    return picture, probabilities, descriptors, " · ".join(summary)


def for_display(picture: np.ndarray, min_side: int = DISPLAY_MIN_SIDE) -> np.ndarray:
    """Small scans enlarged (nearest neighbour, whole factors: pixels stay visible as they are) for the page."""
    factor = max(1, -(-min_side // max(1, min(picture.shape[:2]))))
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1) if factor > 1 else picture


class DemoSession:
    """The server side of the page: model catalogue, cached predictors, input checks."""

    def __init__(self, results: Path, *, device: str = "auto", max_upload_mb: float = 20.0) -> None:
        self.results, self.device = results, device
        self.max_bytes = int(max_upload_mb * 1e6)
        self.models = {m.key: m for m in discover_models(results)}
        if not self.models:
            raise DatasetError(f"{results}: no trained model found (expected <run>/models/<model>/fold<k>/model.json); run the pipeline first")

    def model(self, key: str | None) -> TrainedModel:
        if key not in self.models:
            raise InputError("pick a trained model first")
        return self.models[key]

    def test_images(self, key: str | None) -> dict[str, Path]:
        return model_test_images(self.model(key), self.results.resolve().parent) if key in self.models else {}

    @functools.lru_cache(maxsize=4)  # noqa: B019 — one session per process; keeps the last models warm
    def predictor(self, key: str) -> Any:
        from busflow.serve.predictors import load_predictor
        from busflow.train.device import resolve_device

        return load_predictor(self.model(key).path).to(resolve_device(self.device))

    def analyse(self, key: str | None, upload: str | None, test_image: str | None,
                upload_spacing_mm: float | None = None) -> Analysis:
        """One image through the model: an upload (its pixel spacing as typed, if any) or one of the model's
        test images (its spacing from the run's index)."""
        model = self.model(key)
        spacing = math.nan
        if upload:
            path = Path(upload)
            check_image_file(path, self.max_bytes, name=path.name)
            name = path.name
            if upload_spacing_mm:  # the page's number field sends 0 when left alone: unknown
                try:
                    spacing = check_spacing(float(upload_spacing_mm), "pixel spacing of the upload")
                except DatasetError as error:
                    raise InputError(str(error)) from None
        elif test_image:
            images = self.test_images(key)
            if test_image not in images:
                raise InputError(f"{test_image}: not a test image of {model.key}")
            path, name = images[test_image], f"{test_image} (test image)"
            check_image_file(path, self.max_bytes, name=name)
            spacing = test_image_spacing(model, test_image)
        else:
            raise InputError("upload an image or pick a test image")
        return analyse(self.predictor(key), path, name, spacing)


def _model_info(session: DemoSession, key: str | None) -> str:
    if key not in session.models:
        return ""
    model = session.models[key]
    where = os.path.relpath(model.path.resolve(), session.results.resolve().parent)
    return f"**{key}** · tasks: {', '.join(model.tasks) or '?'} · test metrics: {model.headline or 'not evaluated yet'} · `{where}`"


def build_app(session: DemoSession) -> Any:
    def guarded(function: Any) -> Any:
        @functools.wraps(function)
        def handler(*args: Any) -> Any:
            try:
                return function(*args)
            except (InputError, DatasetError) as error:
                raise gr.Error(str(error), print_exception=False) from None
            except Exception as error:  # the page shows a message; the full trace goes to the server's log
                log.exception("demo request failed")
                raise gr.Error(f"the model could not analyse this image ({type(error).__name__}: {error})", print_exception=False) from None
        return handler

    @guarded
    def on_model(key: str | None) -> tuple[str, Any]:
        return _model_info(session, key), gr.update(choices=sorted(session.test_images(key)), value=None)

    @guarded
    def on_analyse(key: str | None, upload: str | None, test_image: str | None, spacing: float | None, opacity: float,
                   threshold: float) -> tuple:
        analysis = session.analyse(key, upload, test_image, spacing)
        picture, probabilities, descriptors, summary = render(analysis, opacity, threshold)
        return analysis, for_display(analysis.gray), for_display(picture), probabilities, descriptors, summary

    @guarded
    def on_slider(analysis: Analysis | None, opacity: float, threshold: float) -> tuple:
        if analysis is None:
            return gr.update(), gr.update(), gr.update()
        picture, _, descriptors, summary = render(analysis, opacity, threshold)
        return for_display(picture), descriptors, summary

    def on_load(request: gr.Request) -> tuple[Any, str, Any]:
        """``?model=<key>`` in the address picks the model (a link to one model's page)."""
        key = request.query_params.get("model")
        if key not in session.models:
            return gr.update(), gr.update(), gr.update()
        return gr.update(value=key), _model_info(session, key), gr.update(choices=sorted(session.test_images(key)), value=None)

    keys = list(session.models)
    default = max(keys, key=lambda k: len(session.models[k].tasks))  # first model showing a mask and classes, if any
    with gr.Blocks(title="busflow demo", analytics_enabled=False) as app:
        gr.Markdown("# busflow demo\nA trained breast-ultrasound model on one image: lesion mask and class probabilities. "
                    "Research software, not a medical device.")
        with gr.Row():
            model = gr.Dropdown(choices=[(session.models[k].label, k) for k in keys], value=default, label="Trained model",
                                elem_id="model", scale=3)
            info = gr.Markdown(_model_info(session, default), elem_id="model-info")
        with gr.Row():
            upload = gr.File(label="Upload an image", file_types=sorted(IMAGE_SUFFIXES), type="filepath", elem_id="upload")
            test_image = gr.Dropdown(choices=sorted(session.test_images(default)), value=None, label="…or pick a test image",
                                     elem_id="test-image")
            spacing = gr.Number(value=0, label="Pixel spacing of the upload (mm; 0: unknown)", minimum=0, elem_id="spacing")
            run = gr.Button("Analyse", variant="primary", elem_id="analyse")
        summary = gr.Markdown(elem_id="summary")
        with gr.Row():
            image = gr.Image(label="Image", type="numpy", interactive=False, elem_id="image")
            overlay = gr.Image(label="Lesion overlay", type="numpy", interactive=False, elem_id="overlay")
        with gr.Row():
            opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Overlay opacity", elem_id="opacity")
            threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Lesion threshold", elem_id="threshold")
        with gr.Row():
            probabilities = gr.Label(label="Class probabilities", elem_id="probabilities")
            descriptors = gr.Dataframe(headers=["descriptor", "value"], label="Lesion descriptors", interactive=False, elem_id="descriptors")
        state = gr.State(None)
        app.load(on_load, None, [model, info, test_image])
        model.change(on_model, model, [info, test_image])
        run.click(on_analyse, [model, upload, test_image, spacing, opacity, threshold], [state, image, overlay, probabilities, descriptors, summary])
        for slider in (opacity, threshold):
            slider.release(on_slider, [state, opacity, threshold], [overlay, descriptors, summary])
    return app


def launch(results: Path, *, host: str = "127.0.0.1", port: int = 7860, device: str = "auto", max_upload_mb: float = 20.0) -> None:
    """Serve the demo until interrupted."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow refuses larger images wherever they are decoded in this process
    session = DemoSession(results, device=device, max_upload_mb=max_upload_mb)
    print(f"busflow demo: {len(session.models)} trained model(s) from {results}; open http://{host}:{port}", flush=True)
    build_app(session).launch(server_name=host, server_port=port, max_file_size=session.max_bytes, ssr_mode=False,
                              show_error=False, quiet=True, footer_links=[])
