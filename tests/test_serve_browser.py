"""The kiosk page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): a file
through the picker gets its boxes drawn where the JSON says, in the pixels the model saw (EXIF
rotation ignored); the fake camera's capture gets an answer; a token-protected service asks for the
token once. Screenshots of each land in the test's tmp folder."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; CI installs it)", allow_module_level=True)
pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, python-multipart) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")

from conftest import make_image  # noqa: E402
from serve_tools import encoded, serving  # noqa: E402

from runtime import Florence2  # noqa: E402
from runtime.annotate import label_colour  # noqa: E402

# The tiny random checkpoint answers <OD> on this image with one box of 85x42 px at these options, and
# with no box on EMPTY: found by trying seeds; the tests assert both, so a change of model shows.
BOXED, EMPTY, SIZE = 2, 7, (320, 240)
OPTIONS = {"num_beams": 1, "max_new_tokens": 20}
QUERY = "?num_beams=1&max_new_tokens=20&task=<OD>"


@pytest.fixture(scope="module")
def model(onnx_artifact):
    return Florence2.load(onnx_artifact)


@pytest.fixture(scope="module")
def service(model):
    with serving(model) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1024, "height": 720})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    yield page
    context.close()


def open_page(page, url: str):
    page.goto(f"{url}/{QUERY}")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=30000)


def answer_of(page, upload_path) -> dict:
    page.evaluate("window.kiosk.last = null")
    page.set_input_files("#file", str(upload_path))
    page.wait_for_function("window.kiosk.last || window.kiosk.error", timeout=60000)
    assert page.evaluate("window.kiosk.error") is None
    return page.evaluate("window.kiosk.last")


def canvas_pixels(page) -> np.ndarray:
    url = page.evaluate("document.getElementById('canvas').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)


def edge_share(pixels: np.ndarray, box, colour) -> float:
    """The share of pixels on the box's left and bottom edges (labels sit at the top) in `colour`."""
    left, right = sorted(box[0::2])
    top, bottom = sorted(box[1::2])
    edge = np.concatenate([pixels[top + 3:bottom - 2, left], pixels[bottom, left + 3:right - 2]])
    return float((np.abs(edge - np.array(colour)).max(axis=1) <= 12).mean())


def test_file_upload_draws_the_boxes_of_the_answer(page, service, model, tmp_path):
    boxed, empty = tmp_path / "boxed.png", tmp_path / "empty.png"
    make_image(BOXED, SIZE).save(boxed)
    make_image(EMPTY, SIZE).save(empty)
    open_page(page, service)
    assert page.locator("#task").input_value() == "<OD>"
    assert page.locator("#task option").count() == len(model.tasks)

    last = answer_of(page, boxed)
    bboxes = last["record"]["result"]["bboxes"]
    assert last["record"]["result"] == model(str(boxed), "<OD>", **OPTIONS)["<OD>"]
    assert len(bboxes) >= 1  # the check below must not pass on an empty answer
    assert (last["width"], last["height"]) == SIZE == tuple(last["record"]["image_size"])
    box = max(bboxes, key=lambda b: abs(b[2] - b[0]) * abs(b[3] - b[1]))
    assert abs(box[2] - box[0]) >= 10 and abs(box[3] - box[1]) >= 10
    drawn = canvas_pixels(page)
    assert drawn.shape == (SIZE[1], SIZE[0], 3)
    assert edge_share(drawn, box, label_colour(0)) > 0.9
    assert "region" in page.locator("#answer").inner_text() and "ms" in page.locator("#latency").inner_text()
    page.screenshot(path=str(tmp_path / "kiosk-boxes.png"))

    last = answer_of(page, empty)
    assert last["record"]["result"]["bboxes"] == []
    assert edge_share(canvas_pixels(page), box, label_colour(0)) < 0.1
    page.screenshot(path=str(tmp_path / "kiosk-empty.png"))
    assert page.errors == []


def test_the_canvas_shows_the_pixels_as_stored_not_exif_rotated(page, service, tmp_path):
    image = make_image(BOXED, SIZE)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° to display": a browser shows it 240x320
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encoded(image, "JPEG", quality=95, exif=exif))
    open_page(page, service)
    last = answer_of(page, path)
    assert tuple(last["record"]["image_size"]) == SIZE == (last["width"], last["height"])
    stored = np.asarray(Image.open(path).convert("RGB")).astype(int)
    shown = canvas_pixels(page)
    assert shown.shape == stored.shape and np.abs(shown - stored).mean() < 40  # the boxes differ, little else
    page.screenshot(path=str(tmp_path / "kiosk-exif.png"))


def test_camera_capture_gets_an_answer(page, service, tmp_path):
    open_page(page, service)
    assert page.evaluate("!!window.kiosk.stream")  # Chromium's fake camera
    page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=30000)
    page.click("#capture")
    page.wait_for_function("window.kiosk.last || window.kiosk.error", timeout=60000)
    last = page.evaluate("window.kiosk.last")
    assert last["record"]["image"] == "camera.jpg" and last["record"]["task"] == "<OD>"
    video = page.evaluate("[document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]")
    assert last["record"]["image_size"] == video
    page.screenshot(path=str(tmp_path / "kiosk-camera.png"))
    page.click("#live")
    assert page.locator("#video").is_visible()


def test_every_n_seconds_mode_captures_by_itself(page, service):
    page.goto(f"{service}/{QUERY}&every=1")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=30000)
    assert page.locator("#auto").is_checked() and page.locator("#every").input_value() == "1"
    page.wait_for_function("window.kiosk.answered >= 2", timeout=60000)
    page.uncheck("#auto")
    assert page.evaluate("window.kiosk.error") is None


def test_a_token_is_asked_once_and_sent(browser, model, tmp_path):
    with serving(model, token="kiosk-token") as (url, _):
        context = browser.new_context(viewport={"width": 1024, "height": 720})
        page = context.new_page()
        page.goto(f"{url}/{QUERY}")
        page.wait_for_selector("#token-dialog[open]", timeout=30000)
        page.fill("#token", "kiosk-token")
        page.click("#token-form button")
        page.wait_for_function("document.body.dataset.state === 'ready'", timeout=30000)
        assert page.evaluate("sessionStorage.getItem('florence2-serve-token')") == "kiosk-token"
        path = tmp_path / "boxed.png"
        make_image(BOXED, SIZE).save(path)
        assert answer_of(page, path)["record"]["task"] == "<OD>"
        assert not page.locator("#token-dialog").is_visible()
        page.reload()  # the same session: no second question
        page.wait_for_function("document.body.dataset.state === 'ready'", timeout=30000)
        assert not page.locator("#token-dialog").is_visible()
        context.close()


def test_an_error_is_a_short_message_that_goes_away(page, service, tmp_path):
    path = tmp_path / "note.png"
    path.write_bytes(b"not an image at all")
    open_page(page, service)
    page.set_input_files("#file", str(path))
    page.wait_for_function("window.kiosk.error", timeout=30000)
    toast = page.locator("#toast")
    assert toast.is_visible() and "\n" not in toast.inner_text()
    page.wait_for_selector("#toast", state="hidden", timeout=10000)
