"""Searchable PDFs: each page with an invisible text layer placed at each OCR quad box, as OCRmyPDF
does for Tesseract, so the text can be selected, searched and copied.

    image_pdf(image, answer, dpi)        -> bytes: a one-page PDF of an image and its text layer
    document_pdf(path, answers)          -> bytes: a PDF's own pages (kept as they are) and text layers

`answer` is the `<OCR_WITH_REGION>` answer (`{"quad_boxes": [[x0, y0, ..., x3, y3], ...], "labels"}`,
pixels of the image the model saw; quads run top-left, top-right, bottom-right, bottom-left).
Each line is one text object in render mode 3 (invisible), in a glyphless font (glyphless.py) with
Identity-H codes: a code is a UTF-16 unit of the text, ToUnicode maps it back, CIDToGIDMap maps it to
the empty glyph. Its font size is the box height and its horizontal scaling stretches it to the box
width, along the box's bottom edge, so a reader's character boxes fill the quad.

Written with pypdf (the `pdf` extra): BSD licensed, pure Python (no binaries on any platform),
maintained, and it can keep a source PDF's pages as they are and add a layer on top. pdfium's own
font loading cannot express this font (its ToUnicode comes from the font's cmap, empty here).
"""

from __future__ import annotations

import io
import math

from PIL import Image

from ..errors import ImageError
from .glyphless import ADVANCE, FONT_NAME, UNITS_PER_EM, glyphless_font
from .pdf import POINTS_PER_INCH

PRODUCER = "florence2-edge"
_FONT_KEY = "/FGlyphLess"
_TO_UNICODE = b"""/CIDInit /ProcSet findresource begin
12 dict begin
begincmap
/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def
/CMapName /Adobe-Identity-UCS def
/CMapType 2 def
1 begincodespacerange
<0000> <FFFF>
endcodespacerange
1 beginbfrange
<0000> <FFFF> <0000>
endbfrange
endcmap
CMapName currentdict /CMap defineresource pop
end
end
"""


def _pypdf():
    from .errors import JobError

    try:
        import pypdf
    except ImportError:
        raise JobError("--searchable-pdf needs pypdf: pip install 'florence2-edge[pdf]'") from None
    return pypdf


def lines(answer) -> list[tuple[list[float], str]]:
    """(quad, text) of each OCR line with text; labels the model left empty have nothing to find."""
    if not isinstance(answer, dict):
        return []
    pairs = zip(answer.get("quad_boxes", []), answer.get("labels", []))
    return [(quad, label.strip()) for quad, label in pairs if len(quad) == 8 and label.strip()]


def _utf16_units(text: str) -> str:
    # One code per UTF-16 unit; characters beyond the BMP (rare in OCR) become U+FFFD, since a
    # surrogate code would map to half a character.
    return "".join(c if ord(c) < 0x10000 else "\ufffd" for c in text).encode("utf-16-be").hex().upper()


def _placement(points: list[tuple[float, float]]) -> tuple[float, float, float, float, float, float]:
    """(x, y, cos, sin, width, height) of a quad's text, in page space (y up): the bottom edge from the
    bottom-left corner is the baseline; a degenerate quad falls back to its bounding box."""
    (x0, y0), _, (x2, y2), (x3, y3) = points
    width, height = math.hypot(x2 - x3, y2 - y3), math.hypot(x0 - x3, y0 - y3)
    if width >= 0.5 and height >= 0.5:
        return x3, y3, (x2 - x3) / width, (y2 - y3) / width, width, height
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), 1.0, 0.0, max(max(xs) - min(xs), 0.5), max(max(ys) - min(ys), 0.5)


def text_layer(answer, to_page) -> bytes:
    """The content stream of `answer`'s invisible text; `to_page(x, y)` maps image pixels to page points."""
    ops = ["BT", "3 Tr"]
    for quad, text in lines(answer):
        points = [to_page(quad[i], quad[i + 1]) for i in range(0, 8, 2)]
        x, y, cos, sin, width, height = _placement(points)
        units = len(_utf16_units(text)) // 4
        scale = 100 * width / (units * height * ADVANCE / UNITS_PER_EM)
        ops.append(f"{_FONT_KEY} {height:.3f} Tf {scale:.3f} Tz {cos:.6f} {sin:.6f} {-sin:.6f} {cos:.6f} "
                   f"{x:.3f} {y:.3f} Tm <{_utf16_units(text)}> Tj")
    ops.append("ET")
    return ("\n".join(ops) + "\n").encode("ascii")


def _stream(writer, data: bytes, compress: bool = True, **entries):
    from pypdf.generic import DecodedStreamObject, NameObject

    stream = DecodedStreamObject()
    stream.set_data(data)
    for key, value in entries.items():
        stream[NameObject(f"/{key}")] = value
    return writer._add_object(stream.flate_encode() if compress else stream)


