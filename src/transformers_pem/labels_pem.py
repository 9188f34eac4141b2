"""Label sets of the datasets PEM was trained on (names, colours, thing flags, dataset ids).

Data, generated from `cityscapesscripts.helpers.labels` (Cityscapes, 19 train ids) and the official PEM
`ADE20K_150_CATEGORIES` list (ADE20K, 150 classes). A label's list index is the model's class index.
"""

from collections.abc import Mapping
from typing import NamedTuple


class Label(NamedTuple):
    """One class of a dataset: its name, palette colour, whether it is a thing (countable instances) and its id in
    the dataset's own files (Cityscapes label id, ADE20K class index)."""

    name: str
    color: tuple[int, int, int]
    isthing: bool
    dataset_id: int


CITYSCAPES_LABELS: list[Label] = [
    Label("road", (128, 64, 128), False, 7),
    Label("sidewalk", (244, 35, 232), False, 8),
    Label("building", (70, 70, 70), False, 11),
    Label("wall", (102, 102, 156), False, 12),
    Label("fence", (190, 153, 153), False, 13),
    Label("pole", (153, 153, 153), False, 17),
    Label("traffic light", (250, 170, 30), False, 19),
    Label("traffic sign", (220, 220, 0), False, 20),
    Label("vegetation", (107, 142, 35), False, 21),
    Label("terrain", (152, 251, 152), False, 22),
    Label("sky", (70, 130, 180), False, 23),
    Label("person", (220, 20, 60), True, 24),
    Label("rider", (255, 0, 0), True, 25),
    Label("car", (0, 0, 142), True, 26),
    Label("truck", (0, 0, 70), True, 27),
    Label("bus", (0, 60, 100), True, 28),
    Label("train", (0, 80, 100), True, 31),
    Label("motorcycle", (0, 0, 230), True, 32),
    Label("bicycle", (119, 11, 32), True, 33),
]

