"""PEMConfig, PEMModel and PEMForUniversalSegmentation: shapes, batching, loss, training, save/load, Auto classes."""

import copy
import json
import math

import pytest
import torch
from tiny_configs import TINY_BACKBONES, TINY_DECODER
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
    ResNetConfig,
    TimmBackboneConfig,
)

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, PEMModel, STDCConfig
from transformers_pem.labels_pem import ADE20K_LABELS, CITYSCAPES_LABELS


def tiny_config(**overrides) -> PEMConfig:
    values = {
        "backbone_config": STDCConfig(base_channels=16, layers=[1, 1, 1]),
        **TINY_DECODER,
        "decoder_layers": 3,
        "train_num_points": 256,
        "id2label": {0: "background", 1: "square", 2: "disc"},
        "thing_ids": [1, 2],
    }
    values.update(overrides)
    return PEMConfig(**values)


@pytest.fixture(scope="module")
def tiny_model() -> PEMForUniversalSegmentation:
    torch.manual_seed(0)
    return PEMForUniversalSegmentation(tiny_config()).eval()


# --------------------------------------------------------------------------------------------------- configuration


def test_presets_cover_the_twelve_official_configurations():
    presets = PEMConfig.presets()
    assert len(presets) == 12 and len(set(presets)) == 12
    for backbone in ("r50", "stdc1", "stdc2"):
        for dataset in ("cityscapes", "ade20k"):
            for task in ("semantic", "panoptic"):
                assert f"pem-{backbone}-{dataset}-{task}" in presets


def test_preset_labels_and_things_come_from_the_dataset():
    config = PEMConfig.from_preset("pem-r50-cityscapes-panoptic")
    assert config.num_labels == 19
    assert config.id2label[0] == "road" and config.id2label[18] == "bicycle"
    assert config.label2id["sky"] == 10
    # Cityscapes things: person, rider, car, truck, bus, train, motorcycle, bicycle (train ids 11..18).
    assert config.thing_ids == list(range(11, 19))
    ade = PEMConfig.from_preset("pem-stdc2-ade20k-semantic")
    assert ade.num_labels == 150 and ade.id2label[0] == "wall"
    assert len(ade.thing_ids) == 100  # ADE20K panoptic: 100 things, 50 stuff
    assert list(ade.backbone_config.layers) == [4, 5, 3]
    assert len(CITYSCAPES_LABELS) == 19 and len(ADE20K_LABELS) == 150


def test_preset_defaults_are_the_official_hyper_parameters():
    config = PEMConfig.from_preset("pem-r50-cityscapes-semantic")
    assert (config.conv_dim, config.mask_dim, config.hidden_dim, config.num_queries) == (128, 256, 256, 100)
    assert (config.num_attention_heads, config.dim_feedforward, config.decoder_layers) == (8, 2048, 6)
    assert config.pre_norm and config.enforce_input_projection and config.num_feature_levels == 3
    assert (config.class_weight, config.mask_weight, config.dice_weight, config.no_object_weight) == (2, 5, 5, 0.1)
    assert (config.train_num_points, config.oversample_ratio, config.importance_sample_ratio) == (12544, 3.0, 0.75)
    assert config.ignore_value == 255
    assert config.backbone_config.model_type == "resnet" and list(config.backbone_config.depths) == [3, 4, 6, 3]


def test_preset_overrides_and_errors():
    config = PEMConfig.from_preset("pem-stdc1-ade20k-panoptic", num_queries=50, id2label={0: "a", 1: "b"})
    assert config.num_queries == 50 and config.label2id == {"a": 0, "b": 1}
    with pytest.raises(ValueError, match="Unknown PEM preset"):
        PEMConfig.from_preset("pem-r101-cityscapes-semantic")
    with pytest.raises(Exception, match="divisible"):
        tiny_config(hidden_dim=30)
    with pytest.raises(Exception, match="thing_ids"):
        tiny_config(thing_ids=[7])


