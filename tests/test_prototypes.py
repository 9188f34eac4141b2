"""Prototype visualisation: the token positions of `output_prototype_indices` and the drawings that mark them (the
indices themselves are checked against the official code in test_parity.py)."""

from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_configs import TINY_DECODER, TINY_STDC

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor, draw_prototypes
from transformers_pem.visualization.prototypes import (
    draw_prototype_panel,
    head_colours,
    kept_queries,
    padded_input_size,
    prototype_locations,
)


def test_prototype_locations_are_the_token_centres_of_each_layers_level():
    # A 64x96 padded input: levels of 2x3 (stride 32), 4x6 (16) and 8x12 (8) tokens, cycled through by the layers.
    indices = (
        torch.tensor([[[4, 0]]]),
        torch.tensor([[[7, 23]]]),
        torch.tensor([[[13, 95]]]),
        torch.tensor([[[5, 0]]]),
    )
    locations = prototype_locations(indices, (64, 96))
    expected = [
        [[48.0, 48.0], [16.0, 16.0]],  # token 4 = row 1, column 1; token 0
        [[24.0, 24.0], [56.0, 88.0]],  # token 7 = row 1, column 1; token 23 = row 3, column 5
        [[12.0, 12.0], [60.0, 92.0]],  # token 13 = row 1, column 1; token 95 = row 7, column 11
        [[48.0, 80.0], [16.0, 16.0]],  # layer 4 attends to stride 32 again: token 5 = row 1, column 2
    ]
    for layer, positions in zip(locations, expected):
        assert layer.shape == (1, 1, 2, 2)
        assert layer[0, 0].tolist() == positions
    assert padded_input_size(torch.zeros(1, 8, 16, 24)) == (64, 96)
    assert padded_input_size(torch.zeros(1, 8, 13, 19)) == (64, 96)  # an unpadded 50x75 input, masks of ceil(h / 4)


def test_the_panel_marks_exactly_the_given_locations():
    image = PIL.Image.new("RGB", (100, 80), (200, 200, 200))
    locations = torch.tensor([[10.0, 10.0], [50.0, 50.0], [70.0, 30.0], [50.0, 50.0]])
    panel = np.asarray(draw_prototype_panel(image, locations, radius=3))
    colours = head_colours(4)
    assert tuple(panel[10, 10]) == colours[0] and tuple(panel[70, 30]) == colours[2]
    assert tuple(panel[50, 50]) == colours[3]  # heads 1 and 3 chose the same token: the later one is on top
    background = tuple(int(200 * 0.55) for _ in range(3))
    marked = np.any(panel != background, axis=-1)
    rows, columns = np.nonzero(marked)
    # Nothing is drawn away from the markers (radius 3 plus the outline).
    for y, x in zip(rows, columns):
        assert min(abs(y - cy) + abs(x - cx) for cy, cx in [(10, 10), (50, 50), (70, 30)]) <= 8


@pytest.fixture(scope="module")
def model_and_outputs():
    torch.manual_seed(0)
    config = PEMConfig.from_preset("pem-stdc1-cityscapes-panoptic", **TINY_STDC, **TINY_DECODER, decoder_layers=3)
    model = PEMForUniversalSegmentation(config).eval()
    processor = PEMImageProcessor.from_preset(
        "pem-stdc1-cityscapes-panoptic", model_config=config, size={"shortest_edge": 64, "longest_edge": 128}
    )
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 75, 3), dtype=np.uint8))
    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, output_prototype_indices=True)
    return model, image, inputs, outputs


def test_the_model_returns_one_index_per_layer_head_and_query(model_and_outputs):
    model, _, inputs, outputs = model_and_outputs
    config = model.config
    assert len(outputs.prototype_indices) == config.decoder_layers
    padded = inputs["pixel_values"].shape[-2:]
    for layer, indices in enumerate(outputs.prototype_indices):
        assert indices.shape == (1, config.num_attention_heads, config.num_queries)
        stride = 32 // 2 ** (layer % 3)
        assert 0 <= int(indices.min()) and int(indices.max()) < (padded[0] // stride) * (padded[1] // stride)
    with torch.no_grad():
        assert model(**inputs).prototype_indices is None


def test_draw_prototypes_marks_each_heads_token_in_each_layer(model_and_outputs):
    model, image, inputs, outputs = model_and_outputs
    queries = [0, 5]
    panel_width = 150
    drawing = np.asarray(draw_prototypes(image, outputs, queries=queries, id2label=model.config.id2label,
                                         panel_width=panel_width))  # fmt: skip
    height = round(image.height * panel_width / image.width)
    caption, gap = 18, 4
    layers = model.config.decoder_layers
    assert drawing.shape == (len(queries) * (height + caption + gap), (1 + layers) * (panel_width + gap), 3)
    # The processed image is 64x96 (resized from 50x75, not padded): panel pixels = processed pixels * 150 / 96.
    valid = (64, 96)
    colours = head_colours(model.config.num_attention_heads)
    locations = prototype_locations(outputs.prototype_indices, padded_input_size(outputs.masks_queries_logits))
    for row, query in enumerate(queries):
        for layer in range(layers):
            points = (
                locations[layer][0, :, query] * torch.tensor([height / valid[0], panel_width / valid[1]])
            ).tolist()
            top, left = row * (height + caption + gap) + caption, (layer + 1) * (panel_width + gap)
            for head, (y, x) in enumerate(points):
                later = [h for h in range(head + 1, len(points)) if abs(points[h][0] - y) + abs(points[h][1] - x) < 8]
                if not later:  # not covered by a later head's marker
                    assert tuple(drawing[top + round(y), left + round(x)]) == colours[head], (query, layer, head)


def test_kept_queries_and_clear_errors(model_and_outputs):
    _, image, _, outputs = model_and_outputs
    logits = torch.full((1, 4, 20), -10.0)
    logits[0, 0, 3], logits[0, 1, 19], logits[0, 3, 7] = 10.0, 10.0, 9.0
    logits[0, 2, 5] = logits[0, 2, 6] = 1.0  # two classes at 0.5 each
    fake = SimpleNamespace(class_queries_logits=logits)
    assert kept_queries(fake) == [0, 3]  # query 1 is "no object", query 2 not confident
    with pytest.raises(ValueError, match="output_prototype_indices=True"):
        draw_prototypes(image, SimpleNamespace(prototype_indices=None))
