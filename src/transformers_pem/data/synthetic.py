"""Synthetic datasets in the genuine Cityscapes and ADE20K folder layouts, with learnable scenes.

Street scenes (Cityscapes) and room or street scenes (ADE20K) are drawn with stuff regions (sky, buildings,
vegetation, road, walls, floors, ...) and several thing instances (cars, persons, windows, furniture, ...). Every
class has its own colour range and texture, and every instance has its own colour and a dark outline, so that a
small model learns semantic, instance and panoptic segmentation from a few hundred images in minutes. The output is
deterministic for a given seed and is written exactly as the official preparation scripts lay it out:

- Cityscapes: `leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`, and next to the labels in
  `gtFine/<split>/<city>/` the `_gtFine_labelIds.png`, `_gtFine_labelTrainIds.png` and `_gtFine_instanceIds.png`
  files (16-bit; `labelId * 1000 + k` for thing instances, `labelId` elsewhere), plus the output of cityscapesscripts'
  `createPanopticImgs`: `gtFine/cityscapes_panoptic_<split>.json` and `gtFine/cityscapes_panoptic_<split>/*.png`.
- ADE20K: `ADEChallengeData2016/images/{training,validation}/*.jpg`, `annotations/{training,validation}/*.png`
  (0 = "other", class `c` stored as `c + 1`), plus the output of the official `prepare_ade20k_pan_seg.py`:
  `ADEChallengeData2016/ade20k_panoptic_{train,val}.json` and `ade20k_panoptic_{train,val}/*.png`.

Command line: `python -m transformers_pem.data.synthetic --layout cityscapes --out DIR --num-train 8 --num-val 4
--size 128 256`.
"""

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..labels_pem import ADE20K_LABELS, CITYSCAPES_LABELS

# Cityscapes label ids (the values of `*_gtFine_labelIds.png`) used by the street scenes.
_CS_EGO_VEHICLE, _CS_ROAD, _CS_SIDEWALK, _CS_BUILDING, _CS_VEGETATION, _CS_TERRAIN, _CS_SKY = 1, 7, 8, 11, 21, 22, 23
_CS_PERSON, _CS_CAR = 24, 26
_CS_SUPERCATEGORY = {7: "flat", 8: "flat", 11: "construction", 12: "construction", 13: "construction"}
_CS_SUPERCATEGORY.update({17: "object", 19: "object", 20: "object", 21: "nature", 22: "nature", 23: "sky"})
_CS_SUPERCATEGORY.update({24: "human", 25: "human", **dict.fromkeys((26, 27, 28, 31, 32, 33), "vehicle")})
_CS_CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster")}
# ADE20K class indices (0..149; the annotation PNGs store index + 1) used by the room and street scenes.
_ADE_WALL, _ADE_BUILDING, _ADE_SKY, _ADE_FLOOR, _ADE_TREE, _ADE_CEILING, _ADE_ROAD, _ADE_BED = 0, 1, 2, 3, 4, 5, 6, 7
_ADE_WINDOW, _ADE_GRASS, _ADE_SIDEWALK, _ADE_PERSON, _ADE_DOOR, _ADE_TABLE = 8, 9, 11, 12, 14, 15
_ADE_CHAIR, _ADE_CAR, _ADE_PAINTING, _ADE_RUG = 19, 20, 22, 28
_ADE_OTHER = -1
_ADE_SPLITS = {"train": "training", "val": "validation"}

Texture = Callable[[np.ndarray, np.ndarray], np.ndarray]