@pytest.mark.parametrize(
    ("preset", "expected"),
    # Parameter counts of the official models (manifests of the official configs, 19 / 150 classes).
    [
        ("pem-r50-cityscapes-semantic", 35_532_581),
        ("pem-stdc1-cityscapes-semantic", 16_957_829),
        ("pem-stdc2-cityscapes-panoptic", 20_988_293),
        ("pem-stdc1-ade20k-semantic", 16_991_496),
        ("pem-stdc2-ade20k-panoptic", 21_021_960),
    ],
)
def test_parameter_counts_match_the_official_models(preset, expected):
    with torch.device("meta"):
        model = PEMForUniversalSegmentation(PEMConfig.from_preset(preset))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_paper_parameter_counts():
    """The paper: PEM-R50 35.6 M, STDC1 17.0 M, STDC2 21.0 M (Cityscapes)."""
    for backbone, paper in (("r50", 35.6), ("stdc1", 17.0), ("stdc2", 21.0)):
        with torch.device("meta"):
            model = PEMForUniversalSegmentation(PEMConfig.from_preset(f"pem-{backbone}-cityscapes-semantic"))
        assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - paper) <= 0.1


# --------------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 160), (100, 150), (33, 47), (8, 8)])
def test_output_shapes(tiny_model, height, width):
    with torch.no_grad():
        outputs = tiny_model(torch.randn(1, 3, height, width), output_auxiliary_logits=True)
    mask_size = (math.ceil(height / 4), math.ceil(width / 4))
    assert outputs.class_queries_logits.shape == (1, 8, 4)
    assert outputs.masks_queries_logits.shape == (1, 8, *mask_size)
    assert len(outputs.auxiliary_logits) == 3
    for auxiliary in outputs.auxiliary_logits:
        assert auxiliary["class_queries_logits"].shape == (1, 8, 4)
        assert auxiliary["masks_queries_logits"].shape == (1, 8, *mask_size)
    assert outputs.loss is None


def test_unaligned_input_equals_the_zero_padded_input(tiny_model):
    """Inputs that are not multiples of 32 are zero-padded like the official ImageList: same logits on the crop."""
    image = torch.randn(1, 3, 100, 150)
    padded = torch.nn.functional.pad(image, (0, 10, 0, 28))
    with torch.no_grad():
        outputs, padded_outputs = tiny_model(image), tiny_model(padded)
    torch.testing.assert_close(outputs.class_queries_logits, padded_outputs.class_queries_logits)
    torch.testing.assert_close(outputs.masks_queries_logits, padded_outputs.masks_queries_logits[..., :25, :38])


def test_batch_of_two_equals_two_single_forwards(tiny_model):
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        batched = tiny_model(images)
        singles = [tiny_model(images[i : i + 1]) for i in range(2)]
    for i, single in enumerate(singles):
        torch.testing.assert_close(batched.class_queries_logits[i], single.class_queries_logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched.masks_queries_logits[i], single.masks_queries_logits[0], atol=1e-4, rtol=0)


def test_hidden_states_and_tuple_output(tiny_model):
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outputs = tiny_model(pixel_values, output_hidden_states=True)
        as_tuple = tiny_model(pixel_values, return_dict=False)
    assert [f.shape[-1] for f in outputs.encoder_hidden_states] == [24, 12, 6, 3]
    assert [f.shape[-2:] for f in outputs.pixel_decoder_hidden_states] == [(2, 3), (4, 6), (8, 12)]
    assert len(outputs.transformer_decoder_hidden_states) == 4  # learnable queries + 3 layers
    assert outputs.transformer_decoder_last_hidden_state.shape == (1, 8, 32)
    assert outputs.pixel_decoder_last_hidden_state.shape == (1, 16, 16, 24)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], outputs.class_queries_logits)
    torch.testing.assert_close(as_tuple[1], outputs.masks_queries_logits)


