"""Searchable PDFs: the invisible text layer read back by pdfium finds every OCR line at its box, on an
image page and on a source PDF's own pages (rotated too), and changes no rendered pixel."""

from __future__ import annotations

import ctypes
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image, ImageFont

from runtime.batch.glyphless import glyphless_font
from runtime.batch.searchable import document_pdf, image_pdf

pypdf = pytest.importorskip("pypdf")
pdfium = pytest.importorskip("pypdfium2")

ROOT = Path(__file__).resolve().parents[1]
DPI = 200
# Axis-aligned, rotated (a vertical line, read bottom to top) and Unicode lines, in image pixels.
ANSWER = {"quad_boxes": [[40, 30, 360, 30, 360, 70, 40, 70],
                         [420, 560, 420, 160, 470, 160, 470, 560],
                         [60, 400, 380, 400, 380, 450, 60, 450],
                         [10, 10, 10, 10, 10, 10, 10, 10]],
          "labels": ["Invoice 2024-11", "vertical line", "Größe 東京 déjà", "   "]}
FOUND = ANSWER["labels"][:3]  # the blank label has nothing to find


def device_to_page(page, size: tuple[int, int], x: float, y: float) -> tuple[float, float]:
    """pdfium's own mapping of a rendered pixel to page space: the oracle for ours."""
    px, py = ctypes.c_double(), ctypes.c_double()
    pdfium.raw.FPDF_DeviceToPage(page.raw, 0, 0, size[0], size[1], 0, int(x), int(y), px, py)
    return px.value, py.value


def text_at(page, size, quad) -> str:
    """The text pdfium finds inside a quad's bounding box (pixels of the page rendered at `size`)."""
    points = [device_to_page(page, size, quad[i], quad[i + 1]) for i in range(0, 8, 2)]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    textpage = page.get_textpage()
    return textpage.get_text_bounded(min(xs) - 1, min(ys) - 1, max(xs) + 1, max(ys) + 1)


def test_glyphless_font_is_a_font():
    font = ImageFont.truetype(io.BytesIO(glyphless_font()), 40)  # FreeType parses it
    assert font.getname() == ("GlyphLessFont", "Regular")
    assert font.getlength("abcd") == 4 * 20  # every glyph half an em wide


def smooth_image(size: tuple[int, int]) -> Image.Image:
    """Red grows to the right, green downwards: JPEG keeps it close, and a flipped page would show."""
    x = np.linspace(0, 255, size[0])[None, :].repeat(size[1], 0)
    y = np.linspace(0, 255, size[1])[:, None].repeat(size[0], 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], axis=2).astype(np.uint8))


def test_image_page_text_is_found_at_each_box():
    image = smooth_image((800, 600))
    data = image_pdf(image, ANSWER, DPI)
    document = pdfium.PdfDocument(data)
    assert len(document) == 1
    page = document[0]
    assert page.get_size() == pytest.approx((800 * 72 / DPI, 600 * 72 / DPI))
    rendered = page.render(scale=DPI / 72).to_pil()
    assert rendered.size == image.size
    # The page shows the image (JPEG at quality 90: close, not equal).
    assert np.abs(np.asarray(rendered, float) - np.asarray(image, float)).mean() < 2
    for quad, label in zip(ANSWER["quad_boxes"], FOUND):
        assert text_at(page, rendered.size, quad) == label
    assert page.get_textpage().get_text_range().split("\r\n") == FOUND
    assert pypdf.PdfReader(io.BytesIO(data)).metadata["/Producer"] == "florence2-edge"


@pytest.mark.parametrize("rotation", [0, 90, 270])
def test_source_pdf_pages_keep_their_content_and_get_the_layer(tmp_path, rotation):
    source = tmp_path / "scan.pdf"
    pages = [make_image(7, (400, 300)), make_image(8, (300, 400))]
    pages[0].save(source, save_all=True, append_images=pages[1:], resolution=100)
    if rotation:
        writer = pypdf.PdfWriter(clone_from=source)
        writer.pages[0].rotate(rotation)
        writer.write(source)
    before = pdfium.PdfDocument(source)
    images = [before[i].render(scale=DPI / 72).to_pil() for i in range(2)]
    quads = {1: {"quad_boxes": [[20, 20, 300, 20, 300, 60, 20, 60]], "labels": ["first page"]},
             2: {"quad_boxes": [[50, 500, 500, 500, 500, 560, 50, 560]], "labels": ["second page"]}}
    data = document_pdf(str(source), {n: (answer, images[n - 1].size) for n, answer in quads.items()})
    after = pdfium.PdfDocument(data)
    assert len(after) == 2
    for index in range(2):
        page = after[index]
        rendered = page.render(scale=DPI / 72).to_pil()
        assert rendered.tobytes() == images[index].tobytes()  # invisible: not one pixel changes
        answer = quads[index + 1]
        assert text_at(page, rendered.size, answer["quad_boxes"][0]) == answer["labels"][0]


def test_cli_writes_searchable_pdfs(onnx_artifact, tmp_path):
    make_image(13, (320, 240)).save(tmp_path / "a.png")
    pages = [make_image(i, (150, 200)) for i in range(3)]
    pages[0].save(tmp_path / "doc.pdf", save_all=True, append_images=pages[1:], resolution=100)
    out = tmp_path / "searchable"
    proc = subprocess.run([sys.executable, "-m", "runtime", "--model", onnx_artifact, tmp_path / "a.png",
                           tmp_path / "doc.pdf", "--task", "<OCR_WITH_REGION>", "--max-new-tokens", "4",
                           "--searchable-pdf", out, "-q"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    files = {Path(r["image"]).name: r.get("files", []) for r in records}
    assert files == {"a.png": [str(out / "a.png.pdf")], "doc.pdf#page=1": [], "doc.pdf#page=2": [],
                     "doc.pdf#page=3": [str(out / "doc.pdf")]}  # the PDF is written with its last page
    assert len(pdfium.PdfDocument(out / "a.png.pdf")) == 1 and len(pdfium.PdfDocument(out / "doc.pdf")) == 3
    source, written = pdfium.PdfDocument(tmp_path / "doc.pdf"), pdfium.PdfDocument(out / "doc.pdf")
    for index in range(3):
        assert written[index].render(scale=1).to_pil().tobytes() == source[index].render(scale=1).to_pil().tobytes()
    refused = subprocess.run([sys.executable, "-m", "runtime", "--model", onnx_artifact, tmp_path / "a.png",
                              "--task", "<OCR>", "--searchable-pdf", out], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "<OCR_WITH_REGION>" in refused.stderr
