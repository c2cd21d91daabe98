"""Draw a task answer onto a copy of its image: boxes, quad boxes, polygons and their labels.

`annotate(image, answer)` takes the value `post_process_generation` returns under the task key:

    str                                              a caption / OCR text: drawn in a strip at the top
    {"bboxes": [[x0, y0, x1, y1], ...], "labels"}    <OD>, <DENSE_REGION_CAPTION>, grounding, proposals
    {"quad_boxes": [[x0, y0, ..., x3, y3], ...], "labels"}                          <OCR_WITH_REGION>
    {"polygons": [[[x0, y0, x1, y1, ...], ...], ...], "labels"}   one list of polygons per instance
    {"bboxes", "bboxes_labels", "polygons", "polygons_labels"}             <OPEN_VOCABULARY_DETECTION>

Coordinates are pixels of the original image. A model can emit anything (inverted or out-of-range
boxes, polygons of one or two points), so every shape is normalised or skipped, never an error.
"""

from __future__ import annotations

import colorsys
import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

_FILL_ALPHA = 70  # polygon fill: light enough to see the object through it
_GOLDEN = 0.618033988749895  # hue step that keeps successive label colours far apart
_SAMPLE = "The quick brown fox jumps over the lazy dog 0123"


def annotate(image: Image.Image, answer) -> Image.Image:
    """A new RGB image of the same size with `answer` drawn on it; `image` is left untouched."""
    canvas = image.convert("RGB")  # always a copy, and drawable whatever the input mode
    if isinstance(answer, str):
        _draw_caption(canvas, answer)
        return canvas
    if not isinstance(answer, dict):
        raise TypeError(f"expected a task answer (str or dict); got {type(answer).__name__}")
    painter = _Painter(canvas)
    # Open-vocabulary detection keeps separate label lists; every other task has one "labels".
    box_labels = answer.get("bboxes_labels", answer.get("labels", []))
    polygon_labels = answer.get("polygons_labels", answer.get("labels", []))
    for polygons, label in _paired(answer.get("polygons", []), polygon_labels):
        painter.polygons(polygons, label)
    for quad, label in _paired(answer.get("quad_boxes", []), answer.get("labels", [])):
        painter.quad(quad, label)
    for box, label in _paired(answer.get("bboxes", []), box_labels):
        painter.box(box, label)
    return canvas


def label_colour(index: int) -> tuple[int, int, int]:
    """The colour of the `index`-th distinct label: saturated, bright, hues spread by the golden ratio."""
    red, green, blue = colorsys.hsv_to_rgb((index * _GOLDEN) % 1.0, 0.85, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def _paired(shapes: Sequence, labels: Sequence) -> list[tuple]:
    # A label list shorter than its shapes (never from the parser, possible from a hand-made answer)
    # leaves the extra shapes unlabelled rather than dropping them.
    return [(shape, labels[i] if i < len(labels) else "") for i, shape in enumerate(shapes)]


def _font(image: Image.Image) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(10, min(image.size) // 40)  # readable on a phone photo, not huge on a thumbnail
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        # Pillow < 10.1 has no size argument; without FreeType only the fixed bitmap font exists.
        return ImageFont.load_default()


def _safe_text(text: str, font) -> str:
    # The bitmap fallback font encodes to latin-1 and raises on anything else.
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


class _Painter:
    """Draws shapes and labels on one canvas, one colour per distinct label."""

    def __init__(self, canvas: Image.Image):
        self.canvas = canvas
        self.draw = ImageDraw.Draw(canvas, "RGBA")  # RGBA mode blends translucent fills onto RGB
        self.font = _font(canvas)
        self.width = max(2, min(canvas.size) // 200)
        self.colours: dict[str, tuple[int, int, int]] = {}

    def colour(self, label: str) -> tuple[int, int, int]:
        return self.colours.setdefault(label, label_colour(len(self.colours)))

    def _clip(self, x, y) -> tuple[int, int]:
        # Far-off coordinates are useless to draw and can overflow PIL's C ints.
        width, height = self.canvas.size
        return min(max(int(x), -1), width), min(max(int(y), -1), height)

    def _points(self, flat: Sequence) -> list[tuple[int, int]]:
        return [self._clip(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]

    def box(self, box: Sequence, label: str) -> None:
        if len(box) != 4:
            return
        (x0, y0), (x1, y1) = self._points(box)
        # Decoded boxes may come inverted (x1 < x0); PIL refuses those.
        left, top, right, bottom = min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)
        colour = self.colour(label)
        self.draw.rectangle([left, top, right, bottom], outline=colour, width=self.width)
        self._label(label, (left, top), colour)

    def quad(self, quad: Sequence, label: str) -> None:
        points = self._points(quad)
        if len(points) < 3:
            return
        colour = self.colour(label)
        self.draw.polygon(points, outline=colour, width=self.width)
        self._label(label, min(points, key=lambda p: (p[1], p[0])), colour)

    def polygons(self, polygons: Sequence, label: str) -> None:
        if polygons and isinstance(polygons[0], (int, float)):
            polygons = [polygons]  # one flat polygon instead of a list of them: take it as meant
        colour = self.colour(label)
        drawn = [points for points in map(self._points, polygons) if len(points) >= 3]
        for points in drawn:
            self.draw.polygon(points, fill=colour + (_FILL_ALPHA,), outline=colour, width=self.width)
        if drawn:
            self._label(label, min((p for points in drawn for p in points), key=lambda p: (p[1], p[0])), colour)

    def _label(self, label: str, anchor: tuple[int, int], colour: tuple[int, int, int]) -> None:
        """`label` on a filled tag above `anchor`, or just inside it when there is no room above."""
        if not label:
            return
        text = _safe_text(label, self.font)
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=self.font)
        tag_w, tag_h = right - left + 4, bottom - top + 4
        x = min(max(anchor[0], 0), max(self.canvas.width - tag_w, 0))
        y = anchor[1] - tag_h if anchor[1] - tag_h >= 0 else max(anchor[1], 0)
        self.draw.rectangle([x, y, x + tag_w, y + tag_h], fill=colour)
        # Dark text on light tags, light on dark: ITU-R BT.601 luma.
        luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
        self.draw.text((x + 2 - left, y + 2 - top), text, fill=ink, font=self.font)


def _draw_caption(canvas: Image.Image, text: str) -> None:
    """`text` wrapped to the image width on a translucent strip at the top, at most a third of the height."""
    text = " ".join(text.split())
    if not text:
        return
    draw = ImageDraw.Draw(canvas, "RGBA")
    font = _font(canvas)
    text = _safe_text(text, font)
    # textwrap counts characters: wrap at the average width of mixed-case text, good enough here.
    char_w = max(1.0, draw.textlength(_SAMPLE, font=font) / len(_SAMPLE))
    line_h = draw.textbbox((0, 0), "Hg", font=font)[3] + 2
    lines = textwrap.wrap(text, width=max(1, int((canvas.width - 8) / char_w)))
    lines = lines[: max(1, canvas.height // 3 // line_h)]
    draw.rectangle([0, 0, canvas.width, len(lines) * line_h + 6], fill=(0, 0, 0, 160))
    for row, line in enumerate(lines):
        draw.text((4, 3 + row * line_h), line, fill=(255, 255, 255), font=font)
