"""A glyphless TrueType font, built in code: the font of a searchable PDF's invisible text layer.

The layer's text is never drawn (text render mode 3), so its font needs no outlines, only metrics a
reader can place characters with: every glyph is empty, 500 units wide on a 1000-unit em, ascent
1000, descent 0 (a character's box is then exactly [baseline, baseline + font size]). The PDF maps
every character code to glyph 1 (CIDToGIDMap) and back to Unicode (ToUnicode), as the glyphless font
that Tesseract and OCRmyPDF embed does; the standard 14 PDF fonts would cover WinAnsi only.

Built here rather than shipped as a binary so that every byte of it can be read in this file.
"""

from __future__ import annotations

import functools
import struct

UNITS_PER_EM = 1000
ADVANCE = 500  # every glyph's advance width, in font units
FONT_NAME = "GlyphLessFont"


# Glyph 1: one rectangle the size of the advance and the em (four on-curve points, no instructions).
# It is never painted (render mode 3), but readers size a character's box from its glyph's bounds,
# and pdfium drops rotated characters whose glyph has none.
_BOX_GLYPH = (struct.pack(">hhhhhHH", 1, 0, 0, ADVANCE, UNITS_PER_EM, 3, 0) + b"\x01" * 4
              + struct.pack(">4h", 0, ADVANCE, 0, -ADVANCE) + struct.pack(">4h", 0, 0, UNITS_PER_EM, 0) + b"\0\0")


def _checksum(data: bytes) -> int:
    padded = data + b"\0" * (-len(data) % 4)
    return sum(struct.unpack(f">{len(padded) // 4}I", padded)) & 0xFFFFFFFF


def _name_table() -> bytes:
    # (nameID, text) for Windows Unicode BMP, US English: family, subfamily, full name, PostScript name.
    names = [(1, FONT_NAME), (2, "Regular"), (4, FONT_NAME), (6, FONT_NAME)]
    records, strings = b"", b""
    for name_id, text in names:
        encoded = text.encode("utf-16-be")
        records += struct.pack(">6H", 3, 1, 0x409, name_id, len(encoded), len(strings))
        strings += encoded
    return struct.pack(">3H", 0, len(names), 6 + 12 * len(names)) + records + strings


def _cmap_table() -> bytes:
    # Format 4 with one real segment (space -> glyph 1) and the required 0xFFFF terminator.
    segments = [(0x20, 0x20, 1 - 0x20), (0xFFFF, 0xFFFF, 1)]
    count = len(segments)
    body = struct.pack(f">{count}H", *(end for _, end, _ in segments)) + b"\0\0"
    body += struct.pack(f">{count}H", *(start for start, _, _ in segments))
    body += struct.pack(f">{count}h", *(delta if delta < 0x8000 else delta - 0x10000 for _, _, delta in segments))
    body += struct.pack(f">{count}H", *([0] * count))
    power = 1 << (count.bit_length() - 1)
    subtable = struct.pack(">7H", 4, 14 + len(body), 0, 2 * count, 2 * power, power.bit_length() - 1,
                           2 * count - 2 * power) + body
    return struct.pack(">2H", 0, 1) + struct.pack(">2HI", 3, 1, 12) + subtable


def _tables() -> dict[bytes, bytes]:
    glyphs = 2  # .notdef and the one empty glyph every character maps to
    return {
        b"OS/2": struct.pack(">hHHHH10hh10s4I4sHHHhhhHH2I", 1, ADVANCE, 400, 5, 0, *([0] * 10), 0, b"\0" * 10,
                             0, 0, 0, 0, b"NONE", 0x40, 0x20, 0xFFFF, UNITS_PER_EM, 0, 0, UNITS_PER_EM, 0, 1, 0),
        b"cmap": _cmap_table(),
        b"glyf": _BOX_GLYPH,
        b"head": struct.pack(">IIIIHHqqhhhhHHhhh", 0x00010000, 0x00010000, 0, 0x5F0F3CF5, 0x000B, UNITS_PER_EM,
                             0, 0, 0, 0, ADVANCE, UNITS_PER_EM, 0, 3, 2, 0, 0),
        b"hhea": struct.pack(">IhhhHhhhhhhhhhhhH", 0x00010000, UNITS_PER_EM, 0, 0, ADVANCE, 0, 0, ADVANCE,
                             1, 0, 0, 0, 0, 0, 0, 0, glyphs),
        b"hmtx": struct.pack(">HhHh", ADVANCE, 0, ADVANCE, 0),
        b"loca": struct.pack(">3H", 0, 0, len(_BOX_GLYPH) // 2),  # short offsets: bytes / 2
        b"maxp": struct.pack(">I14H", 0x00010000, glyphs, 4, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0),
        b"name": _name_table(),
        b"post": struct.pack(">IIhhIIIII", 0x00030000, 0, -100, 50, 0, 0, 0, 0, 0),
    }


@functools.cache
def glyphless_font() -> bytes:
    """The font file (sfnt, TrueType outlines), with valid table checksums and checkSumAdjustment."""
    tables = _tables()
    count = len(tables)
    power = 1 << (count.bit_length() - 1)
    header = struct.pack(">IHHHH", 0x00010000, count, power * 16, power.bit_length() - 1, count * 16 - power * 16)
    offset = len(header) + 16 * count
    directory, body = b"", b""
    for tag in sorted(tables):
        data = tables[tag]
        directory += struct.pack(">4sIII", tag, _checksum(data), offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    font = bytearray(header + directory + body)
    # head.checkSumAdjustment (offset 8 in head) makes the whole file sum to 0xB1B0AFBA.
    head_offset = struct.unpack(">I", font[len(header) + 16 * sorted(tables).index(b"head") + 8:][:4])[0]
    struct.pack_into(">I", font, head_offset + 8, (0xB1B0AFBA - _checksum(bytes(font))) & 0xFFFFFFFF)
    return bytes(font)