def test_base_model_outputs_every_prediction():
    model = PEMModel(tiny_config()).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 64))
    assert len(outputs.masks_queries_logits) == 4 and len(outputs.transformer_decoder_intermediate_states) == 4
    assert outputs.masks_queries_logits[-1].shape == (2, 8, 16, 16)


def test_timm_backbone_config_works():
    config = tiny_config(
        backbone_config=TimmBackboneConfig(backbone="resnet18", out_indices=[1, 2, 3, 4], num_channels=3)
    )
    model = PEMForUniversalSegmentation(config).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert outputs.masks_queries_logits.shape == (1, 8, 16, 16)


def test_bad_inputs_raise_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="4-D tensor"):
        tiny_model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="channels"):
        tiny_model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="both"):
        tiny_model(torch.randn(1, 3, 64, 64), mask_labels=[torch.zeros(1, 64, 64)])


def test_training_with_one_image_per_batch_raises_a_clear_error():
    model = PEMForUniversalSegmentation(tiny_config()).train()
    with pytest.raises(ValueError, match="at least 2"):
        model(torch.randn(1, 3, 64, 64), mask_labels=[torch.ones(1, 64, 64)], class_labels=[torch.tensor([1])])


# --------------------------------------------------------------------------------------------------- loss / training


def synthetic_batch() -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Two 64x64 images: a bright square on the first, a dark disc on the second, on textured backgrounds."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=generator) * 0.2
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    square = (yy >= 10) & (yy < 40) & (xx >= 20) & (xx < 50)
    disc = (yy - 40) ** 2 + (xx - 24) ** 2 < 15**2
    images[0][:, square] += 1.5
    images[1][:, disc] -= 1.5
    mask_labels = [torch.stack([~square, square]).float(), torch.stack([~disc, disc]).float()]
    class_labels = [torch.tensor([0, 1]), torch.tensor([0, 2])]
    return images, mask_labels, class_labels


def test_loss_is_finite_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = PEMForUniversalSegmentation(tiny_config()).train()
    images, mask_labels, class_labels = synthetic_batch()
    outputs = model(images, mask_labels=mask_labels, class_labels=class_labels)
    assert torch.isfinite(outputs.loss)
    # 3 terms for the final prediction and for each of the 3 auxiliary ones.
    assert len(outputs.loss_dict) == 12
    expected = sum(
        value * {"cross": 2.0, "mask": 5.0, "dice": 5.0}[key.split("_")[1]] for key, value in outputs.loss_dict.items()
    )
    torch.testing.assert_close(outputs.loss, expected)
    outputs.loss.backward()
    without_gradient = [
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and (parameter.grad is None or not parameter.grad.abs().sum() > 0)
    ]
    assert without_gradient == []


def test_images_without_targets_train():
    torch.manual_seed(0)
    model = PEMForUniversalSegmentation(tiny_config()).train()
    images, mask_labels, class_labels = synthetic_batch()
    mask_labels[1], class_labels[1] = torch.zeros(0, 64, 64), torch.zeros(0, dtype=torch.long)
    outputs = model(images, mask_labels=mask_labels, class_labels=class_labels)
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()


