"""busflow demo: the model catalogue, input checks and analysis on the tiny run, then the page in headless Chromium."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from browser import chromium_driver, upload_and_analyse
from busflow.serve.demo import MAX_PIXELS, DemoSession, InputError, check_image_file, render
from conftest import tool_env

pytestmark = pytest.mark.slow
CLASSES = ["normal", "benign", "malignant"]


@pytest.fixture(scope="module")
def session(tiny_project: Path) -> DemoSession:
    return DemoSession(tiny_project / "results", device="cpu")


@pytest.fixture(scope="module")
def new_image(tiny_project: Path) -> Path:
    """A scan the models never saw: a phantom of the "other site" folder."""
    return next(p for p in sorted((tiny_project.parent / "other_site").rglob("*.png")) if "_mask" not in p.stem)


def _png_header_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width × height pixels (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def test_bad_uploads_get_a_message_naming_the_file(tmp_path: Path) -> None:
    cases = {}
    (tmp_path / "empty.png").write_bytes(b"")
    cases["empty.png"] = "the file is empty"
    (tmp_path / "notes.png").write_text("these are my notes, not pixels")
    cases["notes.png"] = "not an image"
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4")
    cases["report.pdf"] = "not an image file type"
    _png_header_claiming(tmp_path / "huge.png", 7_000, 7_000)
    cases["huge.png"] = f"7000×7000 px is more than the {MAX_PIXELS // 1_000_000} megapixels"
    _png_header_claiming(tmp_path / "bomb.png", 20_000, 20_000)
    cases["bomb.png"] = f"more than the {MAX_PIXELS // 1_000_000} megapixels the demo accepts \\(refused before decoding\\)"
    Image.new("CMYK", (16, 16)).save(tmp_path / "print.jpg")
    cases["print.jpg"] = "pixel format CMYK \\(4 channels\\)"
    Image.new("L", (16, 16)).save(tmp_path / "cine.tif", save_all=True, append_images=[Image.new("L", (16, 16))])
    cases["cine.tif"] = "holds 2 frames"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400), dtype=np.uint8)).save(tmp_path / "large.png")
    for name, message in cases.items():
        with pytest.raises(InputError, match=f"^{name}: {message}"):
            check_image_file(tmp_path / name, max_bytes=10_000_000)
    with pytest.raises(InputError, match=r"^large.png: 0.2 MB is larger than the 0 MB"):
        check_image_file(tmp_path / "large.png", max_bytes=100_000)
    check_image_file(tmp_path / "large.png", max_bytes=10_000_000)  # a plain gray image passes


def test_catalogue_lists_models_ensembles_and_cascade_with_metrics(session: DemoSession) -> None:
    keys = set(session.models)
    for expected in ("synthetic/unet/fold0", "synthetic/mtl_resnet50/fold1", "synthetic/cascade/fold0", "synthetic/ensembles/seg_ensemble/fold0"):
        assert expected in keys
    assert not any("ablation" in k or "random_image" in k for k in keys)
    assert "dice" in session.models["synthetic/unet/fold0"].headline
    assert session.models["synthetic/cascade/fold0"].tasks == ("cls", "seg")
    test_ids = session.test_images("synthetic/unet/fold0")
    assert test_ids and all(path.is_file() for path in test_ids.values())


@pytest.mark.parametrize("key", ["synthetic/mtl_resnet50/fold0", "synthetic/cascade/fold0", "synthetic/ensembles/seg_ensemble/fold0"])
def test_analysis_shows_every_output_of_the_model(session: DemoSession, new_image: Path, key: str) -> None:
    analysis = session.analyse(key, str(new_image), None)
    picture, probabilities, descriptors, summary = render(analysis, opacity=0.5, threshold=0.5)
    assert picture.shape == (*Image.open(new_image).size[::-1], 3)
    assert analysis.outputs.lesion_probs is not None and analysis.outputs.lesion_probs.shape == picture.shape[:2]
    if key.endswith("ensembles/seg_ensemble/fold0"):
        assert probabilities is None
    else:
        assert list(probabilities) == CLASSES and sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert "predicted" in summary
    assert ("crop the cascade classified" in summary) == ("cascade" in key)
    area = dict(zip(descriptors["descriptor"], descriptors["value"]))["lesion_area_px"]
    assert area == (analysis.outputs.lesion_probs >= 0.5).sum()
    _, _, nothing, _ = render(analysis, opacity=0.5, threshold=1.01)  # the threshold slider re-renders without the model
    assert dict(zip(nothing["descriptor"], nothing["value"]))["lesion_area_px"] == 0


def test_a_test_image_of_the_model_can_be_picked_instead_of_an_upload(session: DemoSession) -> None:
    key = "synthetic/unet/fold0"
    picked = sorted(session.test_images(key))[0]
    analysis = session.analyse(key, None, picked)
    assert analysis.name == f"{picked} (test image)" and analysis.outputs.lesion_probs is not None
    _, _, descriptors, summary = render(analysis, opacity=0.4, threshold=0.5)
    assert picked in summary
    index = pd.read_csv(session.results / "synthetic" / "data" / "index.csv", dtype={"image_id": str}).set_index("image_id")
    assert analysis.pixel_spacing_mm == pytest.approx(index.loc[picked, "pixel_spacing_mm"])  # the phantoms give theirs
    described = dict(zip(descriptors["descriptor"], descriptors["value"]))
    assert described["lesion_area_mm2"] == pytest.approx(described["lesion_area_px"] * analysis.pixel_spacing_mm**2, abs=1e-3)
    if described["lesion_area_px"]:
        assert f"longest diameter {described['largest_lesion_diameter_mm']:.1f} mm" in summary


def test_an_upload_is_measured_in_mm_with_the_spacing_typed_in(session: DemoSession, new_image: Path) -> None:
    key = "synthetic/unet/fold0"
    for unknown in (None, 0.0):  # the page sends 0 when the field is left alone
        plain = render(session.analyse(key, str(new_image), None, unknown), opacity=0.4, threshold=0.5)[2]
        assert "lesion_area_mm2" not in set(plain["descriptor"])  # no spacing: no mm
    analysis = session.analyse(key, str(new_image), None, 0.1)
    described = dict(zip(*render(analysis, opacity=0.4, threshold=0.5)[2].to_dict("list").values()))
    assert described["lesion_area_mm2"] == pytest.approx(described["lesion_area_px"] * 0.01, abs=1e-3)
    with pytest.raises(InputError, match="pixel spacing of the upload: pixel spacing -0.1 mm"):
        session.analyse(key, str(new_image), None, -0.1)


def test_browser_input_never_names_a_file(session: DemoSession) -> None:
    with pytest.raises(InputError, match="pick a trained model"):
        session.analyse("../../etc", None, "p0000_v0")
    with pytest.raises(InputError, match="not a test image of synthetic/unet/fold0"):
        session.analyse("synthetic/unet/fold0", None, "../../../etc/passwd")
    with pytest.raises(InputError, match="upload an image or pick a test image"):
        session.analyse("synthetic/unet/fold0", None, None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo_results(request: pytest.FixtureRequest) -> Path:
    """The results the page serves: the tiny run, or BUSFLOW_DEMO_RESULTS (e.g. a default run, for the README picture)."""
    chosen = os.environ.get("BUSFLOW_DEMO_RESULTS")
    return Path(chosen).resolve() if chosen else request.getfixturevalue("tiny_project") / "results"


@pytest.fixture(scope="module")
def demo_url(demo_results: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port, scratch = _free_port(), tmp_path_factory.mktemp("demo")
    env = dict(tool_env(), GRADIO_TEMP_DIR=str(scratch / "uploads"), GRADIO_ANALYTICS_ENABLED="False")
    server = subprocess.Popen([sys.executable, "-m", "busflow.cli", "demo", "--results", str(demo_results), "--port", str(port),
                               "--device", "cpu"], cwd=scratch, env=env, stdout=open(scratch / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"demo did not start:\n{(scratch / 'server.log').read_text()[-3000:]}") from None
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    yield from chromium_driver(tmp_path / "chromium-profile")


def test_page_shows_probabilities_and_overlay_of_an_uploaded_scan(demo_url: str, demo_results: Path, browser,
                                                                   request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    key = "synthetic/mtl_resnet50/fold0"  # multi-task: mask and classes; chosen by the page's ?model= link
    if os.environ.get("BUSFLOW_DEMO_RESULTS"):
        new_image = sorted(DemoSession(demo_results).test_images(key).values())[0]
    else:
        new_image = request.getfixturevalue("new_image")
    seconds = upload_and_analyse(browser, f"{demo_url}?model={key}", new_image)
    WebDriverWait(browser, 60).until(lambda d: all(c in d.find_element(By.ID, "probabilities").text for c in CLASSES))
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay img[src]"))
    print(f"demo: upload → result {seconds:.2f} s in headless Chromium")
    assert key in browser.find_element(By.ID, "model-info").text
    summary = browser.find_element(By.ID, "summary").text
    assert new_image.name in summary and "predicted" in summary and "lesion area" in summary
    assert "%" in browser.find_element(By.ID, "probabilities").text
    assert "solidity" in browser.find_element(By.ID, "descriptors").text
    screenshot = Path(os.environ.get("BUSFLOW_SCREENSHOT") or tmp_path / "demo.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot))
    with Image.open(screenshot) as shot:
        assert shot.size[0] >= 800 and np.asarray(shot.convert("L")).std() > 10  # a rendered page, not a blank one
    spacing = browser.find_element(By.CSS_SELECTOR, "#spacing input")
    spacing.clear()
    spacing.send_keys("0.1")  # the upload's pixel spacing, typed in: the lesion is measured in mm
    browser.find_element(By.ID, "analyse").click()
    WebDriverWait(browser, 60).until(lambda d: "longest diameter" in d.find_element(By.ID, "summary").text
                                     or "lesion area 0 px" in d.find_element(By.ID, "summary").text)
    assert "lesion_area_mm2" in browser.find_element(By.ID, "descriptors").text


def test_page_explains_a_non_image_without_a_stack_trace(demo_url: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    fake = tmp_path / "scan.png"
    fake.write_text("a text file renamed to .png")
    upload_and_analyse(browser, demo_url, fake)
    WebDriverWait(browser, 60).until(lambda d: "scan.png: not an image" in d.find_element(By.TAG_NAME, "body").text)
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text


def test_the_server_binds_locally_and_serves_no_file_it_did_not_make(demo_url: str, demo_results: Path) -> None:
    import urllib.error

    from busflow.cli import _parser

    assert _parser().parse_args(["demo"]).host == "127.0.0.1"
    weights = next(demo_results.glob("*/models/*/fold0/weights.pt"))
    for target in ("/etc/passwd", str(weights), "../../etc/passwd", "results/../../../etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{demo_url}gradio_api/file={target}", timeout=10)
        assert refused.value.code in (403, 404), target
