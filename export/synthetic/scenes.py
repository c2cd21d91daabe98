"""Synthetic scenes with exact ground truth: coloured shapes and rendered text, deterministic per seed.

    scene = make_scene(seed=0, index=7, level=3, size=(192, 192))
    scene.image                       -> PIL image
    scene.examples()                  -> [Example(task, text, target), ...]  (targets as Florence-2 writes them)
    scene.shapes, scene.lines         -> the ground truth in pixels

Torch-free (numpy + Pillow only), so the scorer and the tests run without the export extras.
Pixel coordinates are continuous: pixel i covers [i, i + 1). A coordinate v on an axis of L pixels is
written as location bin floor(v / (L / 1000)), clamped to 0..999, exactly as transformers'
`Florence2PostProcessor.quantize` does; the parser reads bin k back as int((k + 0.5) * L / 1000).

Canonical orders, so that one answer is right and exact match is learnable: shapes left to right
(their centres are at least `MIN_GAP` of the width apart), text lines top to bottom (they never
share a row), polygon vertices clockwise from the top. Within a scene no two shapes share both
colour and kind, so "red circle" names one shape, and a scene is redrawn while any target repeats a
3-gram of tokens (Florence-2 generates with no_repeat_ngram_size=3, which could never write it).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
Point = tuple[float, float]

SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 80, 215), "yellow": (240, 210, 40),
    "orange": (245, 135, 25), "purple": (135, 55, 175), "pink": (245, 135, 195), "brown": (125, 80, 40),
}
# Neutral backgrounds; a shape colour is used on one only when they are far apart (see _COLOUR_GAP).
BACKGROUNDS = ((245, 245, 245), (205, 205, 205), (128, 128, 128), (60, 60, 60), (15, 15, 15),
               (235, 222, 195), (205, 225, 240), (30, 40, 70))
CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"  # every character a line can hold
WORDS = (
    "OPEN", "STOP", "EXIT", "SALE", "PUSH", "PULL", "HOT", "COLD", "WEST", "EAST", "NORTH", "SOUTH",
    "CAFE", "BAR", "HOTEL", "TAXI", "BUS", "PARK", "ZONE", "GATE", "DOOR", "ROOM", "FLOOR", "LIFT",
    "MENU", "TEA", "MILK", "BREAD", "FISH", "RICE", "SOUP", "CAKE", "WINE", "BEER", "JUICE", "WATER",
    "FIRE", "POLICE", "BANK", "SHOP", "BOOK", "MAP", "KEY", "BOX", "CAR", "BIKE", "TRAIN", "SHIP",
    "RED", "BLUE", "GREEN", "GOLD", "BLACK", "WHITE", "FREE", "NEW", "OLD", "BIG", "SMALL", "FAST",
    "SLOW", "LEFT", "RIGHT", "UP", "DOWN", "IN", "OUT", "ON", "OFF", "YES", "NO", "GO", "WAIT",
    "HELP", "INFO", "CASH", "CARD", "PAY", "TOTAL", "PRICE", "DATE", "TIME", "DAY", "WEEK", "YEAR",
    "MONDAY", "FRIDAY", "SUNDAY", "JUNE", "MAY", "CITY", "ROAD", "STREET", "HOUSE", "HOME", "WORK",
    "SCHOOL", "MUSIC", "NEWS", "RADIO", "PHOTO", "VIDEO", "GAME", "PLAY", "LOVE", "HELLO", "THANKS",
    "WELCOME", "DANGER", "CAUTION", "QUIET", "PRIVATE", "TICKET", "ENTRY", "LIGHT", "POWER", "ZERO",
    "QUIZ", "JAZZ", "FOX", "JUMP", "VIEW", "KING", "QUEEN", "WAX", "YARD", "VOTE", "EXTRA", "MAX",
)
TASK_ORDER = ("<CAPTION>", "<OD>", "<OCR>", "<OCR_WITH_REGION>", "<CAPTION_TO_PHRASE_GROUNDING>",
              "<REFERRING_EXPRESSION_SEGMENTATION>")
MIN_GAP = 0.06  # of the width, between shape centres: left-to-right order is never a coin toss
_COLOUR_GAP = 110.0  # RGB distance between a shape (or text) colour and its background
_BINS = 1000
_ATTEMPTS = 200  # placement tries per item before the item is dropped


@dataclass(frozen=True)
class Level:
    """One stage of the curriculum: how many things a scene holds and how large they are.
    Sizes are fractions of the image's shorter side."""

    name: str
    shapes: tuple[int, int]  # min, max per scene
    shape_size: tuple[float, float]  # bounding-box side
    lines: tuple[int, int]  # text lines per scene
    words: tuple[int, int]  # items (words or numbers) per line
    font: tuple[float, float]  # font size
    number_rate: float = 0.25  # share of items that are numbers
    texture_rate: float = 0.5  # share of scenes with a gradient background and pixel noise