def _font(writer):
    """The Type0 font (Identity-H, glyphless CIDFontType2 descendant), added once per document."""
    from pypdf.generic import ArrayObject, DictionaryObject, NameObject, NumberObject, TextStringObject

    def name(value: str):
        return NameObject(f"/{value}")

    descriptor = DictionaryObject({
        name("Type"): name("FontDescriptor"), name("FontName"): name(FONT_NAME), name("Flags"): NumberObject(5),
        name("FontBBox"): ArrayObject([NumberObject(v) for v in (0, 0, ADVANCE, UNITS_PER_EM)]),
        name("ItalicAngle"): NumberObject(0), name("Ascent"): NumberObject(UNITS_PER_EM),
        name("Descent"): NumberObject(0), name("CapHeight"): NumberObject(UNITS_PER_EM),
        name("StemV"): NumberObject(80), name("FontFile2"): _stream(writer, glyphless_font()),
    })
    cid_font = DictionaryObject({
        name("Type"): name("Font"), name("Subtype"): name("CIDFontType2"), name("BaseFont"): name(FONT_NAME),
        name("CIDSystemInfo"): DictionaryObject({name("Registry"): TextStringObject("Adobe"),
                                                 name("Ordering"): TextStringObject("Identity"),
                                                 name("Supplement"): NumberObject(0)}),
        name("FontDescriptor"): writer._add_object(descriptor), name("DW"): NumberObject(ADVANCE),
        # Every code to glyph 1, the empty one.
        name("CIDToGIDMap"): _stream(writer, b"\x00\x01" * 65536),
    })
    return writer._add_object(DictionaryObject({
        name("Type"): name("Font"), name("Subtype"): name("Type0"), name("BaseFont"): name(FONT_NAME),
        name("Encoding"): name("Identity-H"), name("DescendantFonts"): ArrayObject([writer._add_object(cid_font)]),
        name("ToUnicode"): _stream(writer, _TO_UNICODE),
    }))


def _resources(**groups):
    from pypdf.generic import DictionaryObject, NameObject

    return DictionaryObject({NameObject(f"/{group}"): DictionaryObject({NameObject(k): v for k, v in entries.items()})
                             for group, entries in groups.items()})


def _finish(writer) -> bytes:
    writer.add_metadata({"/Producer": PRODUCER})
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def image_pdf(image: Image.Image, answer, dpi: float) -> bytes:
    """A one-page PDF: `image` (JPEG, at its own dpi if it records one, else `dpi`) and its text layer."""
    pypdf = _pypdf()
    from pypdf.generic import NameObject, NumberObject

    dpi = _image_dpi(image, dpi)
    points = POINTS_PER_INCH / dpi
    width, height = image.width * points, image.height * points
    writer = pypdf.PdfWriter()
    page = writer.add_blank_page(width=width, height=height)
    gray = image.mode in ("1", "L")
    picture = image.convert("L" if gray else "RGB")
    jpeg = io.BytesIO()
    picture.save(jpeg, format="JPEG", quality=90)
    xobject = _stream(writer, jpeg.getvalue(), compress=False, Type=NameObject("/XObject"),
                      Subtype=NameObject("/Image"), Width=NumberObject(image.width), Height=NumberObject(image.height),
                      ColorSpace=NameObject("/DeviceGray" if gray else "/DeviceRGB"),
                      BitsPerComponent=NumberObject(8), Filter=NameObject("/DCTDecode"))
    page[NameObject("/Resources")] = _resources(XObject={"/Im0": xobject}, Font={_FONT_KEY: _font(writer)})
    drawing = f"q {width:.3f} 0 0 {height:.3f} 0 0 cm /Im0 Do Q\n".encode("ascii")
    layer = text_layer(answer, lambda x, y: (x * points, height - y * points))
    page[NameObject("/Contents")] = _stream(writer, drawing + layer)
    return _finish(writer)


def _image_dpi(image: Image.Image, default: float) -> float:
    dpi = image.info.get("dpi")
    try:
        value = float(dpi[0])
    except (TypeError, ValueError, IndexError):
        return default
    return value if 10 <= value <= 10000 else default  # 0, 1 or absurd values are metadata noise


def page_mapper(box: tuple[float, float, float, float], rotation: int, image_size: tuple[int, int]):
    """Pixel (x, y) of a page rendered with its /Rotate -> user-space point, for crop box
    (left, bottom, right, top); the render shows the crop box turned `rotation` degrees clockwise."""
    left, bottom, right, top = box
    rotation = rotation % 360 if rotation % 90 == 0 else 0  # readers ignore other values; so does pdfium
    turned = rotation % 180 == 90
    shown_w, shown_h = (top - bottom, right - left) if turned else (right - left, top - bottom)
    sx, sy = shown_w / image_size[0], shown_h / image_size[1]

    def to_page(x: float, y: float) -> tuple[float, float]:
        u, v = x * sx, y * sy  # points from the shown page's top-left corner, v downwards
        return {0: (left + u, top - v), 90: (left + v, bottom + u),
                180: (right - u, bottom + v), 270: (right - v, top - u)}[rotation]

    return to_page


def document_pdf(path: str, answers: dict[int, tuple[dict, tuple[int, int]]]) -> bytes:
    """`path`'s pages, each with the text layer of `answers[page] = (answer, image_size)` (1-based pages;
    a page without an answer is kept without a layer)."""
    pypdf = _pypdf()
    try:
        return _overlay(pypdf, path, answers)
    except pypdf.errors.PyPdfError as err:  # pdfium rendered it, but pypdf cannot rewrite it
        raise ImageError(f"cannot write a searchable copy of {path!r}: {' '.join(str(err).split())}") from None


def _overlay(pypdf, path: str, answers: dict) -> bytes:
    from pypdf.generic import NameObject

    writer = pypdf.PdfWriter(clone_from=path)
    font = _font(writer)
    for number, page in enumerate(writer.pages, start=1):
        if number not in answers or not lines(answers[number][0]):
            continue
        answer, image_size = answers[number]
        crop = page.cropbox
        box = (float(crop.left), float(crop.bottom), float(crop.right), float(crop.top))
        layer = pypdf.PageObject.create_blank_page(writer, width=box[2] - box[0], height=box[3] - box[1])
        layer[NameObject("/Resources")] = _resources(Font={_FONT_KEY: font})
        layer[NameObject("/Contents")] = _stream(writer, text_layer(answer, page_mapper(box, page.rotation, image_size)))
        page.merge_page(layer)
    for page in writer.pages:
        page.compress_content_streams()
    return _finish(writer)
