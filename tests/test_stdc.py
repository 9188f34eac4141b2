"""Tests of the STDC backbone against the official PEM `STDCNet` (fixtures in tests/fixtures/stdc, see its README)."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoBackbone, AutoConfig
from transformers.backbone_utils import load_backbone

from transformers_pem.configuration_stdc import STDCConfig
from transformers_pem.modeling_stdc import STDCAddBottleneck, STDCBackbone

FIXTURES = Path(__file__).parent / "fixtures" / "stdc"
LAYERS = {"stdc1": [2, 2, 2], "stdc2": [4, 5, 3]}
# Official `STDCNet` registers its stages a second time under these containers; their keys repeat `features.*`.
ALIAS_CONTAINERS = {"x2", "x4", "x8", "x16", "x32"}


@pytest.fixture(scope="module")
def manifest():
    with open(FIXTURES / "manifest_backbone.json") as f:
        return json.load(f)


def official_backbone_state_dict(name: str, manifest: dict) -> dict[str, torch.Tensor]:
    """The official `backbone.*` tensors of a parity case, with the alias keys when the case's checkpoint has them."""
    state_dict = load_file(FIXTURES / f"{name}_tiny_backbone_weights.safetensors")
    if name == "stdc1":  # parity case 1 stores the aliases, case 2 leaves them out
        for alias, canonical in manifest["stdc1"]["stdc_alias_map"].items():
            state_dict[alias] = state_dict[canonical]
    return state_dict