LEVELS: dict[int, Level] = {
    1: Level("one", shapes=(1, 1), shape_size=(0.35, 0.6), lines=(1, 1), words=(1, 1), font=(0.11, 0.15)),
    2: Level("few", shapes=(1, 3), shape_size=(0.22, 0.45), lines=(0, 2), words=(1, 2), font=(0.095, 0.13)),
    3: Level("many", shapes=(1, 4), shape_size=(0.16, 0.4), lines=(0, 2), words=(1, 3), font=(0.085, 0.12)),
}


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    colour: str  # one of COLOURS
    box: Box
    polygon: tuple[Point, ...]  # clockwise from the top; the drawn outline (a circle's is 16 points on it)

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Line:
    text: str
    box: Box  # the ink box Pillow reports for the text
    font_size: int  # pixels, of scenes.font()

    def char_centres(self) -> list[tuple[str, Point]]:
        """Each non-space character with the centre of its advance box: where it is drawn."""
        face = font(self.font_size)
        origin = self.box[0] - face.getbbox(self.text)[0]
        middle = (self.box[1] + self.box[3]) / 2
        return [(c, (origin + (face.getlength(self.text[:i]) + face.getlength(self.text[: i + 1])) / 2, middle))
                for i, c in enumerate(self.text) if c != " "]

    @property
    def quad(self) -> tuple[Point, Point, Point, Point]:
        x0, y0, x1, y1 = self.box
        return (x0, y0), (x1, y0), (x1, y1), (x0, y1)


@dataclass(frozen=True)
class Example:
    task: str  # a task token, e.g. "<OD>"
    text: str | None  # the task's text input (grounding, segmentation), else None
    target: str  # the answer as Florence-2 writes it, without <s>/</s>


@dataclass(frozen=True)
class Scene:
    seed: int
    index: int
    level: int
    size: tuple[int, int]  # width, height
    shapes: tuple[Shape, ...]  # left to right
    lines: tuple[Line, ...]  # top to bottom
    referent: int  # the shape the scorer asks grounding and segmentation about
    image: Image.Image = field(compare=False, repr=False)

    def examples(self, referent: int | None = None) -> list[Example]:
        """One example per task in TASK_ORDER; grounding and segmentation ask about shape `referent`
        (default: the scene's own)."""
        shape = self.shapes[self.referent if referent is None else referent]
        width, height = self.size
        return [
            Example("<CAPTION>", None, caption(self.shapes)),
            Example("<OD>", None, "".join(s.kind + box_tokens(s.box, self.size) for s in self.shapes)),
            Example("<OCR>", None, " ".join(line.text for line in self.lines)),
            Example("<OCR_WITH_REGION>", None,
                    "".join(line.text + point_tokens(line.quad, self.size) for line in self.lines)),
            Example("<CAPTION_TO_PHRASE_GROUNDING>", shape.phrase, shape.phrase + box_tokens(shape.box, self.size)),
            Example("<REFERRING_EXPRESSION_SEGMENTATION>", shape.phrase, point_tokens(shape.polygon, self.size)),
        ]