def test_loss_drops_sharply_when_overfitting_two_images():
    torch.manual_seed(0)
    model = PEMForUniversalSegmentation(tiny_config()).train()
    images, mask_labels, class_labels = synthetic_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model(images, mask_labels=mask_labels, class_labels=class_labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses
    # And the trained model segments the two images: the best query of each target class covers its mask.
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    probabilities = outputs.class_queries_logits.softmax(-1)
    masks = torch.nn.functional.interpolate(outputs.masks_queries_logits, size=(64, 64), mode="bilinear")
    for index, target_class in ((0, 1), (1, 2)):
        query = probabilities[index, :, target_class].argmax()
        predicted = masks[index, query] > 0
        target = mask_labels[index][1].bool()
        intersection = (predicted & target).sum().item()
        union = (predicted | target).sum().item()
        assert intersection / union > 0.7


# --------------------------------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip_is_bit_exact(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "pem" and saved["label2id"] == {"background": 0, "square": 1, "disc": 2}
    loaded = AutoModelForUniversalSegmentation.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, PEMForUniversalSegmentation)
    original_state, loaded_state = tiny_model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for key, value in original_state.items():
        assert torch.equal(value, loaded_state[key]), key
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = tiny_model(pixel_values).masks_queries_logits
        # transformers (>= 5.24) may leave loaded weights at addresses that are not 64-byte aligned, where oneDNN picks
        # other kernels that round the last bit differently; with the weights copied to fresh (aligned) memory the
        # outputs are identical.
        torch.testing.assert_close(loaded(pixel_values).masks_queries_logits, expected, rtol=0, atol=1e-6)
        for parameter in loaded.parameters():
            parameter.data = parameter.data.clone()
        assert torch.equal(loaded(pixel_values).masks_queries_logits, expected)


def test_every_buffer_is_valid_after_loading(tmp_path):
    """transformers 5 builds models on the meta device; buffers must be restored from the file or re-initialised."""
    model = PEMForUniversalSegmentation(tiny_config())
    model.save_pretrained(tmp_path)
    loaded = PEMForUniversalSegmentation.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.criterion.empty_weight, torch.tensor([1.0, 1.0, 1.0, 0.1]))
    for name, buffer in loaded.named_buffers():
        assert torch.isfinite(buffer.float()).all(), name