ADE20K_LABELS: list[Label] = [
    Label("wall", (120, 120, 120), False, 0),
    Label("building", (180, 120, 120), False, 1),
    Label("sky", (6, 230, 230), False, 2),
    Label("floor", (80, 50, 50), False, 3),
    Label("tree", (4, 200, 3), False, 4),
    Label("ceiling", (120, 120, 80), False, 5),
    Label("road, route", (140, 140, 140), False, 6),
    Label("bed", (204, 5, 255), True, 7),
    Label("window ", (230, 230, 230), True, 8),
    Label("grass", (4, 250, 7), False, 9),
    Label("cabinet", (224, 5, 255), True, 10),
    Label("sidewalk, pavement", (235, 255, 7), False, 11),
    Label("person", (150, 5, 61), True, 12),
    Label("earth, ground", (120, 120, 70), False, 13),
    Label("door", (8, 255, 51), True, 14),
    Label("table", (255, 6, 82), True, 15),
    Label("mountain, mount", (143, 255, 140), False, 16),
    Label("plant", (204, 255, 4), False, 17),
    Label("curtain", (255, 51, 7), True, 18),
    Label("chair", (204, 70, 3), True, 19),
    Label("car", (0, 102, 200), True, 20),
    Label("water", (61, 230, 250), False, 21),
    Label("painting, picture", (255, 6, 51), True, 22),
    Label("sofa", (11, 102, 255), True, 23),
    Label("shelf", (255, 7, 71), True, 24),
    Label("house", (255, 9, 224), False, 25),
    Label("sea", (9, 7, 230), False, 26),
    Label("mirror", (220, 220, 220), True, 27),
    Label("rug", (255, 9, 92), False, 28),
    Label("field", (112, 9, 255), False, 29),
    Label("armchair", (8, 255, 214), True, 30),
    Label("seat", (7, 255, 224), True, 31),
    Label("fence", (255, 184, 6), True, 32),
    Label("desk", (10, 255, 71), True, 33),
    Label("rock, stone", (255, 41, 10), False, 34),
    Label("wardrobe, closet, press", (7, 255, 255), True, 35),
    Label("lamp", (224, 255, 8), True, 36),
    Label("tub", (102, 8, 255), True, 37),
    Label("rail", (255, 61, 6), True, 38),
    Label("cushion", (255, 194, 7), True, 39),
    Label("base, pedestal, stand", (255, 122, 8), False, 40),
    Label("box", (0, 255, 20), True, 41),
    Label("column, pillar", (255, 8, 41), True, 42),
    Label("signboard, sign", (255, 5, 153), True, 43),
    Label("chest of drawers, chest, bureau, dresser", (6, 51, 255), True, 44),
    Label("counter", (235, 12, 255), True, 45),
    Label("sand", (160, 150, 20), False, 46),
    Label("sink", (0, 163, 255), True, 47),
    Label("skyscraper", (140, 140, 140), False, 48),
    Label("fireplace", (250, 10, 15), True, 49),
    Label("refrigerator, icebox", (20, 255, 0), True, 50),
    Label("grandstand, covered stand", (31, 255, 0), False, 51),
    Label("path", (255, 31, 0), False, 52),
    Label("stairs", (255, 224, 0), True, 53),
    Label("runway", (153, 255, 0), False, 54),
    Label("case, display case, showcase, vitrine", (0, 0, 255), True, 55),
    Label("pool table, billiard table, snooker table", (255, 71, 0), True, 56),
    Label("pillow", (0, 235, 255), True, 57),
    Label("screen door, screen", (0, 173, 255), True, 58),
    Label("stairway, staircase", (31, 0, 255), False, 59),
    Label("river", (11, 200, 200), False, 60),
    Label("bridge, span", (255, 82, 0), False, 61),
    Label("bookcase", (0, 255, 245), True, 62),
    Label("blind, screen", (0, 61, 255), False, 63),
    Label("coffee table", (0, 255, 112), True, 64),
    Label("toilet, can, commode, crapper, pot, potty, stool, throne", (0, 255, 133), True, 65),
    Label("flower", (255, 0, 0), True, 66),
    Label("book", (255, 163, 0), True, 67),
    Label("hill", (255, 102, 0), False, 68),
    Label("bench", (194, 255, 0), True, 69),
    Label("countertop", (0, 143, 255), True, 70),
    Label("stove", (51, 255, 0), True, 71),
    Label("palm, palm tree", (0, 82, 255), True, 72),
    Label("kitchen island", (0, 255, 41), True, 73),
    Label("computer", (0, 255, 173), True, 74),
    Label("swivel chair", (10, 0, 255), True, 75),
    Label("boat", (173, 255, 0), True, 76),
    Label("bar", (0, 255, 153), False, 77),
    Label("arcade machine", (255, 92, 0), True, 78),
    Label("hovel, hut, hutch, shack, shanty", (255, 0, 255), False, 79),
    Label("bus", (255, 0, 245), True, 80),
    Label("towel", (255, 0, 102), True, 81),
    Label("light", (255, 173, 0), True, 82),
    Label("truck", (255, 0, 20), True, 83),
    Label("tower", (255, 184, 184), False, 84),
    Label("chandelier", (0, 31, 255), True, 85),
    Label("awning, sunshade, sunblind", (0, 255, 61), True, 86),
    Label("street lamp", (0, 71, 255), True, 87),
    Label("booth", (255, 0, 204), True, 88),
    Label("tv", (0, 255, 194), True, 89),
    Label("plane", (0, 255, 82), True, 90),
    Label("dirt track", (0, 10, 255), False, 91),
    Label("clothes", (0, 112, 255), True, 92),
    Label("pole", (51, 0, 255), True, 93),
    Label("land, ground, soil", (0, 194, 255), False, 94),
    Label("bannister, banister, balustrade, balusters, handrail", (0, 122, 255), True, 95),
    Label("escalator, moving staircase, moving stairway", (0, 255, 163), False, 96),
    Label("ottoman, pouf, pouffe, puff, hassock", (255, 153, 0), True, 97),
    Label("bottle", (0, 255, 10), True, 98),
    Label("buffet, counter, sideboard", (255, 112, 0), False, 99),
    Label("poster, posting, placard, notice, bill, card", (143, 255, 0), False, 100),
    Label("stage", (82, 0, 255), False, 101),
    Label("van", (163, 255, 0), True, 102),
    Label("ship", (255, 235, 0), True, 103),
    Label("fountain", (8, 184, 170), True, 104),
    Label("conveyer belt, conveyor belt, conveyer, conveyor, transporter", (133, 0, 255), False, 105),
    Label("canopy", (0, 255, 92), False, 106),
    Label("washer, automatic washer, washing machine", (184, 0, 255), True, 107),
    Label("plaything, toy", (255, 0, 31), True, 108),
    Label("pool", (0, 184, 255), False, 109),
    Label("stool", (0, 214, 255), True, 110),
    Label("barrel, cask", (255, 0, 112), True, 111),
    Label("basket, handbasket", (92, 255, 0), True, 112),
    Label("falls", (0, 224, 255), False, 113),
    Label("tent", (112, 224, 255), False, 114),
    Label("bag", (70, 184, 160), True, 115),
    Label("minibike, motorbike", (163, 0, 255), True, 116),
    Label("cradle", (153, 0, 255), False, 117),
    Label("oven", (71, 255, 0), True, 118),
    Label("ball", (255, 0, 163), True, 119),
    Label("food, solid food", (255, 204, 0), True, 120),
    Label("step, stair", (255, 0, 143), True, 121),
    Label("tank, storage tank", (0, 255, 235), False, 122),
    Label("trade name", (133, 255, 0), True, 123),
    Label("microwave", (255, 0, 235), True, 124),
    Label("pot", (245, 0, 255), True, 125),
    Label("animal", (255, 0, 122), True, 126),
    Label("bicycle", (255, 245, 0), True, 127),
    Label("lake", (10, 190, 212), False, 128),
    Label("dishwasher", (214, 255, 0), True, 129),
    Label("screen", (0, 204, 255), True, 130),
    Label("blanket, cover", (20, 0, 255), False, 131),
    Label("sculpture", (255, 255, 0), True, 132),
    Label("hood, exhaust hood", (0, 153, 255), True, 133),
    Label("sconce", (0, 41, 255), True, 134),
    Label("vase", (0, 255, 204), True, 135),
    Label("traffic light", (41, 0, 255), True, 136),
    Label("tray", (41, 255, 0), True, 137),
    Label("trash can", (173, 0, 255), True, 138),
    Label("fan", (0, 245, 255), True, 139),
    Label("pier", (71, 0, 255), False, 140),
    Label("crt screen", (122, 0, 255), False, 141),
    Label("plate", (0, 255, 184), True, 142),
    Label("monitor", (0, 92, 255), True, 143),
    Label("bulletin board", (184, 255, 0), True, 144),
    Label("shower", (0, 133, 255), False, 145),
    Label("radiator", (255, 214, 0), True, 146),
    Label("glass, drinking glass", (25, 194, 194), True, 147),
    Label("clock", (102, 255, 0), True, 148),
    Label("flag", (92, 0, 255), True, 149),
]

DATASET_LABELS: dict[str, list[Label]] = {"cityscapes": CITYSCAPES_LABELS, "ade20k": ADE20K_LABELS}


def dataset_for(id2label: Mapping[int, str]) -> str | None:
    """The dataset (a key of `DATASET_LABELS`) whose class names are exactly `id2label`'s, in order, or `None`."""
    names = [id2label[index] for index in range(len(id2label))]
    return next((name for name, labels in DATASET_LABELS.items() if [label.name for label in labels] == names), None)


def thing_ids_of(dataset: str) -> list[int]:
    """Class indices of the thing classes of a dataset of `DATASET_LABELS`."""
    return [index for index, label in enumerate(DATASET_LABELS[dataset]) if label.isthing]


def reduce_labels(classes, ignore_index: int):
    """ADE20K-style semantic maps, where 0 means "other": 0 becomes `ignore_index`, class `c` becomes `c - 1`, and
    `ignore_index` stays ignored. Works on numpy arrays and torch tensors of integer class ids."""
    ignored = (classes == 0) | (classes == ignore_index)
    reduced = classes - 1
    reduced[ignored] = ignore_index
    return reduced