def make_scene(seed: int, index: int, level: int = 3, size: tuple[int, int] = (192, 192)) -> Scene:
    """Scene `index` of the stream `seed` at curriculum `level`, rendered at `size` (width, height)."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {sorted(LEVELS)}")
    rng = np.random.default_rng([seed, index, level])
    spec = LEVELS[level]
    while True:
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        shapes = _place_shapes(rng, spec, size, background)
        lines = _place_lines(rng, spec, size, [s.box for s in shapes])
        if not shapes:
            continue
        scene = Scene(seed, index, level, size, tuple(sorted(shapes, key=_centre_x)),
                      tuple(sorted(lines, key=lambda line: line.box[1])), int(rng.integers(len(shapes))),
                      image=None)
        if all(not repeats_ngram(e.target) for r in range(len(shapes)) for e in scene.examples(r)):
            break
    image = _render(rng, spec, size, background, scene.shapes, lines)
    return Scene(scene.seed, index, level, size, scene.shapes, scene.lines, scene.referent, image=image)


def caption(shapes: tuple[Shape, ...]) -> str:
    """"A red circle.", "A red circle and an orange star.", "A red circle, a blue star and a green square." """
    names = [("an " if s.colour[0] in "aeiou" else "a ") + s.phrase for s in shapes]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return text[0].upper() + text[1:] + "."


def quantize(value: float, length: int) -> int:
    """The location bin of `value` on an axis of `length` pixels (as Florence2PostProcessor.quantize)."""
    return int(min(max(math.floor(value / (length / _BINS)), 0), _BINS - 1))


def box_tokens(box: Box, size: tuple[int, int]) -> str:
    x0, y0, x1, y1 = box
    return point_tokens(((x0, y0), (x1, y1)), size)


def point_tokens(points, size: tuple[int, int]) -> str:
    width, height = size
    return "".join(f"<loc_{quantize(x, width)}><loc_{quantize(y, height)}>" for x, y in points)


# Byte-level BPE never merges across these pieces; a word is one token in the synthetic tokenizer
# (train.py checks it), digits are taken one by one: the finest split BPE could make of a number.
_PIECES = re.compile(r"<[^>]+>| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9<]+|\s+")


def repeats_ngram(target: str, n: int = 3) -> bool:
    """Whether the generated sequence "</s><s>target</s>" would repeat an n-gram of tokens."""
    pieces = ["</s>", "<s>"] + _PIECES.findall(target) + ["</s>"]
    grams = [tuple(pieces[i : i + n]) for i in range(len(pieces) - n + 1)]
    return len(grams) != len(set(grams))


def _centre_x(shape: Shape) -> float:
    return (shape.box[0] + shape.box[2]) / 2


def _colour_distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _place_shapes(rng, spec: Level, size, background) -> list[Shape]:
    width, height = size
    side = min(size)
    palette = [name for name, rgb in COLOURS.items() if _colour_distance(rgb, background) > _COLOUR_GAP]
    shapes: list[Shape] = []
    for _ in range(int(rng.integers(spec.shapes[0], spec.shapes[1] + 1))):
        kind, colour = SHAPES[int(rng.integers(len(SHAPES)))], palette[int(rng.integers(len(palette)))]
        if any(s.kind == kind and s.colour == colour for s in shapes):
            continue
        for _ in range(_ATTEMPTS):
            radius = rng.uniform(*spec.shape_size) * side / 2
            centre = (rng.uniform(radius + 1, width - radius - 1), rng.uniform(radius + 1, height - radius - 1))
            polygon = outline(kind, centre, radius)
            box = _bounds(polygon)
            if all(not _overlap(box, s.box, 3) and abs(_centre_x(s) - centre[0]) >= MIN_GAP * width
                   for s in shapes):
                shapes.append(Shape(kind, colour, box, polygon))
                break
    return shapes


def outline(kind: str, centre: Point, radius: float) -> tuple[Point, ...]:
    """The shape's vertices, clockwise on screen (y points down) from the top."""
    cx, cy = centre
    if kind == "square":
        return (cx - radius, cy - radius), (cx + radius, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)
    if kind == "triangle":
        return (cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)
    count, radii = {"circle": (16, (1.0,)), "diamond": (4, (1.0,)), "hexagon": (6, (1.0,)),
                    "star": (10, (1.0, 0.45))}[kind]
    points = []
    for k in range(count):
        angle = -math.pi / 2 + 2 * math.pi * k / count
        r = radius * radii[k % len(radii)]
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return tuple(points)


