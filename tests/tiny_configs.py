"""Model sizes and tiny checkpoints shared by the tests (importable from test files: pytest puts `tests/` on the
path)."""

from pathlib import Path

import numpy as np

# The head of the official-code reference fixtures (tests/fixtures/parity, README "Case 1"): CONVS_DIM 16, MASK_DIM 32,
# HIDDEN_DIM 32, 10 queries, 4 heads, FFN 64.
PARITY_HEAD = {
    "conv_dim": 16,
    "mask_dim": 32,
    "hidden_dim": 32,
    "num_queries": 10,
    "num_attention_heads": 4,
    "dim_feedforward": 64,
}

# A tiny decoder for behaviour tests: fast on CPU, every code path of the full-size model.
TINY_DECODER = {
    "conv_dim": 16,
    "mask_dim": 16,
    "hidden_dim": 32,
    "num_queries": 8,
    "num_attention_heads": 4,
    "dim_feedforward": 32,
}

# A tiny STDC backbone (1 block per stage, 16 channels).
TINY_STDC = {"backbone_config": {"model_type": "stdc", "base_channels": 16, "layers": [1, 1, 1]}}

# Tiny backbones of the kinds PEM takes (STDC with either block, transformers' ResNet, timm's tiny ResNet), each giving
# four feature maps at strides 4 to 32, as config dicts (`PEMConfig(backbone_config=...)` builds a fresh config).
TINY_BACKBONES = {
    "stdc": TINY_STDC["backbone_config"],
    "stdc-add": {**TINY_STDC["backbone_config"], "block_type": "add"},
    "resnet": {
        "model_type": "resnet",
        "depths": [1, 1, 1, 1],
        "hidden_sizes": [16, 24, 32, 48],
        "embedding_size": 16,
        "layer_type": "basic",
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    },
    "timm": {"model_type": "timm_backbone", "backbone": "test_resnet", "out_indices": [1, 2, 3, 4], "num_channels": 3},
}


def save_confident_cityscapes_checkpoint(directory: Path, shortest_edge: int = 64, backbone: str = "stdc"):
    """A tiny Cityscapes PEM (a `TINY_BACKBONES` backbone) whose queries are confident of road, car or person, saved
    with its processor (low panoptic thresholds, so that its random masks give segments). Returns the model and the
    processor."""
    import torch

    from transformers_pem import PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor

    torch.manual_seed(0)
    config = PEMConfig.from_preset(
        "pem-stdc1-cityscapes-panoptic", backbone_config=TINY_BACKBONES[backbone], **TINY_DECODER
    )
    model = PEMForUniversalSegmentation(config).eval()
    with torch.no_grad():
        bias = torch.full((20,), -4.0)
        bias[[0, 13, 11]] = torch.tensor([6.0, 5.0, 4.0])
        model.class_predictor.bias.copy_(bias)
    processor = PEMImageProcessor.from_preset(
        "pem-stdc1-cityscapes-panoptic",
        model_config=config,
        size={"shortest_edge": shortest_edge, "longest_edge": 2 * shortest_edge},
        object_mask_threshold=0.2,
        overlap_threshold=0.2,
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


def assert_close_relative(actual, expected, tolerance: float = 1e-4) -> None:
    """|actual - expected| <= tolerance * max(1, |expected|) elementwise."""
    assert actual.shape == expected.shape
    bound = tolerance * expected.abs().clamp(min=1)
    excess = ((actual - expected).abs() - bound).max().item()
    assert excess <= 0, f"differs beyond {tolerance} relative: max excess {excess}"


def backbone_model(backbone: str, num_labels: int = 19):
    """A full-size preset backbone (R50, STDC1, STDC2) or a timm ResNet-18 with the tiny decoder; trained-like running
    statistics, so that folding BatchNorm into the exported graph changes the weights."""
    import torch
    from transformers import TimmBackboneConfig

    from transformers_pem import PEMConfig, PEMForUniversalSegmentation

    torch.manual_seed(0)
    dataset = "cityscapes" if num_labels == 19 else "ade20k"
    if backbone == "timm":
        timm_backbone = TimmBackboneConfig(backbone="resnet18", out_indices=[1, 2, 3, 4], num_channels=3)
        config = PEMConfig(backbone_config=timm_backbone, **TINY_DECODER, num_labels=num_labels)
    else:
        config = PEMConfig.from_preset(f"pem-{backbone}-{dataset}-panoptic", **TINY_DECODER)
    model = PEMForUniversalSegmentation(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def assert_pipelines_give_the_same_segments(eager, runtime, images: list, subtask: str) -> None:
    """An exported runtime's pipeline finds the eager pipeline's segments on every image: the same labels (and which
    have scores), masks and scores (to 1e-4), at least one segment per image on average. A low score threshold: the
    briefly trained test models are not confident, and every segment they find is compared."""
    settings = {"subtask": subtask, "threshold": 0.3}
    found = 0
    for image in images:
        expected, actual = eager(image, **settings), runtime(image, **settings)
        assert [(s["label"], s["score"] is None) for s in actual] == [
            (s["label"], s["score"] is None) for s in expected
        ]
        for a, e in zip(actual, expected):
            assert np.array_equal(np.asarray(a["mask"]), np.asarray(e["mask"]))
            if e["score"] is not None:
                assert abs(a["score"] - e["score"]) <= 1e-4
        found += len(expected)
    assert found >= len(images)
