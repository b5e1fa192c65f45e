"""Drawing the world's thumbnails with PIL: background scenes, motifs, distractors, palette warmth.

Every shape is sized from the image's shorter side, so the same code draws 64 px test images and
224 px (or 16:9) thumbnails. All randomness comes from the `rng` passed in, so a caller that seeds
it per image gets byte-identical images whatever process draws them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from thumbsae.errors import ThumbsaeError

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]  # x0, y0, width, height in pixels

MOTIFS: tuple[str, ...] = (
    "food",
    "sports_field",
    "face",
    "text_overlay",
    "red_arrow",
    "animal",
    "car",
    "outdoor_long_shot",
    "indoor_room",
    "night_scene",
)
# Reference-only classes, so the SAE's training set (the ImageNet stand-in) is not all motifs.
DISTRACTORS: tuple[str, ...] = ("flower", "tree", "house", "shapes", "plain")
SCENES: tuple[str, ...] = ("studio", "gradient", "split", "burst", "bokeh")

# Panels fill a rectangle (a picture inside the picture); objects sit on top of them; text last.
_PANELS = ("sports_field", "outdoor_long_shot", "indoor_room", "night_scene")
_DRAW_ORDER = {
    name: i
    for i, name in enumerate(
        _PANELS
        + (
            "food",
            "face",
            "animal",
            "car",
            "flower",
            "tree",
            "house",
            "shapes",
            "red_arrow",
            "text_overlay",
            "plain",
        )
    )
}

# (aspect = width / height, smallest and largest height as a fraction of the shorter image side)
_GEOMETRY: dict[str, tuple[float, float, float]] = {
    "food": (1.25, 0.38, 0.62),
    "sports_field": (1.6, 0.42, 0.66),
    "face": (0.8, 0.5, 0.8),
    "text_overlay": (0.0, 0.14, 0.24),  # aspect set by the word's length
    "red_arrow": (1.0, 0.28, 0.46),
    "animal": (1.4, 0.32, 0.52),
    "car": (1.8, 0.24, 0.36),
    "outdoor_long_shot": (1.5, 0.46, 0.7),
    "indoor_room": (1.3, 0.46, 0.7),
    "night_scene": (1.4, 0.46, 0.7),
    "flower": (0.7, 0.4, 0.7),
    "tree": (0.75, 0.45, 0.75),
    "house": (1.0, 0.38, 0.6),
    "shapes": (1.3, 0.4, 0.65),
    "plain": (1.0, 0.1, 0.1),
}

_WARM: RGB = (235, 120, 40)
_COOL: RGB = (40, 110, 230)
_BACKGROUNDS: tuple[RGB, ...] = (
    (200, 200, 205),
    (90, 90, 100),
    (240, 235, 225),
    (120, 160, 200),
    (200, 120, 160),
    (150, 190, 140),
    (60, 60, 70),
    (230, 210, 150),
    (170, 140, 200),
    (110, 180, 190),
)
_WORDS = ("WOW", "NEW", "EPIC", "TOP 10", "OMG", "WIN", "FAIL", "HOW TO", "LOL", "MEGA")
# A 5-row block font for the overlay words: bold, clear at 64 px, identical on every machine.
_GLYPHS = {
    "A": ("010", "101", "111", "101", "101"),
    "C": ("111", "100", "100", "100", "111"),
    "E": ("111", "100", "111", "100", "111"),
    "F": ("111", "100", "111", "100", "100"),
    "G": ("111", "100", "101", "101", "111"),
    "H": ("101", "101", "111", "101", "101"),
    "I": ("111", "010", "010", "010", "111"),
    "L": ("100", "100", "100", "100", "111"),
    "M": ("10001", "11011", "10101", "10001", "10001"),
    "N": ("1001", "1101", "1011", "1001", "1001"),
    "O": ("111", "101", "101", "101", "111"),
    "P": ("111", "101", "111", "100", "100"),
    "T": ("111", "010", "010", "010", "010"),
    "W": ("10001", "10001", "10101", "11011", "10001"),
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    " ": ("000", "000", "000", "000", "000"),
}


def _jitter(color: RGB, rng: np.random.Generator, amount: int = 22) -> RGB:
    """`color` moved by up to `amount` per channel (the world's colour jitter)."""
    r, g, b = np.clip(
        np.asarray(color) + rng.integers(-amount, amount + 1, size=3), 0, 255
    ).tolist()
    return (r, g, b)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _warm_color(color: RGB, warmth: float) -> RGB:
    """Blend `color` toward orange (warmth > 0) or blue (warmth < 0), as a palette does."""
    return _mix(color, _WARM if warmth > 0 else _COOL, 0.5 * min(1.0, abs(warmth)))


# ----------------------------------------------------------------------------- scenes


def _draw_scene(img: Image.Image, scene: str, warmth: float, rng: np.random.Generator) -> None:
    """Paint the background `scene` over the whole of `img`."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    first = _warm_color(_jitter(_BACKGROUNDS[rng.integers(len(_BACKGROUNDS))], rng), warmth)
    second = _warm_color(_jitter(_BACKGROUNDS[rng.integers(len(_BACKGROUNDS))], rng), warmth)
    if scene == "studio":
        draw.rectangle((0, 0, w, h), fill=first)
    elif scene == "gradient":
        t_H1 = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        rows_H3 = np.asarray(first, np.float32) * (1 - t_H1) + np.asarray(second, np.float32) * t_H1
        img.paste(Image.fromarray(np.repeat(rows_H3[:, None, :], w, axis=1).astype(np.uint8)))
    elif scene == "split":
        draw.rectangle((0, 0, w, h), fill=first)
        cut = rng.uniform(0.3, 0.7)
        draw.polygon([(w * cut + w * 0.2, 0), (w, 0), (w, h), (w * cut - w * 0.2, h)], fill=second)
    elif scene == "burst":
        draw.rectangle((0, 0, w, h), fill=first)
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        n_rays = int(rng.integers(8, 14))
        radius = 2 * max(w, h)
        for i in range(n_rays):
            a0 = 2 * math.pi * i / n_rays
            a1 = a0 + math.pi / n_rays
            draw.polygon(
                [
                    (cx, cy),
                    (cx + radius * math.cos(a0), cy + radius * math.sin(a0)),
                    (cx + radius * math.cos(a1), cy + radius * math.sin(a1)),
                ],
                fill=second,
            )
    elif scene == "bokeh":
        draw.rectangle((0, 0, w, h), fill=first)
        s = min(w, h)
        for _ in range(int(rng.integers(8, 16))):
            r = rng.uniform(0.04, 0.12) * s
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=_mix(second, (255, 255, 255), 0.35))
    else:
        raise ThumbsaeError(f"unknown scene {scene!r}; expected one of {', '.join(SCENES)}")


def _apply_warmth(img: Image.Image, warmth: float) -> Image.Image:
    """Shift the whole image's colour balance: red up and blue down for warm palettes."""
    level_256 = np.arange(256, dtype=np.float64)
    red = np.minimum(255, (level_256 * (1.0 + 0.12 * warmth) + 0.5).astype(np.int64))
    blue = np.minimum(255, (level_256 * (1.0 - 0.12 * warmth) + 0.5).astype(np.int64))
    return img.point(red.tolist() + list(range(256)) + blue.tolist())  # one LUT per band


# ----------------------------------------------------------------------------- motifs


def _draw_food(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    draw.ellipse(
        (x, y, x + w, y + h),
        fill=_jitter((246, 246, 240), rng, 8),
        outline=(190, 190, 190),
        width=max(1, int(w / 40)),
    )
    draw.ellipse(
        (x + 0.12 * w, y + 0.12 * h, x + 0.88 * w, y + 0.88 * h),
        fill=_jitter((232, 232, 224), rng, 8),
    )
    foods = ((220, 50, 40), (70, 170, 60), (245, 200, 50), (130, 70, 30), (240, 140, 40))
    for _ in range(int(rng.integers(4, 8))):
        r = rng.uniform(0.1, 0.18) * w
        cx, cy = x + rng.uniform(0.3, 0.7) * w, y + rng.uniform(0.3, 0.7) * h
        draw.ellipse(
            (cx - r, cy - 0.8 * r, cx + r, cy + 0.8 * r),
            fill=_jitter(foods[rng.integers(len(foods))], rng),
        )


def _draw_sports_field(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    grass = _jitter((40, 150, 60), rng, 15)
    draw.rectangle((x, y, x + w, y + h), fill=grass)
    stripe = _mix(grass, (255, 255, 255), 0.12)
    for i in range(0, 8, 2):  # mowing stripes
        draw.rectangle((x + w * i / 8, y, x + w * (i + 1) / 8, y + h), fill=stripe)
    line = max(1, int(w / 70))
    white = (245, 245, 245)
    draw.rectangle(
        (x + 0.05 * w, y + 0.07 * h, x + 0.95 * w, y + 0.93 * h), outline=white, width=line
    )
    draw.line((x + 0.5 * w, y + 0.07 * h, x + 0.5 * w, y + 0.93 * h), fill=white, width=line)
    r = 0.14 * h
    draw.ellipse(
        (x + 0.5 * w - r, y + 0.5 * h - r, x + 0.5 * w + r, y + 0.5 * h + r),
        outline=white,
        width=line,
    )
    for gx in (0.05, 0.83):
        draw.rectangle(
            (x + gx * w, y + 0.3 * h, x + (gx + 0.12) * w, y + 0.7 * h), outline=white, width=line
        )
    teams = (_jitter((220, 30, 30), rng), _jitter((30, 60, 220), rng))
    pr = max(1.0, 0.025 * w)
    for i in range(int(rng.integers(8, 15))):
        px, py = x + rng.uniform(0.08, 0.92) * w, y + rng.uniform(0.12, 0.88) * h
        draw.rectangle((px - pr, py - 1.6 * pr, px + pr, py + 1.6 * pr), fill=teams[i % 2])


def _draw_face(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    skins = ((241, 194, 160), (224, 172, 105), (198, 134, 66), (141, 85, 36))
    hairs = ((40, 25, 15), (15, 15, 15), (200, 160, 70), (120, 60, 20))
    skin = _jitter(skins[rng.integers(len(skins))], rng, 10)
    draw.ellipse(
        (x + 0.02 * w, y, x + 0.98 * w, y + 0.55 * h), fill=_jitter(hairs[rng.integers(4)], rng, 10)
    )
    draw.ellipse((x + 0.08 * w, y + 0.12 * h, x + 0.92 * w, y + h), fill=skin)
    for ex in (0.32, 0.68):  # wide-open eyes, brows raised: the "shocked" close-up
        cx, cy = x + ex * w, y + 0.45 * h
        draw.ellipse(
            (cx - 0.11 * w, cy - 0.07 * h, cx + 0.11 * w, cy + 0.07 * h), fill=(250, 250, 250)
        )
        draw.ellipse(
            (cx - 0.045 * w, cy - 0.045 * h, cx + 0.045 * w, cy + 0.045 * h), fill=(30, 20, 20)
        )
        draw.line(
            (cx - 0.12 * w, cy - 0.12 * h, cx + 0.1 * w, cy - 0.14 * h),
            fill=(40, 25, 15),
            width=max(1, int(w / 25)),
        )
    draw.ellipse((x + 0.38 * w, y + 0.7 * h, x + 0.62 * w, y + 0.88 * h), fill=(120, 20, 30))


def _word_cells(word: str) -> int:
    """Width of `word` in font cells, one blank cell between letters."""
    return sum(len(_GLYPHS[ch][0]) + 1 for ch in word) - 1


def _draw_text_overlay(
    draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator, word: str
) -> None:
    x, y, w, h = box
    cell = h / 5.6
    pad = 0.3 * cell
    fill = _jitter(((255, 220, 0), (255, 255, 255), (255, 60, 40))[rng.integers(3)], rng, 12)
    rects = []
    left = 0
    for ch in word:
        for row, bits in enumerate(_GLYPHS[ch]):
            for col, bit in enumerate(bits):
                if bit == "1":
                    px, py = x + pad + (left + col) * cell, y + pad + row * cell
                    rects.append((px, py, px + cell, py + cell))
        left += len(_GLYPHS[ch][0]) + 1
    for px0, py0, px1, py1 in rects:  # the thick black outline of thumbnail text
        draw.rectangle((px0 - pad, py0 - pad, px1 + pad, py1 + pad), fill=(0, 0, 0))
    for rect in rects:
        draw.rectangle(rect, fill=fill)


def _rotate(
    points: list[tuple[float, float]], angle: float, cx: float, cy: float
) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + px * c - py * s, cy + px * s + py * c) for px, py in points]


def _draw_red_arrow(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    cx, cy, r = x + w / 2, y + h / 2, min(w, h) / 2
    red = _jitter((230, 20, 20), rng, 15)
    if rng.random() < 0.35:  # the "look here" circle
        width = max(2, int(r / 5))
        draw.ellipse((x, y, x + w, y + h), outline=(255, 255, 255), width=width + 2)
        draw.ellipse((x + 1, y + 1, x + w - 1, y + h - 1), outline=red, width=width)
        r *= 0.6
    shape = [
        (-r, -0.2 * r),
        (0.2 * r, -0.2 * r),
        (0.2 * r, -0.55 * r),
        (r, 0),
        (0.2 * r, 0.55 * r),
        (0.2 * r, 0.2 * r),
        (-r, 0.2 * r),
    ]
    points = _rotate(shape, float(rng.integers(8)) * math.pi / 4, cx, cy)
    draw.polygon(points, fill=red, outline=(255, 255, 255), width=max(1, int(r / 10)))


def _draw_animal(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    furs = ((30, 25, 20), (110, 70, 35), (200, 110, 40), (120, 120, 120))
    fur = _jitter(furs[rng.integers(len(furs))], rng, 12)
    flip = rng.random() < 0.5

    def fx(t: float) -> float:  # mirror so animals face either way
        return x + (1 - t if flip else t) * w

    def rect(t0: float, y0: float, t1: float, y1: float) -> tuple[float, float, float, float]:
        a, b = sorted((fx(t0), fx(t1)))
        return (a, y + y0 * h, b, y + y1 * h)

    for t in (0.25, 0.38, 0.62, 0.75):
        draw.rectangle(rect(t - 0.04, 0.55, t + 0.04, 1.0), fill=fur)
    draw.ellipse(rect(0.15, 0.3, 0.85, 0.75), fill=fur)
    draw.ellipse(rect(0.7, 0.05, 1.0, 0.45), fill=fur)
    draw.polygon([(fx(0.73), y + 0.15 * h), (fx(0.77), y), (fx(0.83), y + 0.1 * h)], fill=fur)
    draw.polygon([(fx(0.87), y + 0.1 * h), (fx(0.93), y), (fx(0.96), y + 0.18 * h)], fill=fur)
    draw.line((fx(0.17), y + 0.45 * h, fx(0.0), y + 0.2 * h), fill=fur, width=max(1, int(w / 25)))


def _draw_car(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    paints = ((220, 30, 30), (30, 80, 200), (245, 200, 20), (240, 240, 240), (30, 160, 70))
    paint = _jitter(paints[rng.integers(len(paints))], rng, 15)
    flip = rng.random() < 0.5

    def fx(t: float) -> float:
        return x + (1 - t if flip else t) * w

    draw.polygon(
        [
            (fx(0.22), y + 0.42 * h),
            (fx(0.32), y + 0.05 * h),
            (fx(0.68), y + 0.05 * h),
            (fx(0.8), y + 0.42 * h),
        ],
        fill=paint,
    )
    glass = (170, 215, 240)
    draw.polygon(
        [
            (fx(0.29), y + 0.4 * h),
            (fx(0.36), y + 0.14 * h),
            (fx(0.49), y + 0.14 * h),
            (fx(0.49), y + 0.4 * h),
        ],
        fill=glass,
    )
    draw.polygon(
        [
            (fx(0.53), y + 0.4 * h),
            (fx(0.53), y + 0.14 * h),
            (fx(0.65), y + 0.14 * h),
            (fx(0.73), y + 0.4 * h),
        ],
        fill=glass,
    )
    draw.rounded_rectangle((x, y + 0.38 * h, x + w, y + 0.8 * h), radius=0.12 * h, fill=paint)
    lamp = sorted((fx(0.93), fx(0.99)))
    draw.rectangle((lamp[0], y + 0.48 * h, lamp[1], y + 0.58 * h), fill=(255, 240, 150))
    r = 0.2 * h
    for t in (0.22, 0.78):
        cx, cy = fx(t), y + 0.8 * h
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(20, 20, 20))
        draw.ellipse(
            (cx - 0.45 * r, cy - 0.45 * r, cx + 0.45 * r, cy + 0.45 * r), fill=(170, 170, 170)
        )


def _draw_outdoor_long_shot(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    horizon = y + rng.uniform(0.5, 0.65) * h
    sky = _jitter((130, 190, 240), rng, 15)
    draw.rectangle((x, y, x + w, horizon), fill=sky)
    draw.rectangle((x, y, x + w, y + 0.15 * h), fill=_mix(sky, (255, 255, 255), 0.25))
    sr = 0.07 * h
    sx, sy = x + rng.uniform(0.1, 0.9) * w, y + rng.uniform(0.1, 0.25) * h
    draw.ellipse((sx - sr, sy - sr, sx + sr, sy + sr), fill=(255, 235, 120))
    for _ in range(int(rng.integers(2, 5))):  # distant mountains
        mx, mw, mh = (
            x + rng.uniform(0, 1) * w,
            rng.uniform(0.15, 0.35) * w,
            rng.uniform(0.12, 0.25) * h,
        )
        draw.polygon(
            [(max(x, mx - mw), horizon), (mx, horizon - mh), (min(x + w, mx + mw), horizon)],
            fill=_jitter((110, 120, 150), rng, 12),
        )
    draw.rectangle((x, horizon, x + w, y + h), fill=_jitter((110, 170, 70), rng, 15))
    tr = max(1.0, 0.03 * h)
    for _ in range(int(rng.integers(4, 9))):  # tiny trees: a long shot
        tx, ty = x + rng.uniform(0.03, 0.97) * w, horizon + rng.uniform(0.05, 0.35) * h
        draw.polygon([(tx - tr, ty), (tx, ty - 2.5 * tr), (tx + tr, ty)], fill=(30, 90, 40))


def _draw_indoor_room(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    wall = _jitter((225, 205, 170), rng, 15)
    draw.rectangle((x, y, x + w, y + h), fill=_mix(wall, (0, 0, 0), 0.2))  # side walls
    draw.polygon(
        [(x, y), (x + w, y), (x + 0.78 * w, y + 0.18 * h), (x + 0.22 * w, y + 0.18 * h)],
        fill=_mix(wall, (255, 255, 255), 0.3),
    )
    floor = _jitter((150, 100, 55), rng, 15)
    draw.polygon(
        [(x, y + h), (x + w, y + h), (x + 0.78 * w, y + 0.7 * h), (x + 0.22 * w, y + 0.7 * h)],
        fill=floor,
    )
    for t in (0.25, 0.5, 0.75):  # floor planks converge to the vanishing point
        draw.line(
            (x + t * w, y + h, x + (0.22 + 0.56 * t) * w, y + 0.7 * h),
            fill=_mix(floor, (0, 0, 0), 0.3),
            width=max(1, int(w / 120)),
        )
    draw.rectangle((x + 0.22 * w, y + 0.18 * h, x + 0.78 * w, y + 0.7 * h), fill=wall)
    wx = rng.uniform(0.28, 0.5)
    draw.rectangle(
        (x + wx * w, y + 0.26 * h, x + (wx + 0.2) * w, y + 0.5 * h),
        fill=(170, 215, 240),
        outline=(255, 255, 255),
        width=max(1, int(w / 80)),
    )
    sofa = _jitter((90, 60, 140), rng, 25)
    draw.rectangle((x + 0.3 * w, y + 0.55 * h, x + 0.7 * w, y + 0.72 * h), fill=sofa)
    draw.rectangle(
        (x + 0.3 * w, y + 0.5 * h, x + 0.7 * w, y + 0.58 * h), fill=_mix(sofa, (0, 0, 0), 0.2)
    )


def _draw_night_scene(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    sky = _jitter((15, 20, 55), rng, 10)
    draw.rectangle((x, y, x + w, y + h), fill=sky)
    for _ in range(int(rng.integers(15, 30))):
        sx, sy = x + rng.uniform(0, 1) * w, y + rng.uniform(0, 0.55) * h
        draw.point((sx, sy), fill=(255, 255, 230))
    mr = 0.1 * h
    mx, my = x + rng.uniform(0.15, 0.85) * w, y + rng.uniform(0.12, 0.3) * h
    draw.ellipse((mx - mr, my - mr, mx + mr, my + mr), fill=(245, 240, 200))
    draw.ellipse((mx - 0.5 * mr, my - 1.1 * mr, mx + 1.4 * mr, my + 0.7 * mr), fill=sky)  # crescent
    bx = x
    while bx < x + w:
        bw = rng.uniform(0.1, 0.2) * w
        top = y + rng.uniform(0.45, 0.75) * h
        right = min(x + w, bx + bw)
        draw.rectangle((bx, top, right, y + h), fill=(8, 8, 14))
        win = max(1.0, 0.025 * w)
        for wy in np.arange(top + 2 * win, y + h - win, 3 * win):
            for wxp in np.arange(bx + win, right - win, 2.5 * win):
                if rng.random() < 0.45:
                    draw.rectangle((wxp, wy, wxp + win, wy + win), fill=(255, 210, 90))
        bx = right + 0.02 * w


def _draw_flower(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    cx, cy, r = x + 0.5 * w, y + 0.32 * h, 0.16 * h
    draw.line((cx, cy, cx, y + h), fill=(40, 130, 40), width=max(1, int(w / 15)))
    draw.ellipse((cx, y + 0.6 * h, cx + 0.35 * w, y + 0.72 * h), fill=(50, 150, 50))
    petal = _jitter(((240, 120, 180), (160, 90, 220), (250, 220, 60))[rng.integers(3)], rng)
    for i in range(6):
        a = i * math.pi / 3
        px, py = cx + 1.1 * r * math.cos(a), cy + 1.1 * r * math.sin(a)
        draw.ellipse((px - 0.8 * r, py - 0.8 * r, px + 0.8 * r, py + 0.8 * r), fill=petal)
    draw.ellipse((cx - 0.6 * r, cy - 0.6 * r, cx + 0.6 * r, cy + 0.6 * r), fill=(120, 70, 20))


def _draw_tree(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    draw.rectangle(
        (x + 0.42 * w, y + 0.55 * h, x + 0.58 * w, y + h), fill=_jitter((100, 65, 30), rng, 12)
    )
    leaf = _jitter((40, 120, 45), rng, 15)
    for cx, cy, r in ((0.5, 0.3, 0.3), (0.3, 0.42, 0.22), (0.7, 0.42, 0.22), (0.5, 0.5, 0.22)):
        draw.ellipse(
            (x + (cx - r) * w, y + (cy - r * 0.8) * h, x + (cx + r) * w, y + (cy + r * 0.8) * h),
            fill=leaf,
        )


def _draw_house(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    draw.rectangle(
        (x + 0.1 * w, y + 0.42 * h, x + 0.9 * w, y + h), fill=_jitter((230, 220, 200), rng)
    )
    draw.polygon(
        [(x, y + 0.45 * h), (x + 0.5 * w, y), (x + w, y + 0.45 * h)],
        fill=_jitter((150, 50, 40), rng),
    )
    draw.rectangle((x + 0.43 * w, y + 0.68 * h, x + 0.57 * w, y + h), fill=(90, 60, 40))
    for wx in (0.18, 0.66):
        draw.rectangle(
            (x + wx * w, y + 0.55 * h, x + (wx + 0.16) * w, y + 0.72 * h), fill=(150, 200, 230)
        )


def _draw_shapes(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x, y, w, h = box
    colors = ((30, 90, 220), (20, 170, 170), (150, 60, 200), (240, 150, 20))
    for _ in range(int(rng.integers(3, 6))):
        c = _jitter(colors[rng.integers(len(colors))], rng)
        s = rng.uniform(0.15, 0.3) * min(w, h)
        px, py = x + rng.uniform(0, w - s), y + rng.uniform(0, h - s)
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle((px, py, px + s, py + s), fill=c)
        elif kind == 1:
            draw.polygon([(px, py + s), (px + s / 2, py), (px + s, py + s)], fill=c)
        else:
            draw.ellipse((px, py, px + s, py + s), fill=c)


_DRAWERS = {
    "food": _draw_food,
    "sports_field": _draw_sports_field,
    "face": _draw_face,
    "red_arrow": _draw_red_arrow,
    "animal": _draw_animal,
    "car": _draw_car,
    "outdoor_long_shot": _draw_outdoor_long_shot,
    "indoor_room": _draw_indoor_room,
    "night_scene": _draw_night_scene,
    "flower": _draw_flower,
    "tree": _draw_tree,
    "house": _draw_house,
    "shapes": _draw_shapes,
}


def _overlap(a: Box, b: Box) -> float:
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0.0, dx) * max(0.0, dy)


def _place(
    size: tuple[int, int], box_w: float, box_h: float, placed: list[Box], rng: np.random.Generator
) -> Box:
    """A box anywhere in the image (edges included), the least covered of a few random tries."""
    w, h = size
    best: Box | None = None
    best_overlap = math.inf
    for _ in range(12):
        box = (rng.uniform(0, w - box_w), rng.uniform(0, h - box_h), box_w, box_h)
        covered = sum(_overlap(box, other) for other in placed)
        if covered < best_overlap:
            best, best_overlap = box, covered
        if covered == 0:
            break
    assert best is not None
    return best


def draw_thumbnail(
    motifs: Sequence[str],
    *,
    scene: str,
    warmth: float,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> Image.Image:
    """Draw one thumbnail: a background `scene`, then each motif at a random place, scale, colour.

    motifs: names from `MOTIFS` (or `DISTRACTORS`, as the reference set uses), any order, may be
        empty; each is drawn once, panels first and text last so objects stay visible.
    scene: one of `SCENES`.
    warmth: palette warmth in [-1, 1] (-1 cool blue, 0 neutral, 1 warm orange).
    size: (width, height) in pixels, at least 16 each.
    rng: the only source of randomness; the same seed state gives the same pixels.
    Returns an RGB `PIL.Image.Image` of `size`.
    """
    width, height = int(size[0]), int(size[1])
    if width < 16 or height < 16:
        raise ThumbsaeError(f"thumbnail size {width}x{height} too small; need at least 16x16")
    unknown = [m for m in motifs if m not in _DRAW_ORDER]
    if unknown:
        raise ThumbsaeError(
            f"unknown motif(s) {unknown}; expected names from MOTIFS or DISTRACTORS"
        )
    warmth = float(min(1.0, max(-1.0, warmth)))
    img = Image.new("RGB", (width, height))
    _draw_scene(img, scene, warmth, rng)
    draw = ImageDraw.Draw(img)
    shorter = min(width, height)
    placed: list[Box] = []
    ordered = [
        m for m in sorted(dict.fromkeys(motifs), key=_DRAW_ORDER.__getitem__) if m != "plain"
    ]
    # Shrink crowded thumbnails so that no motif hides another (two panels cannot both fill it).
    crowding = 1.0 / (1.0 + 0.15 * (len(ordered) - 1))
    n_panels = sum(m in _PANELS for m in ordered)
    for motif in ordered:
        aspect, lo, hi = _GEOMETRY[motif]
        shrink = crowding * (0.75 if motif in _PANELS and n_panels > 1 else 1.0)
        box_h = rng.uniform(lo, hi) * shorter * shrink
        word = ""
        if motif == "text_overlay":
            word = _WORDS[rng.integers(len(_WORDS))]
            box_w = (_word_cells(word) + 0.6) * box_h / 5.6
        else:
            box_w = aspect * box_h
        if box_w > width:  # wide motifs in narrow images shrink to fit, keeping their aspect
            box_h, box_w = box_h * width / box_w, float(width)
        box = _place((width, height), box_w, min(box_h, height), placed, rng)
        placed.append(box)
        if motif == "text_overlay":
            _draw_text_overlay(draw, box, rng, word)
        else:
            _DRAWERS[motif](draw, box, rng)
    return _apply_warmth(img, warmth)