def _bounds(points) -> Box:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _overlap(a: Box, b: Box, margin: float) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


@functools.lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font (Aileron Regular, FreeType) at `size` pixels."""
    return ImageFont.load_default(size)


def _line_text(rng, spec: Level) -> str:
    items = []
    for _ in range(int(rng.integers(spec.words[0], spec.words[1] + 1))):
        if rng.random() < spec.number_rate:
            items.append(str(int(rng.integers(0, 10 ** int(rng.integers(1, 5))))))
        else:
            items.append(WORDS[int(rng.integers(len(WORDS)))])
    return " ".join(items)


def _place_lines(rng, spec: Level, size, taken: list[Box]) -> list[Line]:
    width, height = size
    lines: list[Line] = []
    for _ in range(int(rng.integers(spec.lines[0], spec.lines[1] + 1))):
        text = _line_text(rng, spec)
        for _ in range(_ATTEMPTS):
            px = max(8, int(round(rng.uniform(*spec.font) * min(size))))
            left, top, right, bottom = font(px).getbbox(text)
            if right - left > width - 4:
                text = text.rsplit(" ", 1)[0] if " " in text else text
                continue
            x = rng.uniform(2 - left, width - 2 - right)
            y = rng.uniform(2 - top, height - 2 - bottom)
            box = (x + left, y + top, x + right, y + bottom)
            box = tuple(float(round(v)) for v in box)  # text is drawn at whole pixels
            rows_free = all(box[3] + 2 <= l.box[1] or l.box[3] + 2 <= box[1] for l in lines)
            if rows_free and all(not _overlap(box, other, 3) for other in taken):
                lines.append(Line(text, box, px))
                taken = taken + [box]
                break
    return lines


def _render(rng, spec: Level, size, background, shapes, lines) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        rgb = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[shape.colour])
        if shape.kind == "circle":
            draw.ellipse(shape.box, fill=rgb)
        else:
            draw.polygon(shape.polygon, fill=rgb)
    ink = [c for c in [(10, 10, 10), (250, 250, 250), *COLOURS.values()] if _colour_distance(c, background) > 1.6 * _COLOUR_GAP]
    for line in lines:  # in placement order: the colour draws follow it
        face = font(line.font_size)
        left, top, _, _ = face.getbbox(line.text)
        colour = ink[int(rng.integers(len(ink)))]
        draw.text((line.box[0] - left, line.box[1] - top), line.text, font=face, fill=colour)
    if rng.random() < spec.texture_rate:
        image = _texture(rng, image)
    return image


def _texture(rng, image: Image.Image) -> Image.Image:
    """A linear brightness ramp and pixel noise over the whole picture: colour names stay true."""
    pixels = np.asarray(image, dtype=np.float32)
    height, width = pixels.shape[:2]
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (math.cos(angle) * (xs / width - 0.5) + math.sin(angle) * (ys / height - 0.5)) * rng.uniform(0, 50)
    noise = rng.normal(0, rng.uniform(0, 7), pixels.shape).astype(np.float32)
    pixels = pixels + ramp[..., None] + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