def test_new_label_set_loads_with_ignore_mismatched_sizes(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    five_labels = {i: f"class_{i}" for i in range(5)}
    loaded = PEMForUniversalSegmentation.from_pretrained(
        tmp_path, id2label=five_labels, label2id=None, thing_ids=None, ignore_mismatched_sizes=True
    )
    assert loaded.class_predictor.out_features == 6
    torch.testing.assert_close(loaded.criterion.empty_weight, torch.tensor([1.0] * 5 + [0.1]))
    assert loaded.config.label2id == {f"class_{i}": i for i in range(5)}
    torch.testing.assert_close(
        loaded.model.transformer_module.queries_features.weight,
        tiny_model.model.transformer_module.queries_features.weight,
    )


def test_auto_classes(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is PEMConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is PEMModel
    assert type(AutoModelForSemanticSegmentation.from_pretrained(tmp_path)) is PEMForUniversalSegmentation
    config = AutoConfig.for_model("pem", backbone_config=ResNetConfig(out_features=["stage1", "stage2"]))
    assert config.backbone_config.out_features == ["stage1", "stage2"]


# --------------------------------------------------------------------------------------------------- optimised paths


@pytest.mark.parametrize(("height", "width"), [(1, 1), (5, 7), (16, 24)])
def test_deformable_convolution_equals_torchvision(height, width):
    """Our gather formulation (embedding_bag + GEMM) against torchvision's reference kernel, with offsets reaching
    outside the map; values and all four gradients."""
    from torchvision.ops import deform_conv2d

    from transformers_pem.pixel_decoder_pem import PEMModulatedDeformConv

    generator = torch.Generator().manual_seed(height)
    layer = PEMModulatedDeformConv(6, 5)
    torch.nn.init.normal_(layer.weight, generator=generator)
    inputs = torch.randn(2, 6, height, width, generator=generator, requires_grad=True)
    offset = (torch.randn(2, 18, height, width, generator=generator) * 3).requires_grad_()
    modulation = torch.rand(2, 9, height, width, generator=generator).requires_grad_()

    ours = layer(inputs, offset, modulation)
    reference = deform_conv2d(inputs, offset, layer.weight, padding=1, mask=modulation)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    gradients = torch.autograd.grad(ours.square().sum(), (inputs, offset, modulation, layer.weight))
    reference_gradients = torch.autograd.grad(reference.square().sum(), (inputs, offset, modulation, layer.weight))
    for gradient, reference_gradient in zip(gradients, reference_gradients):
        torch.testing.assert_close(gradient, reference_gradient, atol=1e-3, rtol=1e-3)


def test_inference_path_equals_the_plain_path(tiny_model):
    """Without auxiliary outputs, intermediate masks come from resized mask features: same predictions."""
    pixel_values = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        fast = tiny_model(pixel_values)
        plain = tiny_model(pixel_values, output_auxiliary_logits=True)
    assert fast.auxiliary_logits is None and len(plain.auxiliary_logits) == 3
    torch.testing.assert_close(fast.class_queries_logits, plain.class_queries_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.masks_queries_logits, plain.masks_queries_logits, atol=1e-4, rtol=1e-5)


def model_with_batch_norm_statistics(backbone: str) -> PEMForUniversalSegmentation:
    """A tiny PEM with a ResNet or STDC backbone whose BatchNorm layers have non-trivial statistics, in eval mode."""
    backbone_config = (
        ResNetConfig(
            depths=[1, 1, 1, 1],
            hidden_sizes=[32, 64, 96, 128],
            embedding_size=16,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        if backbone == "resnet"
        else STDCConfig(base_channels=16, layers=[1, 1, 1], block_type="add")
    )
    torch.manual_seed(0)
    model = PEMForUniversalSegmentation(tiny_config(backbone_config=copy.deepcopy(backbone_config)))
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.normal_(0, 0.2, generator=generator)
            module.running_mean.normal_(0, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


@pytest.mark.parametrize("backbone", ["stdc", "resnet"])
def test_folded_batch_norm_gives_the_same_outputs(tmp_path, backbone):
    """fold_batch_norm() (inference) against the plain model, with non-trivial BatchNorm statistics."""
    model = model_with_batch_norm_statistics(backbone)
    pixel_values = torch.randn(2, 3, 96, 128)
    model.fold_for_inference = False  # the plain model itself
    with torch.no_grad():
        plain = model(pixel_values)
        folded_model = model.fold_batch_norm()
        folded = folded_model(pixel_values)
    batch_norms = [m for m in folded_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # Left: the CSM reductions (on 1x1 maps) and PEM-CA's BatchNorm before its padded depthwise convolution.
    assert all(m.num_features in (8, 32) for m in batch_norms), [m.num_features for m in batch_norms]
    torch.testing.assert_close(folded.class_queries_logits, plain.class_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(folded.masks_queries_logits, plain.masks_queries_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="folded"):
        folded_model.train()
    with pytest.raises(ValueError, match="folded"):
        folded_model.save_pretrained(tmp_path)


def test_chunked_prototype_selection_is_the_argmax_over_all_tokens():
    """The selection scores tokens in chunks; it must pick what one masked argmax over all tokens picks, including the
    first of tied tokens that lie in different chunks and token 0 for a fully masked query."""
    from transformers_pem.transformer_decoder_pem import PEMPrototypeCrossAttention

    generator = torch.Generator().manual_seed(0)
    batch_size, num_tokens, num_queries, channels, heads = 2, 23, 6, 16, 4
    normalize = torch.nn.functional.normalize
    memory = normalize(torch.randn(batch_size, num_tokens, channels, generator=generator), dim=-1)
    memory[:, 17] = memory[:, 3]  # a tie across the chunks of 5 tokens: token 3 must win
    queries = normalize(torch.randn(batch_size, num_queries, channels, generator=generator), dim=-1)
    mask_logits = torch.randn(batch_size, num_queries, num_tokens, generator=generator)
    mask_logits[:, 0] = -1.0
    mask_logits[:, 0, [3, 17]] = 1.0  # query 0 keeps only the two tied tokens
    mask_logits[0, 1] = -1.0  # image 0, query 1: fully masked

    # Reference: the official formulation, a (B, heads, Q, N) similarity, -inf where masked, argmax.
    head_dim = channels // heads
    memory_heads = memory.view(batch_size, num_tokens, heads, head_dim).transpose(1, 2)
    query_heads = queries.view(batch_size, num_queries, heads, head_dim).transpose(1, 2)
    similarity = query_heads @ memory_heads.transpose(2, 3)
    expected = similarity.masked_fill((mask_logits < 0)[:, None], float("-inf")).argmax(dim=3)

    module = PEMPrototypeCrossAttention(channels, heads)
    for chunk_size in (5, 8, 4096):
        module.selection_chunk_size = chunk_size
        prototypes, indices = module.select_prototypes(memory, queries, mask_logits)
        torch.testing.assert_close(indices, expected, rtol=0, atol=0)
        assert (indices[:, :, 0] == 3).all() and (indices[0, :, 1] == 0).all()
        gathered = torch.gather(memory_heads, 2, expected[..., None].expand(-1, -1, -1, head_dim))
        torch.testing.assert_close(prototypes, gathered.transpose(1, 2).reshape(batch_size, num_queries, channels))


def test_compiled_folded_model_gives_the_same_outputs():
    """The deployment setting of the benchmark's "compiled" models: folded, then torch.compile with inductor's
    freezing (weights become constants, convolutions and ReLUs are fused)."""
    model = model_with_batch_norm_statistics("resnet")
    model.fold_for_inference = False
    pixel_values = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        plain = model(pixel_values)
        model.fold_batch_norm().compile(dynamic=False, options={"freezing": True})
        compiled = model(pixel_values)
        model(pixel_values)  # a second call reuses the compiled graph
    torch.testing.assert_close(compiled.class_queries_logits, plain.class_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled.masks_queries_logits, plain.masks_queries_logits, atol=1e-4, rtol=1e-4)


def backbone_model(backbone: str) -> PEMForUniversalSegmentation:
    if backbone == "timm":
        torch.manual_seed(0)
        config = tiny_config(
            backbone_config=TimmBackboneConfig(backbone="resnet18", out_indices=[1, 2, 3, 4], num_channels=3)
        )
        model = PEMForUniversalSegmentation(config)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
        return model.eval()
    return model_with_batch_norm_statistics(backbone)


@pytest.mark.parametrize("backbone", ["stdc", "resnet", "timm"])
def test_inference_runs_a_folded_copy_and_the_model_stays_trainable(tmp_path, backbone):
    """In eval mode without gradients the model runs a private folded copy (no call needed); the model itself keeps
    its BatchNorm layers: it trains, saves and reloads unfolded weights, and inference follows its weight changes."""
    model = backbone_model(backbone)
    pixel_values = torch.randn(2, 3, 64, 96)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        default = model(pixel_values)
    folded_copy = model._folded_copy[1]
    assert folded_copy.batch_norm_folded and not model.batch_norm_folded
    with torch.no_grad():
        explicitly_folded = copy.deepcopy(model).fold_batch_norm()(pixel_values)
        model.fold_for_inference = False
        plain = model(pixel_values)
        model.fold_for_inference = True
    assert torch.equal(default.masks_queries_logits, explicitly_folded.masks_queries_logits)
    torch.testing.assert_close(default.masks_queries_logits, plain.masks_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(default.class_queries_logits, plain.class_queries_logits, atol=1e-4, rtol=1e-4)
    # The model's own weights are untouched; with gradients it runs itself (gradients reach every convolution).
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())
    with_grad = model(pixel_values)
    assert torch.equal(with_grad.masks_queries_logits.detach(), plain.masks_queries_logits)
    with_grad.masks_queries_logits.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "conv" in n and p.requires_grad)

    # A training step changes the weights: the next inference refolds them.
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.step()
    model.eval()
    with torch.inference_mode():
        after_step = model(pixel_values)
        expected = copy.deepcopy(model).fold_batch_norm()(pixel_values)
    assert model._folded_copy[1] is not folded_copy
    # Equal up to the last bit (oneDNN may pick other kernels for other weight addresses).
    torch.testing.assert_close(after_step.masks_queries_logits, expected.masks_queries_logits, rtol=1e-6, atol=1e-5)
    assert (after_step.masks_queries_logits - default.masks_queries_logits).abs().max() > 1e-2

    # Saved and reloaded: the unfolded weights, and the same inference.
    model.save_pretrained(tmp_path)
    reloaded = PEMForUniversalSegmentation.from_pretrained(tmp_path).eval()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in reloaded.modules())
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).masks_queries_logits, expected.masks_queries_logits)
    # Another dtype or device refolds as well.
    model.double()
    with torch.no_grad():
        assert model(pixel_values.double()).masks_queries_logits.dtype == torch.float64


# --------------------------------------------------------------------------------------------------- activation
# checkpointing, attention outputs, SDPA


def training_step(model: PEMForUniversalSegmentation, seed: int = 0) -> dict[str, torch.Tensor]:
    """One loss + backward on the synthetic batch (the loss's point sampling drawn from `seed`); the gradients."""
    images, mask_labels, class_labels = synthetic_batch()
    torch.manual_seed(seed)
    model(images, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


@pytest.mark.parametrize("backbone", list(TINY_BACKBONES))
def test_activation_checkpointing_gives_the_plain_gradients_and_recomputes_every_block(backbone):
    torch.manual_seed(0)
    plain = PEMForUniversalSegmentation(tiny_config(backbone_config=copy.deepcopy(TINY_BACKBONES[backbone]))).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing_enable()
    # Count the forward passes of each checkpointing block: the backward pass runs each a second time.
    blocks = {
        name: module
        for name, module in checkpointed.named_modules()
        if getattr(module, "gradient_checkpointing", False) is True
    }
    expected_kinds = {"PEMDecoderLayer", "PEMDeformableLayer", "PEMConvNormReLU", "PEMContextModulation"}
    expected_kinds |= {"stdc": {"STDCCatBottleneck"}, "stdc-add": {"STDCAddBottleneck"}}.get(backbone, set())
    expected_kinds |= {"resnet": {"PEMResNetStage"}}.get(backbone, set())
    assert expected_kinds <= {type(module).__name__ for module in blocks.values()}
    # The calls of every leaf module: the backward pass recomputes the blocks, so a leaf inside one runs twice.
    calls = {"plain": {}, "checkpointed": {}}
    for run, model in (("plain", plain), ("checkpointed", checkpointed)):
        for name, module in model.named_modules():
            if not list(module.children()):
                counts = calls[run]
                module.register_forward_hook(
                    lambda *_, name=name, counts=counts: counts.update({name: counts.get(name, 0) + 1})
                )

    plain_gradients, checkpointed_gradients = training_step(plain), training_step(checkpointed)
    if backbone == "timm":  # timm checkpoints its own stages (its `set_grad_checkpointing`)
        blocks["model.pixel_level_module.encoder"] = checkpointed.model.pixel_level_module.encoder
    # torch stops a recomputation once it has what the backward pass needs: a block's last leaves may not rerun.
    recomputed = {name for name, count in calls["plain"].items() if calls["checkpointed"][name] == 2 * count}
    for block in blocks:
        assert any(name.startswith(f"{block}.") for name in recomputed), f"{block} is not recomputed"
    for name, count in calls["plain"].items():
        if not any(name.startswith(f"{block}.") for block in blocks):
            assert calls["checkpointed"][name] == count, f"{name} is outside the checkpointed blocks"
    for name, gradient in plain_gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, rtol=0, atol=0, msg=name)
    if backbone != "timm":  # timm's recomputation updates its BatchNorm statistics a second time
        # The BatchNorm running statistics and counters are the plain step's (one update per step).
        plain_buffers = dict(plain.named_buffers())
        for name, buffer in checkpointed.named_buffers():
            torch.testing.assert_close(buffer, plain_buffers[name], rtol=0, atol=0, msg=name)

    checkpointed.activation_checkpointing_disable()
    assert not any(getattr(module, "gradient_checkpointing", False) for module in checkpointed.modules())


def test_the_reentrant_checkpoint_gives_the_plain_gradients():
    torch.manual_seed(0)
    plain = PEMForUniversalSegmentation(tiny_config()).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing_enable({"use_reentrant": True})
    plain_gradients, checkpointed_gradients = training_step(plain), training_step(checkpointed)
    # The reentrant backward adds the gradient of a shared input (the query embeddings) in another order: equal to
    # float rounding, where the default (non-reentrant) checkpoint is exact.
    for name, gradient in plain_gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, rtol=1e-6, atol=1e-8, msg=name)


def reference_self_attention(layer, query_key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`nn.MultiheadAttention` (the official layer) in float64 with the same weights: output and per-head weights."""
    attention = torch.nn.MultiheadAttention(query_key.shape[-1], layer.num_heads, batch_first=True).double()
    attention.load_state_dict({key: tensor.double() for key, tensor in layer.state_dict().items()})
    output, weights = attention(
        query_key.double(), query_key.double(), value.double(), need_weights=True, average_attn_weights=False
    )
    return output, weights


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_self_attention_equals_torch_multihead_attention(implementation):
    from transformers_pem.transformer_decoder_pem import PEMSelfAttention

    torch.manual_seed(0)
    layer = PEMSelfAttention(32, 4)
    torch.nn.init.normal_(layer.in_proj_weight, std=0.2)
    torch.nn.init.normal_(layer.in_proj_bias, std=0.2)
    query_key, value = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    output, weights = layer(query_key, value, attn_implementation=implementation)
    expected_output, expected_weights = reference_self_attention(layer, query_key, value)
    torch.testing.assert_close(output.double(), expected_output, atol=1e-5, rtol=1e-5)
    if implementation == "eager":
        torch.testing.assert_close(weights.double(), expected_weights, atol=1e-6, rtol=1e-5)
    else:
        assert weights is None


def test_attentions_are_the_decoder_self_attention_weights_and_sdpa_matches_eager():
    torch.manual_seed(0)
    config = tiny_config()
    eager = PEMForUniversalSegmentation._from_config(config, attn_implementation="eager").eval().double()
    sdpa = PEMForUniversalSegmentation._from_config(config, attn_implementation="sdpa").eval().double()
    sdpa.load_state_dict(eager.state_dict())
    images = synthetic_batch()[0].double()
    with torch.no_grad():
        plain = eager(images)
        with_attentions = eager(images, output_attentions=True)
        fast = sdpa(images)
    attentions = with_attentions.attentions
    assert len(attentions) == config.decoder_layers
    for weights in attentions:
        assert weights.shape == (2, config.num_attention_heads, config.num_queries, config.num_queries)
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    assert plain.attentions is None
    # Asking for the weights changes nothing else; in float64, SDPA gives the eager outputs to rounding.
    torch.testing.assert_close(with_attentions.masks_queries_logits, plain.masks_queries_logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.masks_queries_logits, plain.masks_queries_logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(fast.class_queries_logits, plain.class_queries_logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backbone", list(TINY_BACKBONES))
def test_attention_implementation_switches_and_attention_free_backbones_stay_eager(backbone):
    model = PEMForUniversalSegmentation(tiny_config(backbone_config=copy.deepcopy(TINY_BACKBONES[backbone])))
    encoder = model.model.pixel_level_module.encoder
    for implementation in ("eager", "sdpa", "eager"):
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        expected = implementation if backbone == "timm" else "eager"  # timm's wrapper takes any
        assert encoder.config._attn_implementation == expected


def test_no_split_modules_name_blocks_that_exist():
    names = set(PEMForUniversalSegmentation._no_split_modules)
    found = set()
    for backbone_config in TINY_BACKBONES.values():
        model = PEMForUniversalSegmentation(tiny_config(backbone_config=copy.deepcopy(backbone_config)))
        found |= {type(module).__name__ for module in model.modules()} & names
    assert found == names