def convert_official_backbone_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the `backbone.` prefix and drop the alias keys."""
    return {
        key.removeprefix("backbone."): value
        for key, value in official.items()
        if key.startswith("backbone.") and key.split(".")[1] not in ALIAS_CONTAINERS
    }


def tiny_backbone(name: str, manifest: dict) -> STDCBackbone:
    model = STDCBackbone(STDCConfig(base_channels=16, layers=LAYERS[name]))
    official = official_backbone_state_dict(name, manifest)
    state_dict = convert_official_backbone_state_dict(official)
    dropped = {key for key in official if key.removeprefix("backbone.") not in state_dict}
    assert dropped == (set(manifest["stdc1"]["stdc_alias_map"]) if name == "stdc1" else set())
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@pytest.mark.parametrize("name", ["stdc1", "stdc2"])
def test_parity_with_official_stdcnet(name, manifest):
    model = tiny_backbone(name, manifest)
    reference = load_file(FIXTURES / f"{name}_tiny_backbone_reference.safetensors")
    with torch.no_grad():
        feature_maps = model(reference["pixel_values"]).feature_maps
    assert len(feature_maps) == 4
    for level, feature_map in zip(range(2, 6), feature_maps):
        expected = reference[f"res{level}"]
        assert feature_map.shape == expected.shape
        tolerance = 1e-3 * max(1.0, expected.abs().max().item())
        assert (feature_map - expected).abs().max().item() <= tolerance, f"res{level}"


@pytest.mark.parametrize("name", ["stdc1", "stdc2"])
def test_full_size_state_dict_matches_official_manifest(name, manifest):
    with torch.device("meta"):
        model = STDCBackbone(STDCConfig(layers=LAYERS[name]))
    expected = manifest[name]
    assert model.num_parameters() == expected["backbone_parameters"]
    ours = {f"backbone.{key}": list(value.shape) for key, value in model.state_dict().items()}
    assert ours == expected["backbone_state_dict"]
    # Dropping the aliases loses nothing: every alias points at one of our keys.
    assert set(expected["stdc_alias_map"].values()) <= set(ours)
    assert model.channels == [64, 256, 512, 1024]


def test_output_shapes_and_strides():
    config = STDCConfig(base_channels=16, layers=[2, 2, 2])
    model = STDCBackbone(config).eval()
    height, width = 100, 150
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, height, width), output_hidden_states=True)

    # Every stride-2 layer is a 3x3 conv (pad 1) or a 3x3 pooling (pad 1): size n -> ceil(n / 2).
    sizes = [(height, width)]
    for _ in range(5):
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    expected_channels = [8, 16, 64, 128, 256]
    assert [tuple(h.shape) for h in outputs.hidden_states] == [
        (2, channels, *size) for channels, size in zip(expected_channels, sizes[1:])
    ]
    assert config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert model.channels == [16, 64, 128, 256]
    assert [tuple(f.shape) for f in outputs.feature_maps] == [
        (2, channels, *size) for channels, size in zip(expected_channels[1:], sizes[2:])
    ]
    for feature_map, hidden_state in zip(outputs.feature_maps, outputs.hidden_states[1:]):
        assert torch.equal(feature_map, hidden_state)

    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).hidden_states is None
        as_tuple = model(torch.randn(1, 3, 64, 64), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple[0]) == 4


def test_out_features_and_conv_last():
    model = STDCBackbone(STDCConfig(base_channels=16, out_features=["stem", "stage3"])).eval()
    assert model.out_indices == [0, 3]
    assert model.channels == [8, 128]
    with torch.no_grad():
        feature_maps = model(torch.randn(1, 3, 64, 96)).feature_maps
    assert [tuple(f.shape) for f in feature_maps] == [(1, 8, 32, 48), (1, 128, 4, 6)]

    model = STDCBackbone(STDCConfig(base_channels=16, use_conv_last=True, out_indices=[-1])).eval()
    assert model.out_features == ["stage4"]
    assert model.channels == [1024]  # max(1024, 16 * base_channels), as in the official `conv_last`
    assert model.state_dict()["conv_last.conv.weight"].shape == (1024, 256, 1, 1)
    with torch.no_grad():
        (feature_map,) = model(torch.randn(1, 3, 64, 96)).feature_maps
    assert feature_map.shape == (1, 1024, 2, 3)


def test_add_bottleneck_matches_functional_reference():
    torch.manual_seed(0)
    block = STDCAddBottleneck(in_channels=8, out_channels=32, block_num=4, stride=2).eval()
    # Official parameter names of a stride-2 "add" block.
    assert {key: tuple(value.shape) for key, value in block.named_parameters()} == {
        "conv_list.0.conv.weight": (16, 8, 1, 1),
        "conv_list.0.bn.weight": (16,),
        "conv_list.0.bn.bias": (16,),
        "conv_list.1.conv.weight": (8, 16, 3, 3),
        "conv_list.1.bn.weight": (8,),
        "conv_list.1.bn.bias": (8,),
        "conv_list.2.conv.weight": (4, 8, 3, 3),
        "conv_list.2.bn.weight": (4,),
        "conv_list.2.bn.bias": (4,),
        "conv_list.3.conv.weight": (4, 4, 3, 3),
        "conv_list.3.bn.weight": (4,),
        "conv_list.3.bn.bias": (4,),
        "avd_layer.0.weight": (16, 1, 3, 3),
        "avd_layer.1.weight": (16,),
        "avd_layer.1.bias": (16,),
        "skip.0.weight": (8, 1, 3, 3),
        "skip.1.weight": (8,),
        "skip.1.bias": (8,),
        "skip.2.weight": (32, 8, 1, 1),
        "skip.3.weight": (32,),
        "skip.3.bias": (32,),
    }
    state = {}
    for key, value in block.state_dict().items():
        if key.endswith("running_var"):
            value = torch.rand_like(value) + 0.5
        elif value.is_floating_point():
            value = torch.randn_like(value)
        state[key] = value
    block.load_state_dict(state)

    def bn(x, prefix):
        return F.batch_norm(
            x,
            state[f"{prefix}.running_mean"],
            state[f"{prefix}.running_var"],
            state[f"{prefix}.weight"],
            state[f"{prefix}.bias"],
            training=False,
            eps=1e-5,
        )

    def conv_bn_relu(x, prefix, padding):
        return F.relu(bn(F.conv2d(x, state[f"{prefix}.conv.weight"], padding=padding), f"{prefix}.bn"))

    x = torch.randn(2, 8, 15, 20)
    first = bn(
        F.conv2d(conv_bn_relu(x, "conv_list.0", 0), state["avd_layer.0.weight"], stride=2, padding=1, groups=16),
        "avd_layer.1",
    )
    second = conv_bn_relu(first, "conv_list.1", 1)
    third = conv_bn_relu(second, "conv_list.2", 1)
    fourth = conv_bn_relu(third, "conv_list.3", 1)
    residual = bn(F.conv2d(x, state["skip.0.weight"], stride=2, padding=1, groups=8), "skip.1")
    residual = bn(F.conv2d(residual, state["skip.2.weight"]), "skip.3")
    expected = torch.cat([first, second, third, fourth], dim=1) + residual

    with torch.no_grad():
        assert torch.allclose(block(x), expected, atol=1e-5, rtol=1e-5)

    model = STDCBackbone(STDCConfig(base_channels=16, block_type="add"))
    keys = model.state_dict().keys()
    assert "features.2.skip.2.weight" in keys  # stride-2 block
    assert not any(key.startswith("features.3.skip") for key in keys)  # stride-1 block: identity residual


def test_initialization():
    model = STDCBackbone(STDCConfig(base_channels=64, layers=[2, 2, 2]))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
            assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean))
            assert torch.equal(module.running_var, torch.ones_like(module.running_var))
            assert module.num_batches_tracked.item() == 0
    # Kaiming normal, fan_out mode: std = sqrt(2 / (out_channels * kernel area)).
    weight = model.features[7].conv_list[1].conv.weight  # (256, 512, 3, 3)
    expected_std = math.sqrt(2.0 / (weight.shape[0] * 9))
    assert abs(weight.std().item() / expected_std - 1) < 0.05


def test_save_and_from_pretrained_round_trip(tmp_path, manifest):
    model = tiny_backbone("stdc2", manifest)  # calibrated BN buffers, nonzero num_batches_tracked
    model.save_pretrained(tmp_path)
    reloaded = STDCBackbone.from_pretrained(tmp_path).eval()

    config_dicts = [config.to_dict() for config in (model.config, reloaded.config)]
    for config_dict in config_dicts:
        config_dict.pop("_name_or_path")
    assert config_dicts[0] == config_dicts[1]
    original, loaded = model.state_dict(), reloaded.state_dict()
    assert original.keys() == loaded.keys()
    for key in original:
        assert original[key].dtype == loaded[key].dtype, key
        assert torch.equal(original[key], loaded[key]), key
    pixel_values = load_file(FIXTURES / "stdc2_tiny_backbone_reference.safetensors")["pixel_values"]
    with torch.no_grad():
        for ours, theirs in zip(model(pixel_values).feature_maps, reloaded(pixel_values).feature_maps):
            assert torch.equal(ours, theirs)


def test_auto_backbone_registration():
    import transformers_pem  # noqa: F401  (registers "stdc" with AutoConfig and AutoBackbone)

    config = STDCConfig(base_channels=16, layers=[4, 5, 3])
    assert isinstance(AutoBackbone.from_config(config), STDCBackbone)
    assert isinstance(load_backbone(config), STDCBackbone)
    assert isinstance(AutoConfig.for_model("stdc", layers=[4, 5, 3]), STDCConfig)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [2, 2]}, "`layers`"),
        ({"layers": [2, 0, 2]}, "`layers`"),
        ({"block_num": 1}, "`block_num`"),
        ({"block_type": "mul"}, "`block_type`"),
        ({"base_channels": 15}, "`base_channels`"),
        ({"base_channels": 2, "block_num": 5}, "`base_channels`"),
        ({"out_features": ["res2"]}, "out_features"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        STDCConfig(**kwargs)


def test_config_serialization_and_bad_input():
    config = STDCConfig(base_channels=16, layers=(4, 5, 3), block_type="add", out_features=["stage2", "stage4"])
    restored = STDCConfig.from_dict(config.to_dict())
    assert restored.layers == [4, 5, 3]
    assert restored.out_features == ["stage2", "stage4"] and restored.out_indices == [2, 4]
    assert restored.to_dict() == config.to_dict()

    model = STDCBackbone(STDCConfig(base_channels=16))
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.randn(1, 4, 32, 32))
