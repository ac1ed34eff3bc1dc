"""Render a terminal capture with SGR colour codes (`tmux capture-pane -e -p`) to a PNG.

    python ansi2png.py capture.ansi out.png [--cols 88] [--font-size 15]

Needs Pillow and a monospace TTF (DejaVu Sans Mono by default: Debian's fonts-dejavu-core).
Handles what tmux emits: 16/256/24-bit colours, bold, italic, underline, reverse.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
BG = (30, 31, 41)
FG = (214, 214, 214)
# a dark palette for the 16 base colours
BASE16 = [
    (40, 42, 54), (255, 85, 85), (80, 250, 123), (241, 250, 140),
    (98, 114, 164), (255, 121, 198), (139, 233, 253), (214, 214, 214),
    (98, 104, 128), (255, 110, 110), (105, 255, 148), (255, 255, 165),
    (130, 170, 255), (255, 146, 223), (164, 255, 255), (255, 255, 255),
]
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def color256(n: int) -> tuple[int, int, int]:
    if n < 16:
        return BASE16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return steps[n // 36], steps[(n // 6) % 6], steps[n % 6]
    v = 8 + (n - 232) * 10
    return v, v, v


class Style:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.fg: tuple[int, int, int] | None = None
        self.bg: tuple[int, int, int] | None = None
        self.bold = self.italic = self.underline = self.reverse = False

    def copy(self) -> "Style":
        s = Style()
        s.__dict__.update(self.__dict__)
        return s

    def apply(self, params: str) -> None:
        codes = [int(c) if c else 0 for c in params.split(";")] if params else [0]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                self.reset()
            elif c == 1:
                self.bold = True
            elif c == 3:
                self.italic = True
            elif c == 4:
                self.underline = True
            elif c == 7:
                self.reverse = True
            elif c == 22:
                self.bold = False
            elif c == 23:
                self.italic = False
            elif c == 24:
                self.underline = False
            elif c == 27:
                self.reverse = False
            elif 30 <= c <= 37:
                self.fg = BASE16[c - 30]
            elif 90 <= c <= 97:
                self.fg = BASE16[c - 90 + 8]
            elif 40 <= c <= 47:
                self.bg = BASE16[c - 40]
            elif 100 <= c <= 107:
                self.bg = BASE16[c - 100 + 8]
            elif c == 39:
                self.fg = None
            elif c == 49:
                self.bg = None
            elif c in (38, 48) and i + 1 < len(codes):
                if codes[i + 1] == 5 and i + 2 < len(codes):
                    col = color256(codes[i + 2])
                    i += 2
                elif codes[i + 1] == 2 and i + 4 < len(codes):
                    col = (codes[i + 2], codes[i + 3], codes[i + 4])
                    i += 4
                else:
                    col = None
                if c == 38:
                    self.fg = col
                else:
                    self.bg = col
            i += 1


def parse(text: str) -> list[list[tuple[str, Style]]]:
    rows: list[list[tuple[str, Style]]] = []
    style = Style()
    for line in text.split("\n"):
        cells: list[tuple[str, Style]] = []
        pos = 0
        for m in SGR.finditer(line):
            for ch in line[pos:m.start()]:
                cells.append((ch, style.copy()))
            style.apply(m.group(1))
            pos = m.end()
        for ch in line[pos:]:
            cells.append((ch, style.copy()))
        rows.append(cells)
    while rows and not rows[-1]:
        rows.pop()
    return rows


def render(rows, cols: int, size: int, pad: int = 14, cursor: tuple[int, int] | None = None) -> Image.Image:
    fonts = {
        (False, False): ImageFont.truetype(str(FONT_DIR / "DejaVuSansMono.ttf"), size),
        (True, False): ImageFont.truetype(str(FONT_DIR / "DejaVuSansMono-Bold.ttf"), size),
        (False, True): ImageFont.truetype(str(FONT_DIR / "DejaVuSansMono-Oblique.ttf"), size),
        (True, True): ImageFont.truetype(str(FONT_DIR / "DejaVuSansMono-BoldOblique.ttf"), size),
    }
    cw = round(fonts[(False, False)].getlength("M"))
    ch = round(size * 1.35)
    img = Image.new("RGB", (cols * cw + 2 * pad, len(rows) * ch + 2 * pad), BG)
    d = ImageDraw.Draw(img)
    for r, cells in enumerate(rows):
        y = pad + r * ch
        for c, (char, st) in enumerate(cells[:cols]):
            x = pad + c * cw
            fg, bg = st.fg or FG, st.bg
            if st.reverse:
                fg, bg = (bg or BG), (st.fg or FG)
            if bg is not None and bg != BG:
                d.rectangle([x, y, x + cw - 1, y + ch - 1], fill=bg)
            if char.strip():
                d.text((x, y + (ch - size) // 2 - 1), char, font=fonts[(st.bold, st.italic)], fill=fg)
            if st.underline:
                d.line([x, y + ch - 2, x + cw - 1, y + ch - 2], fill=fg)
    if cursor is not None:  # an Insert-mode bar cursor
        x, y = pad + cursor[0] * cw, pad + cursor[1] * ch
        d.rectangle([x, y + 1, x + 1, y + ch - 2], fill=FG)
    return img


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("capture")
    ap.add_argument("out")
    ap.add_argument("--cols", type=int, default=0)
    ap.add_argument("--font-size", type=int, default=15)
    ap.add_argument("--cursor", help="X,Y (0-based cell) of a bar cursor to draw")
    a = ap.parse_args()
    rows = parse(Path(a.capture).read_text(encoding="utf-8", errors="replace"))
    cols = a.cols or max(len(r) for r in rows)
    cursor = tuple(int(v) for v in a.cursor.split(",")) if a.cursor else None
    img = render(rows, cols, a.font_size, cursor=cursor)
    img = img.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    img.save(a.out, optimize=True)
    print(f"{a.out}: {img.size[0]}x{img.size[1]}, {Path(a.out).stat().st_size} bytes")


if __name__ == "__main__":
    main()
