"""The demo data set's content: which labels an image has, how it looks and what its caption says.

Pure functions of a numpy Generator (mlcap.data.demo seeds one per image and writes the files). The content is
designed so that neither modality alone is enough:

* Images show simple drawn objects for the COCO ids 1..19 (id 12 never occurs, as in COMP5329).  Five pairs
  of labels (bicycle/motorcycle, car/truck, bus/train, airplane/bird, cat/dog) are drawn with the same shape
  and colour and differ only in a detail of a few pixels, so an image model confuses them.
* Captions name each present object only with probability ``MENTION_PROB`` (at least one), using several
  synonyms per label, so a caption model misses unmentioned objects but names look-alikes unambiguously.

Changing what these functions draw from a Generator changes the data set: bump demo.GENERATOR_VERSION.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["DEMO_LABEL_NAMES", "MENTION_PROB", "NOUNS", "draw_image", "make_caption", "sample_labels"]

# COMP5329 uses the first 19 COCO category ids; COCO id 12 ("street sign") was never annotated.
DEMO_LABEL_NAMES: dict[int, str] = {
    1: "person",
    2: "bicycle",
    3: "car",
    4: "motorcycle",
    5: "airplane",
    6: "bus",
    7: "train",
    8: "truck",
    9: "boat",
    10: "traffic light",
    11: "fire hydrant",
    12: "street sign",
    13: "stop sign",
    14: "parking meter",
    15: "bench",
    16: "bird",
    17: "cat",
    18: "dog",
    19: "horse",
}

MENTION_PROB = 0.6

_PERSON_PROB = 0.75
# Number of objects per image (1..4); mean 2.3.
_N_OBJECTS_PROBS = np.array([0.2, 0.4, 0.3, 0.1])
# Relative frequencies of the other labels, taken from COMP5329's train split, to get its long tail.
_OTHER_WEIGHTS: dict[int, float] = {
    2: 0.041,
    3: 0.153,
    4: 0.044,
    5: 0.038,
    6: 0.048,
    7: 0.042,
    8: 0.075,
    9: 0.034,
    10: 0.055,
    11: 0.022,
    13: 0.021,
    14: 0.009,
    15: 0.065,
    16: 0.035,
    17: 0.043,
    18: 0.052,
    19: 0.036,
}
_OTHER_LABELS = np.array(sorted(_OTHER_WEIGHTS))
_OTHER_P = np.array([_OTHER_WEIGHTS[k] for k in _OTHER_LABELS])
_OTHER_P = _OTHER_P / _OTHER_P.sum()

# Synonyms are disjoint between labels (look-alike pairs above all), so a caption that names an object
# identifies it; no word is shared between the nouns of two labels.
NOUNS: dict[int, tuple[str, ...]] = {
    1: ("person", "man", "woman", "child", "pedestrian"),
    2: ("bicycle", "bike", "cycle"),
    3: ("car", "sedan", "automobile"),
    4: ("motorcycle", "motorbike", "scooter"),
    5: ("airplane", "plane", "jet", "aircraft"),
    6: ("bus", "coach", "minibus"),
    7: ("train", "locomotive", "tram"),
    8: ("truck", "lorry", "pickup"),
    9: ("boat", "sailboat", "yacht"),
    10: ("traffic light", "traffic signal", "signal light"),
    11: ("fire hydrant", "hydrant"),
    13: ("stop sign", "road sign"),
    14: ("parking meter", "meter"),
    15: ("bench", "park bench", "seat"),
    16: ("bird", "pigeon", "seagull"),
    17: ("cat", "kitten", "kitty"),
    18: ("dog", "puppy", "hound"),
    19: ("horse", "pony", "stallion"),
}
_ADJECTIVES = ("small", "big", "large", "little", "old", "shiny", "dusty", "bright", "dark", "lonely")
_SCENES = (
    "on a grassy field",
    "in the street",
    "near the water",
    "in a city square",
    "on a sunny day",
    "next to a building",
    "at the beach",
    "in the snow",
)
_FRAMES = (
    "{objs} {scene}",
    "a photo of {objs} {scene}",
    "there is {objs} {scene}",
    "{objs} can be seen {scene}",
    "close-up view of {objs}",
    "a picture showing {objs} {scene}",
    "an image with {objs}",
)

Color = tuple[int, int, int]

_BLACK: Color = (20, 20, 20)
_WHITE: Color = (240, 240, 240)


def _shift(color: Color, offset: np.ndarray) -> Color:
    """Jitter a colour so that a colour-only detector has some noise to deal with."""
    r, g, b = (int(np.clip(c + o, 0, 255)) for c, o in zip(color, offset, strict=True))
    return (r, g, b)


def _disc(d: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: Color) -> None:
    d.ellipse((x - r, y - r, x + r, y + r), fill=fill)


# --- object drawings: (draw, centre x, centre y, half-size s, colour offset). Hand-written: no library
# draws these icons.  Look-alike pairs share one function and differ by a small, low-contrast detail
# (~0.3*s across, a shade of the body colour) that a model must learn to look for.


def _person(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
    d.rectangle((x - 0.35 * s, y - 0.3 * s, x + 0.35 * s, y + s), fill=_shift((40, 60, 160), o))
    _disc(d, x, y - 0.62 * s, 0.35 * s, _shift((224, 172, 105), o))


def _two_wheeler(detail: bool) -> Callable[[ImageDraw.ImageDraw, float, float, float, np.ndarray], None]:
    def draw(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
        w = max(1, round(0.15 * s))
        frame = _shift((30, 30, 120), o)
        for cx in (x - 0.55 * s, x + 0.55 * s):
            d.ellipse(
                (cx - 0.42 * s, y + 0.4 * s - 0.42 * s, cx + 0.42 * s, y + 0.4 * s + 0.42 * s),
                outline=_BLACK,
                width=w,
            )
        d.line(
            ((x - 0.55 * s, y + 0.4 * s), (x, y - 0.3 * s), (x + 0.55 * s, y + 0.4 * s)), fill=frame, width=w
        )
        if detail:  # motorcycle: a small engine block, barely lighter than the frame
            _disc(d, x, y + 0.15 * s, 0.18 * s, _shift((75, 45, 120), o))

    return draw


def _car_like(detail: bool) -> Callable[[ImageDraw.ImageDraw, float, float, float, np.ndarray], None]:
    def draw(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
        d.rectangle((x - s, y - 0.45 * s, x + s, y + 0.3 * s), fill=_shift((200, 30, 30), o))
        for cx in (x - 0.55 * s, x + 0.55 * s):
            _disc(d, cx, y + 0.35 * s, 0.27 * s, _BLACK)
        if detail:  # truck: a cab window, a darker red than the body
            d.rectangle((x + 0.5 * s, y - 0.35 * s, x + 0.8 * s, y - 0.1 * s), fill=_shift((150, 25, 25), o))

    return draw


def _bus_like(detail: bool) -> Callable[[ImageDraw.ImageDraw, float, float, float, np.ndarray], None]:
    def draw(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
        d.rectangle((x - s, y - 0.5 * s, x + s, y + 0.45 * s), fill=_shift((230, 190, 30), o))
        for i in range(3):
            wx = x - 0.75 * s + i * 0.55 * s
            d.rectangle((wx, y - 0.35 * s, wx + 0.35 * s, y - 0.05 * s), fill=_shift((60, 60, 80), o))
        if detail:  # train: a thin rail under the carriage, a darker yellow
            d.rectangle((x - s, y + 0.6 * s, x + s, y + 0.7 * s), fill=_shift((170, 140, 25), o))

    return draw


def _winged(detail: bool) -> Callable[[ImageDraw.ImageDraw, float, float, float, np.ndarray], None]:
    def draw(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
        body = _shift((225, 225, 235), o)
        d.rectangle((x - s, y - 0.15 * s, x + 0.8 * s, y + 0.15 * s), fill=body)
        d.polygon(((x - 0.25 * s, y - 0.85 * s), (x + 0.2 * s, y), (x - 0.25 * s, y + 0.85 * s)), fill=body)
        d.rectangle((x - s, y - 0.45 * s, x - 0.8 * s, y + 0.45 * s), fill=body)
        if detail:  # bird: a pale yellow beak
            d.polygon(
                ((x + 0.8 * s, y - 0.15 * s), (x + 1.05 * s, y), (x + 0.8 * s, y + 0.15 * s)),
                fill=_shift((235, 215, 160), o),
            )

    return draw


def _pet(detail: bool) -> Callable[[ImageDraw.ImageDraw, float, float, float, np.ndarray], None]:
    def draw(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
        fur = _shift((215, 125, 40), o)
        for sign in (-1, 1):
            d.polygon(
                (
                    (x + sign * 0.65 * s, y - 0.9 * s),
                    (x + sign * 0.15 * s, y - 0.4 * s),
                    (x + sign * 0.7 * s, y - 0.2 * s),
                ),
                fill=fur,
            )
        _disc(d, x, y + 0.1 * s, 0.7 * s, fur)
        if detail:  # dog: a nose, a darker brown than the fur
            _disc(d, x, y + 0.3 * s, 0.15 * s, _shift((165, 90, 30), o))

    return draw


def _boat(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
    d.polygon(
        ((x - s, y + 0.2 * s), (x + s, y + 0.2 * s), (x + 0.6 * s, y + 0.7 * s), (x - 0.6 * s, y + 0.7 * s)),
        fill=_shift((120, 70, 30), o),
    )
    d.polygon(((x - 0.05 * s, y - s), (x - 0.05 * s, y + 0.1 * s), (x - 0.8 * s, y + 0.1 * s)), fill=_WHITE)


def _traffic_light(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
    d.rectangle((x - 0.32 * s, y - s, x + 0.32 * s, y + s), fill=_BLACK)
    for i, c in enumerate(((230, 30, 30), (240, 200, 20), (30, 200, 60))):
        _disc(d, x, y - 0.62 * s + i * 0.62 * s, 0.22 * s, _shift(c, o))


def _fire_hydrant(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
    red = _shift((210, 40, 30), o)
    d.rectangle((x - 0.35 * s, y - 0.5 * s, x + 0.35 * s, y + s), fill=red)
    d.ellipse((x - 0.45 * s, y - 0.85 * s, x + 0.45 * s, y - 0.35 * s), fill=red)
    d.rectangle((x - 0.6 * s, y - 0.1 * s, x + 0.6 * s, y + 0.15 * s), fill=red)


def _stop_sign(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
    d.regular_polygon((x, y, s), 8, rotation=22.5, fill=_shift((200, 20, 30), o))
    d.rectangle((x - 0.6 * s, y - 0.12 * s, x + 0.6 * s, y + 0.12 * s), fill=_WHITE)


def _parking_meter(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
    d.rectangle((x - 0.12 * s, y - 0.2 * s, x + 0.12 * s, y + s), fill=_shift((70, 70, 70), o))
    d.rounded_rectangle(
        (x - 0.4 * s, y - s, x + 0.4 * s, y - 0.15 * s), radius=0.2 * s, fill=_shift((190, 190, 200), o)
    )
    d.rectangle((x - 0.22 * s, y - 0.8 * s, x + 0.22 * s, y - 0.5 * s), fill=_BLACK)


def _bench(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
    wood = _shift((140, 85, 35), o)
    for top in (-0.5, -0.1):
        d.rectangle((x - s, y + top * s, x + s, y + (top + 0.25) * s), fill=wood)
    for lx in (x - 0.8 * s, x + 0.65 * s):
        d.rectangle((lx, y + 0.15 * s, lx + 0.15 * s, y + 0.8 * s), fill=_BLACK)


def _horse(d: ImageDraw.ImageDraw, x: float, y: float, s: float, o: np.ndarray) -> None:
    coat = _shift((95, 55, 25), o)
    d.rectangle((x - 0.8 * s, y - 0.3 * s, x + 0.5 * s, y + 0.25 * s), fill=coat)
    for lx in (x - 0.75 * s, x - 0.45 * s, x + 0.15 * s, x + 0.4 * s):
        d.rectangle((lx, y + 0.25 * s, lx + 0.12 * s, y + 0.9 * s), fill=coat)
    d.polygon(
        ((x + 0.3 * s, y - 0.3 * s), (x + 0.7 * s, y - 0.95 * s), (x + s, y - 0.75 * s), (x + 0.55 * s, y)),
        fill=coat,
    )


_DRAWERS: dict[int, Callable[[ImageDraw.ImageDraw, float, float, float, np.ndarray], None]] = {
    1: _person,
    2: _two_wheeler(False),
    4: _two_wheeler(True),
    3: _car_like(False),
    8: _car_like(True),
    6: _bus_like(False),
    7: _bus_like(True),
    5: _winged(False),
    16: _winged(True),
    17: _pet(False),
    18: _pet(True),
    9: _boat,
    10: _traffic_light,
    11: _fire_hydrant,
    13: _stop_sign,
    14: _parking_meter,
    15: _bench,
    19: _horse,
}

# Quadrant centres in units of image_size; one object per quadrant keeps objects from hiding each other.
_QUADRANTS = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))


def sample_labels(rng: np.random.Generator) -> list[int]:
    """Unsorted, usually with the person first, like COMP5329 rows ("1 13 7"), so readers cannot rely on order."""
    k = int(rng.choice(4, p=_N_OBJECTS_PROBS)) + 1
    labels = [1] if rng.random() < _PERSON_PROB else []
    labels += [int(v) for v in rng.choice(_OTHER_LABELS, size=k - len(labels), replace=False, p=_OTHER_P)]
    if rng.random() < 0.25:
        labels = [labels[i] for i in rng.permutation(len(labels))]
    return labels


def draw_image(rng: np.random.Generator, labels: Sequence[int], size: int) -> Image.Image:
    base = rng.integers(70, 170, size=3)
    pixels = base + rng.normal(0.0, 14.0, size=(size, size, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # faint texture strokes
        pts = rng.uniform(0, size, size=4)
        shade = _shift((int(base[0]), int(base[1]), int(base[2])), rng.integers(-35, 36, size=3))
        d.line(tuple(float(p) for p in pts), fill=shade, width=int(rng.integers(1, 3)))
    quadrants = rng.permutation(4)
    for label, q in zip(labels, quadrants[: len(labels)], strict=True):
        s = size / 4 * rng.uniform(0.82, 0.97)
        margin = size / 4 - s
        qx, qy = _QUADRANTS[int(q)]
        x = qx * size + rng.uniform(-margin, margin)
        y = qy * size + rng.uniform(-margin, margin)
        _DRAWERS[label](d, x, y, s, rng.integers(-20, 21, size=3))
    return img


def make_caption(rng: np.random.Generator, labels: Sequence[int]) -> str:
    mentioned = [lab for lab in labels if rng.random() < MENTION_PROB]
    if not mentioned:
        mentioned = [labels[int(rng.integers(len(labels)))]]
    mentioned = [mentioned[i] for i in rng.permutation(len(mentioned))]
    phrases = []
    for lab in mentioned:
        nouns = NOUNS[lab]
        words = str(nouns[int(rng.integers(len(nouns)))])
        if rng.random() < 0.5:
            words = f"{_ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))]} {words}"
        phrases.append(("an " if words[0] in "aeiou" else "a ") + words)
    objs = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    frame = _FRAMES[int(rng.integers(len(_FRAMES)))]
    text = frame.format(objs=objs, scene=_SCENES[int(rng.integers(len(_SCENES)))])
    # Like COMP5329, most captions are sentences, some are lower-case fragments without a full stop.
    return text if rng.random() < 0.2 else text[0].upper() + text[1:] + "."