class _Canvas:
    """A scene under construction: label ids, thing indices and the RGB image, painted back to front."""

    def __init__(self, height: int, width: int, rng: np.random.Generator):
        self.height, self.width, self.rng = height, width, rng
        self.label = np.zeros((height, width), np.int32)
        self.thing = np.full((height, width), -1, np.int32)  # index into self.things, -1 for stuff
        self.image = np.zeros((height, width, 3), np.float32)
        self.yy, self.xx = np.mgrid[0:height, 0:width]
        self.things: list[tuple[int, bool, float]] = []  # (label id, is crowd, full area)

    def paint(self, mask: np.ndarray, label: int, texture: Texture, thing: int = -1) -> None:
        ys, xs = np.nonzero(mask)
        self.label[ys, xs] = label
        self.thing[ys, xs] = thing
        self.image[ys, xs] = texture(ys, xs)

    def add_thing(self, mask: np.ndarray, label: int, texture: Texture, crowd: bool = False) -> None:
        """Paints an instance in front of everything drawn so far, with a dark outline."""
        if not mask.any():
            return
        index = len(self.things)
        self.things.append((label, crowd, float(mask.sum())))
        self.paint(mask, label, texture, thing=index)
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        self.image[mask & ~inner] *= 0.55

    def drop_hidden_things(self, background: tuple[np.ndarray, np.ndarray, np.ndarray], min_visible: float) -> None:
        """Gives the pixels of mostly occluded instances back to the stuff painted under them."""
        for index, (_, _, area) in enumerate(self.things):
            visible = self.thing == index
            count = int(visible.sum())
            if 0 < count and (count < min_visible * area or count < 16):
                self.label[visible] = background[0][visible]
                self.thing[visible] = -1
                self.image[visible] = background[2][visible]

    def noise(self, ys: np.ndarray, scale: float) -> np.ndarray:
        return self.rng.normal(0.0, scale, (len(ys), 3)).astype(np.float32)

    def flat(self, colour, noise: float = 4.0, jitter: float = 10.0) -> Texture:
        base = np.asarray(colour, np.float32) + self.rng.uniform(-jitter, jitter, 3).astype(np.float32)
        return lambda ys, xs: base + self.noise(ys, noise)

    def blotchy(self, colour, cell: int, amplitude: float, noise: float = 6.0) -> Texture:
        """Colour modulated by a blocky low-frequency field (foliage, grass, gravel)."""
        base = np.asarray(colour, np.float32) + self.rng.uniform(-8, 8, 3).astype(np.float32)
        field = self.rng.normal(0.0, amplitude, (self.height // cell + 2, self.width // cell + 2, 1))
        return lambda ys, xs: base + field[ys // cell, xs // cell].astype(np.float32) + self.noise(ys, noise)

    def gradient(self, top_colour, bottom_colour, top: float, bottom: float) -> Texture:
        top_colour = np.asarray(top_colour, np.float32)
        bottom_colour = np.asarray(bottom_colour, np.float32)

        def texture(ys, xs):
            t = np.clip((ys - top) / max(bottom - top, 1.0), 0.0, 1.0)[:, None].astype(np.float32)
            return top_colour * (1 - t) + bottom_colour * t + self.noise(ys, 2.0)

        return texture

    def grid(self, colour, line_colour, period: tuple[int, int], size: tuple[int, int], origin=(0, 0)) -> Texture:
        """Rectangles of `line_colour` on a regular grid (windows on facades, tiles on pavements)."""
        base = np.asarray(colour, np.float32) + self.rng.uniform(-10, 10, 3).astype(np.float32)
        line = np.asarray(line_colour, np.float32)
        (py, px), (sy, sx), (oy, ox) = period, size, origin

        def texture(ys, xs):
            out = base + self.noise(ys, 4.0)
            on = ((ys - oy) % py < sy) & ((xs - ox) % px < sx)
            out[on] = line + self.noise(ys[on], 4.0)
            return out

        return texture

    def rectangle(self, top: float, bottom: float, left: float, right: float) -> np.ndarray:
        return (self.yy >= top) & (self.yy < bottom) & (self.xx >= left) & (self.xx < right)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((self.yy - cy) / max(ry, 0.5)) ** 2 + ((self.xx - cx) / max(rx, 0.5)) ** 2 <= 1.0

    def finish(self) -> np.ndarray:
        """The RGB image: a global exposure change, sensor noise, uint8."""
        image = self.image * self.rng.uniform(0.85, 1.15) + self.rng.normal(0, 3.0, self.image.shape)
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)


_CAR_COLOURS = ((35, 45, 120), (150, 30, 35), (60, 62, 70), (215, 215, 220), (30, 90, 160))
_SHIRT_COLOURS = ((200, 40, 40), (40, 120, 200), (230, 200, 40), (40, 160, 80), (240, 240, 240), (120, 50, 150))
_SKIN = (220, 170, 130)
_FACADES = ((150, 125, 100), (125, 115, 110), (170, 150, 125), (110, 100, 95))


def _car(canvas: _Canvas, bottom: float, cx: float, width: float, label: int) -> None:
    rng = canvas.rng
    height = width * rng.uniform(0.45, 0.6)
    body = canvas.rectangle(bottom - 0.6 * height, bottom, cx - width / 2, cx + width / 2)
    cabin = canvas.rectangle(bottom - height, bottom - 0.55 * height, cx - 0.32 * width, cx + 0.3 * width)
    colour = np.asarray(_CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], np.float32) + rng.uniform(-12, 12, 3)
    glass_top, glass_bottom = bottom - 0.92 * height, bottom - 0.62 * height
    wheels = [(bottom - 0.08 * height, cx + side * 0.3 * width) for side in (-1, 1)]
    wheel_radius = 0.16 * height

    def texture(ys, xs):
        out = colour + canvas.noise(ys, 3.0)
        glass = (ys >= glass_top) & (ys < glass_bottom) & (np.abs(xs - cx + 0.01 * width) < 0.27 * width)
        out[glass] = (90, 120, 140)
        for wy, wx in wheels:
            out[(ys - wy) ** 2 + (xs - wx) ** 2 <= wheel_radius**2] = (20, 20, 22)
        return out

    canvas.add_thing(body | cabin, label, texture)


def _person(canvas: _Canvas, bottom: float, cx: float, height: float, label: int) -> None:
    rng = canvas.rng
    # Stocky figures: at the demo's 128x256, legs of realistic width would be one or two mask pixels wide (masks have a
    # quarter of the resolution), which a short training cannot segment and which made the person PQ erratic.
    width = height * rng.uniform(0.4, 0.48)
    head = canvas.ellipse(bottom - 0.89 * height, cx, 0.11 * height, 0.1 * height)
    torso = canvas.rectangle(bottom - 0.78 * height, bottom - 0.42 * height, cx - width / 2, cx + width / 2)
    legs = canvas.rectangle(bottom - 0.42 * height, bottom, cx - 0.45 * width, cx - 0.03 * width) | canvas.rectangle(
        bottom - 0.42 * height, bottom, cx + 0.03 * width, cx + 0.45 * width
    )
    shirt = np.asarray(_SHIRT_COLOURS[rng.integers(len(_SHIRT_COLOURS))], np.float32) + rng.uniform(-15, 15, 3)
    trousers = np.asarray((40, 40, 60), np.float32) + rng.uniform(-10, 10, 3)

    def texture(ys, xs):
        out = np.where((ys < bottom - 0.42 * height)[:, None], shirt, trousers) + canvas.noise(ys, 3.0)
        out[ys < bottom - 0.78 * height] = _SKIN
        return out

    canvas.add_thing(head | torso | legs, label, texture)


def _crowd(canvas: _Canvas, bottom: float, left: float, right: float, height: float, label: int) -> None:
    """A distant group of people without instance annotation (a Cityscapes "crowd" region)."""
    stripes = canvas.rng.integers(len(_SHIRT_COLOURS), size=int(right - left) + 2)

    def texture(ys, xs):
        colour = np.asarray(_SHIRT_COLOURS, np.float32)[stripes[((xs - left) // 2).astype(int)]]
        colour[ys >= bottom - 0.45 * height] = (40, 40, 60)
        colour[ys < bottom - 0.85 * height] = _SKIN
        return colour + canvas.noise(ys, 3.0)

    canvas.add_thing(canvas.rectangle(bottom - height, bottom, left, right), label, texture, crowd=True)


def _skyline(canvas: _Canvas, horizon: int, building: int, vegetation: int) -> None:
    """Buildings (with window grids) and trees (with wavy tops) standing on the horizon."""
    rng, height, width = canvas.rng, canvas.height, canvas.width
    x = 0
    while x < width:
        block = int(rng.integers(max(width // 10, 2), max(width // 4, 3)))
        top = rng.uniform(0.05 * height, max(horizon - 0.08 * height, 0.06 * height))
        columns = (canvas.xx >= x) & (canvas.xx < x + block) & (canvas.yy < horizon + 0.04 * height)
        if rng.random() < 0.65:
            period = (max(height // 16, 3), max(width // 40, 3))
            colour = _FACADES[rng.integers(len(_FACADES))]
            texture = canvas.grid(
                colour, (45, 50, 60), period, (period[0] // 2 + 1, period[1] // 2 + 1), (int(top), x)
            )
            canvas.paint(columns & (canvas.yy >= top), building, texture)
        else:
            wave = top + 0.04 * height * np.sin(canvas.xx / max(width / 25, 1.0) + rng.uniform(0, 6))
            canvas.paint(columns & (canvas.yy >= wave), vegetation, canvas.blotchy((60, 105, 40), 3, 14.0))
        x += block


def _street_scene(canvas: _Canvas, labels: dict[str, int], crowd: bool, ego_vehicle: bool) -> None:
    """Sky, skyline, a road in perspective with pavements and verges, cars on the road, people on it and beside it."""
    rng, height, width = canvas.rng, canvas.height, canvas.width
    yy, xx = canvas.yy, canvas.xx
    horizon = int(height * rng.uniform(0.38, 0.5))
    everything = np.ones((height, width), bool)
    canvas.paint(everything, labels["sky"], canvas.gradient((95, 145, 215), (195, 215, 235), 0, horizon))
    _skyline(canvas, horizon, labels["building"], labels["vegetation"])

    vanish = width * (0.5 + rng.uniform(-0.12, 0.12))
    depth = np.clip((yy - horizon) / max(height - horizon, 1), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom

    def road_half_width(t):
        return (0.03 + 0.5 * t) * width

    def pavement_width(t):
        return (0.01 + 0.2 * t) * width

    ground = yy >= horizon
    offset = np.abs(xx - vanish)
    if rng.random() < 0.7:
        canvas.paint(ground, labels["terrain"], canvas.blotchy((150, 165, 85), 2, 10.0))
    else:
        canvas.paint(ground, labels["vegetation"], canvas.blotchy((60, 105, 40), 3, 14.0))
    pavement = ground & (offset < road_half_width(depth) + pavement_width(depth))
    tile = (max(height // 20, 2), max(width // 24, 2))
    canvas.paint(pavement, labels["sidewalk"], canvas.grid((175, 160, 165), (130, 120, 125), tile, (1, 1)))
    road = ground & (offset < road_half_width(depth))
    road_texture = canvas.flat((85, 82, 92), noise=5.0)
    dash = max(height // 12, 2)

    def asphalt(ys, xs):
        out = road_texture(ys, xs)
        t = (ys - horizon) / max(height - horizon, 1)
        marking = (np.abs(xs - vanish) < 0.5 + 0.012 * width * t) & ((ys // dash) % 2 == 0)
        out[marking] = (225, 225, 215)
        return out

    canvas.paint(road, labels["road"], asphalt)
    background = (canvas.label.copy(), canvas.thing.copy(), canvas.image.copy())

    things = []
    # Things start at a fifth (cars) or 40 % (persons) of the way from the horizon: farther ones would be a few
    # pixels wide at the demo's 128x256, below what masks at a quarter of the resolution can separate.
    for _ in range(int(rng.integers(2, 6))):
        t = rng.uniform(0.2, 1.0)
        bottom = horizon + t * (height - horizon)
        things.append((bottom, "car", vanish + rng.uniform(-0.75, 0.75) * road_half_width(t), t))
    # Two to five persons on the pavements and crossing the road, inside the frame. Persons only beside the road were
    # mostly alone in a training crop (a quarter of the image at the demo's scale), so a short training never learnt
    # to tell two persons apart: at test time one query covered all of them.
    for _ in range(int(rng.integers(2, 6))):
        t = rng.uniform(0.4, 1.0)
        reach = road_half_width(t) + 0.85 * pavement_width(t)
        cx = np.clip(vanish + rng.uniform(-1.0, 1.0) * reach, 0.06 * width, 0.94 * width)
        things.append((horizon + t * (height - horizon), "person", cx, t))
    if crowd and rng.random() < 0.4:
        things.append((horizon + 0.06 * (height - horizon), "crowd", vanish, 0.06))
    for bottom, kind, cx, t in sorted(things, key=lambda thing: thing[0]):  # far to near
        scale = 0.25 + 0.75 * t
        if kind == "car":
            _car(canvas, bottom, cx, width * 0.24 * scale * rng.uniform(0.85, 1.15), labels["car"])
        elif kind == "person":
            _person(canvas, bottom, cx, height * 0.6 * scale * rng.uniform(0.85, 1.15), labels["person"])
        else:
            left = cx + rng.uniform(0.1, 0.2) * width * rng.choice((-1, 1))
            _crowd(canvas, bottom, left, left + 0.12 * width, 0.08 * height, labels["person"])
    canvas.drop_hidden_things(background, min_visible=0.35)

    if ego_vehicle and rng.random() < 0.5:
        hood = 0.07 * height
        bonnet = yy > height - hood + 0.6 * hood * ((xx - width / 2) / (width / 2)) ** 2
        canvas.paint(bonnet, _CS_EGO_VEHICLE, canvas.flat((40, 45, 55)))


def _room_scene(canvas: _Canvas) -> None:
    """Ceiling, wall and floor with windows, paintings, a door, furniture, a rug and people."""
    rng, height, width = canvas.rng, canvas.height, canvas.width
    yy = canvas.yy
    ceiling = height * rng.uniform(0.08, 0.18)
    floor = height * rng.uniform(0.6, 0.72)
    everything = np.ones((height, width), bool)
    canvas.paint(everything, _ADE_WALL, canvas.flat((200, 190, 170), noise=3.0, jitter=20.0))
    canvas.paint(yy < ceiling, _ADE_CEILING, canvas.flat((235, 235, 228), noise=2.0))
    planks = (max(height // 24, 2), width * 4)
    canvas.paint(yy >= floor, _ADE_FLOOR, canvas.grid((140, 95, 60), (105, 70, 45), planks, (1, width * 4)))
    if rng.random() < 0.5:
        rug = canvas.ellipse(
            floor + 0.55 * (height - floor), width * rng.uniform(0.3, 0.7), 0.3 * (height - floor), 0.25 * width
        )
        canvas.paint(rug & (yy >= floor), _ADE_RUG, canvas.blotchy((150, 40, 60), 2, 12.0))
    background = (canvas.label.copy(), canvas.thing.copy(), canvas.image.copy())

    for _ in range(int(rng.integers(1, 3))):
        w, h = width * rng.uniform(0.12, 0.2), height * rng.uniform(0.18, 0.28)
        left, top = rng.uniform(0, width - w), rng.uniform(ceiling + 2, floor - h - 4)
        pane = (max(int(h) // 2, 2), max(int(w) // 2, 2))
        window = canvas.grid((170, 210, 240), (240, 240, 240), pane, (2, 2), (int(top), int(left)))
        canvas.add_thing(canvas.rectangle(top, top + h, left, left + w), _ADE_WINDOW, window)
    for _ in range(int(rng.integers(0, 3))):
        w, h = width * rng.uniform(0.07, 0.12), height * rng.uniform(0.08, 0.14)
        left, top = rng.uniform(0, width - w), rng.uniform(ceiling + 2, floor - h - 4)
        canvas.add_thing(
            canvas.rectangle(top, top + h, left, left + w), _ADE_PAINTING, canvas.blotchy((120, 90, 60), 2, 40.0)
        )
    if rng.random() < 0.5:
        w = width * 0.12
        left = rng.choice((rng.uniform(0, 0.15), rng.uniform(0.73, 0.85))) * width
        canvas.add_thing(
            canvas.rectangle(floor - 0.45 * height, floor + 2, left, left + w), _ADE_DOOR, canvas.flat((110, 70, 40))
        )
    furniture = [(_ADE_BED, 0.35, 0.16, (230, 230, 240))] if rng.random() < 0.4 else []
    furniture += [(_ADE_TABLE, 0.18, 0.1, (160, 110, 70))] * int(rng.integers(0, 3))
    furniture += [(_ADE_CHAIR, 0.08, 0.16, (90, 60, 40))] * int(rng.integers(0, 4))
    placed = []
    for label, w, h, colour in furniture:
        bottom = rng.uniform(floor + 0.1 * (height - floor), height)
        placed.append((bottom, label, rng.uniform(0.05, 0.95) * width, w * width, h * height, colour))
    for _ in range(int(rng.integers(0, 3))):
        bottom = rng.uniform(floor + 0.1 * (height - floor), height)
        placed.append((bottom, _ADE_PERSON, rng.uniform(0.1, 0.9) * width, 0.0, 0.0, None))
    for bottom, label, cx, w, h, colour in sorted(placed, key=lambda thing: thing[0]):
        scale = 0.6 + 0.4 * (bottom - floor) / max(height - floor, 1)
        if label == _ADE_PERSON:
            _person(canvas, bottom, cx, 0.55 * height * scale, _ADE_PERSON)
            continue
        w, h = w * scale, h * scale
        shape = canvas.rectangle(bottom - h, bottom - 0.7 * h, cx - w / 2, cx + w / 2)  # top
        for leg in (cx - w / 2, cx + w / 2 - max(w * 0.12, 1.5)):
            shape |= canvas.rectangle(bottom - 0.7 * h, bottom, leg, leg + max(w * 0.12, 1.5))
        if label in (_ADE_BED, _ADE_CHAIR):
            shape |= canvas.rectangle(
                bottom - h * (1.7 if label == _ADE_CHAIR else 1.3),
                bottom - 0.7 * h,
                cx - w / 2,
                cx - w / 2 + max(w * 0.15, 2),
            )
        canvas.add_thing(shape, label, canvas.flat(colour, noise=4.0))
    canvas.drop_hidden_things(background, min_visible=0.35)
    if rng.random() < 0.5:  # clutter nobody annotated: "other"
        blob = canvas.ellipse(rng.uniform(floor, height), rng.uniform(0, width), 0.04 * height, 0.05 * width)
        canvas.paint(blob, _ADE_OTHER, canvas.flat((90, 140, 90), noise=10.0))


def _cityscapes_maps(canvas: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    """labelIds and instanceIds (`labelId * 1000 + k` per thing instance, `labelId` for stuff and crowds)."""
    label_ids = canvas.label.astype(np.uint8)
    instance_ids = canvas.label.astype(np.uint16)
    counters: dict[int, int] = {}
    for index, (label, crowd, _) in enumerate(canvas.things):
        mask = canvas.thing == index
        if crowd or not mask.any():
            continue
        k = counters.get(label, 0)
        counters[label] = k + 1
        instance_ids[mask] = label * 1000 + k
    return label_ids, instance_ids


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Encodes panoptic segment ids as RGB (COCO panoptic format): `id = R + 256 * G + 256**2 * B`."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, compress_level=1)


def generate_cityscapes(
    output_dir: str | Path,
    num_train: int = 8,
    num_val: int = 4,
    size: tuple[int, int] = (128, 256),
    seed: int = 0,
) -> Path:
    """
    Writes a synthetic dataset in the Cityscapes layout (see the module docstring) and returns its root.

    Scenes use road, sidewalk, building, vegetation, terrain and sky as stuff, cars and persons as things, a few
    "crowd" person groups (instanceIds value 24, `iscrowd` 1) and an ego-vehicle bonnet (label id 1, ignored).

    Args:
        output_dir: Root folder to create (it will hold `leftImg8bit/` and `gtFine/`).
        num_train, num_val: Number of images in the `train` and `val` splits.
        size: `(height, width)` of every image.
        seed: Seed of the scenes; image `i` of a split depends only on `(seed, split, i)`.
    """
    root = Path(output_dir)
    height, width = _check_size(size)
    train_ids = {label_id: train_id for train_id, (_, _, _, label_id) in enumerate(CITYSCAPES_LABELS)}
    lut = np.full(256, 255, np.uint8)
    lut[list(train_ids)] = list(train_ids.values())
    labels = {"road": _CS_ROAD, "sidewalk": _CS_SIDEWALK, "building": _CS_BUILDING, "vegetation": _CS_VEGETATION}
    labels.update({"terrain": _CS_TERRAIN, "sky": _CS_SKY, "car": _CS_CAR, "person": _CS_PERSON})
    categories = [
        {"id": label_id, "name": name, "color": list(colour), "supercategory": _CS_SUPERCATEGORY[label_id]}
        | {"isthing": int(isthing)}
        for name, colour, isthing, label_id in CITYSCAPES_LABELS
    ]
    thing_label_ids = {label_id for _, _, isthing, label_id in CITYSCAPES_LABELS if isthing}
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        panoptic_dir = root / "gtFine" / f"cityscapes_panoptic_{split}"
        panoptic_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            city = _CS_CITIES[split][index % 3]
            stem = f"{city}_{index // 3:06d}_000019"
            image_dir = root / "leftImg8bit" / split / city
            label_dir = root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)

            canvas = _Canvas(height, width, np.random.default_rng([seed, split_index, index]))
            _street_scene(canvas, labels, crowd=True, ego_vehicle=True)
            label_ids, instance_ids = _cityscapes_maps(canvas)
            _save_png(canvas.finish(), image_dir / f"{stem}_leftImg8bit.png")
            _save_png(label_ids, label_dir / f"{stem}_gtFine_labelIds.png")
            _save_png(lut[label_ids], label_dir / f"{stem}_gtFine_labelTrainIds.png")
            _save_png(instance_ids, label_dir / f"{stem}_gtFine_instanceIds.png")

            # The panoptic conversion of cityscapesscripts (createPanopticImgs): segment id = instanceIds value.
            segments_info = []
            for segment_id in np.unique(instance_ids):
                label_id = int(segment_id) // 1000 if segment_id >= 1000 else int(segment_id)
                if label_id not in train_ids:
                    continue
                mask = instance_ids == segment_id
                segments_info.append(
                    {
                        "id": int(segment_id),
                        "category_id": label_id,
                        "area": int(mask.sum()),
                        "bbox": _bbox(mask),
                        "iscrowd": int(segment_id < 1000 and label_id in thing_label_ids),
                    }
                )
            panoptic = np.where(lut[label_ids][..., None] == 255, 0, id_to_rgb(instance_ids)).astype(np.uint8)
            _save_png(panoptic, panoptic_dir / f"{stem}_gtFine_panoptic.png")
            # createPanopticImgs names the image "<stem>_gtFine_leftImg8bit.png" (sic).
            images.append(
                {"id": stem, "width": width, "height": height, "file_name": f"{stem}_gtFine_leftImg8bit.png"}
            )
            annotations.append(
                {"image_id": stem, "file_name": f"{stem}_gtFine_panoptic.png", "segments_info": segments_info}
            )
        # Listed in the order of createPanopticImgs (sorted file paths).
        images.sort(key=lambda image: image["id"])
        annotations.sort(key=lambda annotation: annotation["image_id"])
        with open(root / "gtFine" / f"cityscapes_panoptic_{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f, sort_keys=True)
    return root


def generate_ade20k(
    output_dir: str | Path,
    num_train: int = 8,
    num_val: int = 4,
    size: tuple[int, int] = (128, 160),
    seed: int = 0,
) -> Path:
    """
    Writes a synthetic dataset in the ADE20K (ADEChallengeData2016 + panoptic) layout and returns the
    `ADEChallengeData2016` folder.

    Half of the scenes are rooms (wall, ceiling, floor, rug as stuff; windows, paintings, doors, beds, tables,
    chairs and persons as things, and unannotated clutter stored as 0 = "other"), half are streets (sky, building,
    tree, road, sidewalk, grass; cars and persons). Image widths vary by +-25% around `size[1]`, as ADE20K image sizes
    vary. Panoptic segment ids follow the official `prepare_ade20k_pan_seg.py` (panopticapi `IdGenerator`): stuff
    segments take their class colour, the first instance of a thing class its class colour, later ones a jittered
    colour.

    Args:
        output_dir: Folder to create `ADEChallengeData2016/` in.
        num_train, num_val: Number of images in the `training` and `validation` splits.
        size: `(height, width)` of the images (the width varies per image).
        seed: Seed of the scenes; image `i` of a split depends only on `(seed, split, i)`.
    """
    root = Path(output_dir) / "ADEChallengeData2016"
    height, width = _check_size(size)
    labels = {"road": _ADE_ROAD, "sidewalk": _ADE_SIDEWALK, "building": _ADE_BUILDING, "vegetation": _ADE_TREE}
    labels.update({"terrain": _ADE_GRASS, "sky": _ADE_SKY, "car": _ADE_CAR, "person": _ADE_PERSON})
    categories = [
        {"name": name, "id": index, "isthing": int(isthing), "color": list(colour)}
        for index, (name, colour, isthing, _) in enumerate(ADE20K_LABELS)
    ]
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        folder = _ADE_SPLITS[split]
        for sub in (f"images/{folder}", f"annotations/{folder}", f"ade20k_panoptic_{split}"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            image_width = int(round(width * rng.uniform(0.75, 1.25)))
            canvas = _Canvas(height, image_width, rng)
            if rng.random() < 0.5:
                _room_scene(canvas)
            else:
                _street_scene(canvas, labels, crowd=False, ego_vehicle=False)
            stem = f"ADE_{split}_{index + 1:08d}"
            Image.fromarray(canvas.finish()).save(root / "images" / folder / f"{stem}.jpg", quality=95)
            _save_png((canvas.label + 1).astype(np.uint8), root / "annotations" / folder / f"{stem}.png")

            segments_info, panoptic = [], np.zeros((height, image_width, 3), np.uint8)
            taken = {(0, 0, 0)}
            stuff = (canvas.thing < 0) & (canvas.label >= 0)
            for label in np.unique(canvas.label[stuff]):
                colour = tuple(ADE20K_LABELS[label][1])
                taken.add(colour)
                segments_info.append(_ade_segment(stuff & (canvas.label == label), int(label), colour, panoptic))
            for thing_index, (label, _, _) in enumerate(canvas.things):
                mask = canvas.thing == thing_index
                if not mask.any():
                    continue
                colour = tuple(ADE20K_LABELS[label][1])
                while colour in taken:
                    colour = tuple(
                        int(c) for c in np.clip(np.asarray(ADE20K_LABELS[label][1]) + rng.integers(-30, 31, 3), 0, 255)
                    )
                taken.add(colour)
                segments_info.append(_ade_segment(mask, label, colour, panoptic))
            _save_png(panoptic, root / f"ade20k_panoptic_{split}" / f"{stem}.png")
            images.append({"id": stem, "file_name": f"{stem}.jpg", "width": image_width, "height": height})
            annotations.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments_info})
        with open(root / f"ade20k_panoptic_{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return root


def _ade_segment(mask: np.ndarray, label: int, colour: tuple[int, int, int], panoptic: np.ndarray) -> dict:
    panoptic[mask] = colour
    segment_id = colour[0] + 256 * colour[1] + 65536 * colour[2]
    return {"id": segment_id, "category_id": label, "area": int(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0}


def _check_size(size) -> tuple[int, int]:
    height, width = (int(s) for s in size)
    if height < 32 or width < 32:
        raise ValueError(f"`size` must be (height, width) with both at least 32 pixels, got {tuple(size)}.")
    return height, width


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic Cityscapes- or ADE20K-layout dataset.")
    parser.add_argument("--layout", choices=("cityscapes", "ade20k"), required=True)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=8)
    parser.add_argument("--num-val", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generate = generate_cityscapes if args.layout == "cityscapes" else generate_ade20k
    size = args.size or ((128, 256) if args.layout == "cityscapes" else (128, 160))
    root = generate(args.out, num_train=args.num_train, num_val=args.num_val, size=size, seed=args.seed)
    print(f"Wrote {args.num_train} train and {args.num_val} val images to {root}")


if __name__ == "__main__":
    main()
