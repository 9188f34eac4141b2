"""Pre-processing of the PEM image processors (both backends): official defaults, targets and user inputs."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from transformers_pem.image_processing_pem import PEMImageProcessor, get_resize_output_size
from transformers_pem.image_processing_pem_pil import PEMImageProcessorPil

FIXTURES = Path(__file__).parent / "fixtures" / "postprocess"
BACKENDS = [PEMImageProcessor, PEMImageProcessorPil]
# Official MODEL.PIXEL_MEAN / PIXEL_STD (configs/*/Base-*.yaml), on the 0-255 scale.
OFFICIAL_PIXEL_MEAN = [123.675, 116.28, 103.53]
OFFICIAL_PIXEL_STD = [58.395, 57.12, 57.375]


@pytest.fixture(scope="module")
def official():
    return load_file(FIXTURES / "official.safetensors"), json.loads((FIXTURES / "official.json").read_text())


def random_image(height, width, seed=0, channels=3):
    shape = (height, width, channels) if channels else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Official test-time settings
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("processor_class", BACKENDS)
def test_defaults_are_the_official_cityscapes_test_settings(processor_class):
    processor = processor_class()
    np.testing.assert_allclose(np.array(processor.image_mean) * 255, OFFICIAL_PIXEL_MEAN, rtol=1e-12)
    np.testing.assert_allclose(np.array(processor.image_std) * 255, OFFICIAL_PIXEL_STD, rtol=1e-12)
    assert (processor.size.shortest_edge, processor.size.longest_edge) == (1024, 2048)
    assert processor.size_divisor == 32 and processor.ignore_index == 255 and not processor.do_reduce_labels
    assert processor.test_topk_per_image == 100 and processor.model_input_names == ["pixel_values", "pixel_mask"]


@pytest.mark.parametrize("processor_class", BACKENDS)
def test_pixel_values_match_official(official, processor_class):
    """The fixture images were fed at their own size: normalise, pad with 0 top-left to a multiple of 32."""
    tensors, meta = official
    images = [tensors["semantic.image.0"].numpy(), tensors["semantic.image.1"].numpy()]
    inputs = processor_class(do_resize=False)(images, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, *meta["semantic"]["padded_size"])
    torch.testing.assert_close(
        inputs["pixel_values"][..., ::2, ::2], tensors["semantic.pixel_values.every2"], atol=1e-5, rtol=0
    )

    images = [tensors["panoptic.image.0"], tensors["panoptic.image.1"]]  # HWC uint8 tensors
    inputs = processor_class(do_resize=False)(images, return_tensors="pt")
    assert torch.equal(inputs["pixel_mask"], tensors["panoptic.pixel_mask"].long())


@pytest.mark.parametrize(
    "size, shortest_edge, longest_edge, expected",
    [
        ((1024, 2048), 1024, 2048, (1024, 2048)),  # Cityscapes: unchanged
        ((375, 500), 512, 2048, (512, 683)),  # 682.67 rounds up (transformers' helper truncates to 682)
        ((333, 500), 512, 2048, (512, 769)),
        ((500, 333), 640, 2560, (961, 640)),
        ((100, 5000), 640, 2560, (51, 2560)),  # long side capped: 640 x 32000 -> 51.2 x 2560
        ((8, 8), 1024, 2048, (1024, 1024)),
        ((1, 10000), 512, 2048, (1, 2048)),  # never 0
    ],
)
def test_resize_output_size_follows_detectron2(size, shortest_edge, longest_edge, expected):
    assert get_resize_output_size(*size, shortest_edge, longest_edge) == expected


def test_pil_backend_resizes_exactly_like_the_official_pipeline():
    """detectron2's ResizeShortestEdge resizes uint8 images with PIL bilinear; the torchvision backend is within 1."""
    image = random_image(75, 100)
    expected = np.asarray(PIL.Image.fromarray(image).resize((85, 64), PIL.Image.BILINEAR)).transpose(2, 0, 1).copy()
    kwargs = {"size": {"shortest_edge": 64, "longest_edge": 2048}, "do_normalize": False, "do_rescale": False}
    pil = PEMImageProcessorPil(**kwargs)(image, size_divisor=0, return_tensors="pt")["pixel_values"][0]
    torchvision = PEMImageProcessor(**kwargs)(image, size_divisor=0, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(pil, torch.from_numpy(expected).float())
    assert (torchvision - torch.from_numpy(expected).float()).abs().max() <= 1


@pytest.mark.parametrize(
    "name, size, num_things, resize_first, reduce_labels",
    [
        ("pem-r50-cityscapes-semantic", (1024, 2048), 8, False, False),
        ("pem-stdc1-cityscapes-panoptic", (1024, 2048), 8, True, False),
        ("pem-stdc2-ade20k-semantic", (512, 2048), 100, False, True),
        ("pem-r50-ade20k-panoptic", (640, 2560), 100, True, False),
    ],
)
@pytest.mark.parametrize("processor_class", BACKENDS)
def test_presets(processor_class, name, size, num_things, resize_first, reduce_labels):
    processor = processor_class.from_preset(name)
    assert (processor.size.shortest_edge, processor.size.longest_edge) == size
    assert processor.size_divisor == 32  # the model pads to 32 at test time for every config
    assert len(processor.thing_ids) == num_things
    assert processor.resize_masks_before_semantic_inference is resize_first
    assert processor.do_reduce_labels is reduce_labels
    assert processor_class.from_preset(name, size_divisor=64).size_divisor == 64


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown PEM preset"):
        PEMImageProcessor.from_preset("pem-r101-coco-panoptic")


@pytest.mark.parametrize("processor_class", BACKENDS)
def test_save_and_reload(tmp_path, processor_class):
    processor = processor_class.from_preset("pem-r50-ade20k-panoptic", test_topk_per_image=50)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "PEMImageProcessor"
    reloaded = processor_class.from_pretrained(tmp_path)
    for attribute in ("thing_ids", "resize_masks_before_semantic_inference", "test_topk_per_image", "size_divisor"):
        assert getattr(reloaded, attribute) == getattr(processor, attribute)
    image = random_image(40, 50)
    assert torch.equal(
        reloaded(image, return_tensors="pt")["pixel_values"], processor(image, return_tensors="pt")["pixel_values"]
    )


def test_auto_image_processor_loads_both_backends(tmp_path):
    from transformers import AutoImageProcessor

    import transformers_pem  # noqa: F401  (registers PEM with the Auto classes)

    PEMImageProcessor.from_preset("pem-r50-cityscapes-panoptic").save_pretrained(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is PEMImageProcessor
    pil = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert type(pil) is PEMImageProcessorPil and pil.thing_ids == list(range(11, 19))


# ---------------------------------------------------------------------------------------------------------------------
# Training targets
# ---------------------------------------------------------------------------------------------------------------------


def reference_targets(segmentation_map, ignored, class_of=lambda i: i):
    """Independent reference: one mask per id in increasing order, ignored ids dropped."""
    ids = sorted(set(np.unique(segmentation_map).tolist()) - set(ignored))
    return np.stack([segmentation_map == i for i in ids]).astype(np.float32), np.array([class_of(i) for i in ids])


@pytest.mark.parametrize("processor_class", BACKENDS)
def test_semantic_targets_on_a_mixed_size_batch(processor_class):
    """Padding of mask_labels is 0 (no target), never ignore_index (the Mask2Former pitfall)."""
    rng = np.random.default_rng(1)
    maps = [
        rng.choice([0, 3, 7, 255], size=(40, 50)).astype(np.uint8),
        rng.choice([1, 3], size=(70, 33)).astype(np.uint8),
    ]
    images = [random_image(40, 50), random_image(70, 33, seed=2)]
    inputs = processor_class(do_resize=False)(images, segmentation_maps=maps, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 96, 64)  # max size rounded up to multiples of 32
    for index, segmentation_map in enumerate(maps):
        height, width = segmentation_map.shape
        masks, classes = reference_targets(segmentation_map, ignored=[255])
        mask_labels = inputs["mask_labels"][index]
        assert mask_labels.shape == (len(classes), 96, 64) and mask_labels.dtype == torch.float32
        assert torch.equal(mask_labels[:, :height, :width], torch.from_numpy(masks))
        assert mask_labels[:, height:].sum() == 0 and mask_labels[:, :, width:].sum() == 0
        assert torch.equal(inputs["class_labels"][index], torch.from_numpy(classes))
        assert inputs["pixel_mask"][index].sum() == height * width


@pytest.mark.parametrize("processor_class", BACKENDS)
def test_reduce_labels_keeps_255_ignored(processor_class):
    segmentation_map = np.array([[0, 1, 2, 255]] * 6, dtype=np.uint8).repeat(2, axis=1)  # ADE-style: 0 = "other"
    inputs = processor_class(do_resize=False, do_reduce_labels=True)(
        random_image(6, 8), segmentation_maps=segmentation_map, return_tensors="pt"
    )
    masks, classes = reference_targets(segmentation_map, ignored=[0, 255], class_of=lambda i: i - 1)
    assert inputs["class_labels"][0].tolist() == [0, 1]  # no 254, no 255
    assert torch.equal(inputs["mask_labels"][0][:, :6, :8], torch.from_numpy(masks))
    with pytest.raises(ValueError, match="ignore_index"):
        processor_class(do_resize=False, do_reduce_labels=True, ignore_index=None)(
            random_image(6, 8), segmentation_maps=segmentation_map
        )


@pytest.mark.parametrize("processor_class", BACKENDS)
def test_instance_targets(processor_class):
    instance_map = np.zeros((6, 10), dtype=np.uint16)
    instance_map[:3, :5], instance_map[3:, :5], instance_map[:, 5:] = 26001, 26002, 7  # Cityscapes-style ids
    mapping = {0: 0, 7: 0, 26001: 13, 26002: 11}
    inputs = processor_class(do_resize=False, ignore_index=0)(
        [random_image(6, 10)] * 2,
        segmentation_maps=[instance_map, PIL.Image.fromarray(instance_map)],
        instance_id_to_semantic_id=[mapping, mapping],
        return_tensors="pt",
    )
    masks, classes = reference_targets(instance_map, ignored=[0], class_of=mapping.get)
    for index in range(2):
        assert inputs["class_labels"][index].tolist() == [0, 13, 11]
        assert torch.equal(inputs["mask_labels"][index][:, :6, :10], torch.from_numpy(masks))
    with pytest.raises(ValueError, match="missing in instance_id_to_semantic_id"):
        processor_class(do_resize=False)(
            random_image(6, 10), segmentation_maps=instance_map, instance_id_to_semantic_id={7: 1}
        )


@pytest.mark.parametrize("processor_class", BACKENDS)
def test_targets_follow_the_resized_image(processor_class):
    segmentation_map = np.zeros((30, 40), dtype=np.uint8)
    segmentation_map[:, 20:] = 5
    inputs = processor_class(size={"shortest_edge": 60, "longest_edge": 1000})(
        random_image(30, 40), segmentation_maps=segmentation_map, return_tensors="pt"
    )
    assert inputs["pixel_values"].shape == (1, 3, 64, 96)  # resized to 60x80, padded to 64x96
    masks = inputs["mask_labels"][0]
    assert masks.shape == (2, 64, 96) and inputs["class_labels"][0].tolist() == [0, 5]
    assert masks[1, :60, 40:80].all() and not masks[1, :60, :40].any()  # nearest resize keeps the edge at x = 40
    assert not masks[:, 60:].any() and not masks[:, :, 80:].any()


def test_pil_backend_returns_numpy_targets_without_return_tensors():
    inputs = PEMImageProcessorPil(do_resize=False)(random_image(8, 8), segmentation_maps=np.ones((8, 8), np.uint8))
    assert isinstance(inputs["mask_labels"][0], np.ndarray) and isinstance(inputs["class_labels"][0], np.ndarray)


@pytest.mark.parametrize(
    "segmentation_maps, message",
    [
        ([np.zeros((8, 8), np.uint8)] * 2, "segmentation maps"),
        (np.zeros((9, 8), np.uint8), "has size"),
        (np.zeros((8, 8, 3), np.uint8), "integer class or instance ids"),
        (np.full((8, 8), 0.5, np.float32), "integer class or instance ids"),
    ],
)
def test_invalid_segmentation_maps(segmentation_maps, message):
    with pytest.raises(ValueError, match=message):
        PEMImageProcessor(do_resize=False)(random_image(8, 8), segmentation_maps=segmentation_maps)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs users pass
# ---------------------------------------------------------------------------------------------------------------------


RGB = random_image(20, 30, seed=3)
GRAY = random_image(20, 30, seed=4, channels=0)
EQUIVALENT_INPUTS = {
    "pil_rgb": (PIL.Image.fromarray(RGB), RGB),
    "numpy_hwc": (RGB, RGB),
    "numpy_chw": (RGB.transpose(2, 0, 1).copy(), RGB),
    "torch_chw": (torch.from_numpy(RGB).permute(2, 0, 1), RGB),
    "torch_hwc": (torch.from_numpy(RGB), RGB),
    "numpy_int64": (RGB.astype(np.int64), RGB),
    "numpy_float32": (RGB.astype(np.float32), RGB),
    "rgba_opaque": (PIL.Image.fromarray(np.dstack([RGB, np.full((20, 30), 255, np.uint8)])), RGB),
    "numpy_16bit": (RGB.astype(np.uint16) * 257, RGB),
    "torch_16bit": (torch.from_numpy(RGB.astype(np.int32) * 257).to(torch.uint16), RGB),
    "pil_gray": (PIL.Image.fromarray(GRAY), np.dstack([GRAY] * 3)),
    "numpy_gray_2d": (GRAY, np.dstack([GRAY] * 3)),
    "numpy_gray_hw1": (GRAY[..., None], np.dstack([GRAY] * 3)),
    "torch_gray_2d": (torch.from_numpy(GRAY), np.dstack([GRAY] * 3)),
    "pil_gray_16bit": (PIL.Image.fromarray(GRAY.astype(np.uint16) * 257), np.dstack([GRAY] * 3)),
}


@pytest.mark.parametrize("name", list(EQUIVALENT_INPUTS))
@pytest.mark.parametrize("processor_class", BACKENDS)
def test_input_formats_give_the_same_pixel_values(processor_class, name):
    image, equivalent_rgb = EQUIVALENT_INPUTS[name]
    processor = processor_class(do_resize=False)
    expected = (equivalent_rgb.astype(np.float32) - OFFICIAL_PIXEL_MEAN) / OFFICIAL_PIXEL_STD
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(pixel_values[0, :, :20, :30].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


@pytest.mark.parametrize("mean, std", [([0.4], [0.2]), (0.4, 0.2)])
@pytest.mark.parametrize("processor_class", BACKENDS)
def test_one_channel_statistics_apply_to_every_channel(processor_class, mean, std):
    processor = processor_class(do_resize=False, image_mean=mean, image_std=std)
    pixel_values = processor(GRAY, return_tensors="pt")["pixel_values"]
    expected = (GRAY.astype(np.float32) / 255 - 0.4) / 0.2  # rescaled to [0, 1], then normalised
    assert pixel_values.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(pixel_values[0, :, :20, :30].numpy(), np.stack([expected] * 3), atol=1e-5)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((20, 30, 4), np.uint8)  # fully transparent
    pixel_values = PEMImageProcessor(do_resize=False)(rgba, return_tensors="pt")["pixel_values"]
    expected = (255.0 - np.array(OFFICIAL_PIXEL_MEAN)) / OFFICIAL_PIXEL_STD
    np.testing.assert_allclose(pixel_values[0, :, 0, 0].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("processor_class", BACKENDS)
def test_tiny_large_and_mixed_size_images(processor_class):
    processor = processor_class()  # Cityscapes test size: short side 1024, long side at most 2048
    assert processor(random_image(8, 8), return_tensors="pt")["pixel_values"].shape == (1, 3, 1024, 1024)
    large = processor(random_image(1500, 3300), return_tensors="pt")
    assert large["pixel_values"].shape == (1, 3, 960, 2048)  # 931x2048, padded to multiples of 32
    assert large["pixel_mask"][0].sum() == 931 * 2048
    batch = processor_class(size={"shortest_edge": 64, "longest_edge": 256})(
        [random_image(30, 40), PIL.Image.fromarray(random_image(50, 20)), torch.zeros(3, 16, 16, dtype=torch.uint8)],
        return_tensors="pt",
    )
    assert batch["pixel_values"].shape == (3, 3, 160, 96)  # 64x85, 160x64, 64x64
    assert batch["pixel_mask"].sum(dim=(1, 2)).tolist() == [64 * 85, 160 * 64, 64 * 64]


@pytest.mark.parametrize("processor_class", BACKENDS)
def test_padding_options(processor_class):
    images = [random_image(20, 30), random_image(25, 10)]
    processor = processor_class(do_resize=False)
    assert processor(images, size_divisor=0, return_tensors="pt")["pixel_values"].shape == (2, 3, 25, 30)
    fixed = processor(images, pad_size={"height": 40, "width": 40}, return_tensors="pt")
    assert fixed["pixel_values"].shape == (2, 3, 40, 40)
    with pytest.raises(ValueError, match="smaller than the largest"):
        processor(images, pad_size={"height": 20, "width": 40})
    with pytest.raises(ValueError, match="do_pad=True"):
        processor(images, do_pad=False)
    assert processor(images[:1], do_pad=False, return_tensors="pt")["pixel_values"].shape == (1, 3, 20, 30)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((20, 30, 2), np.uint8), "1 \\(grayscale\\), 3 \\(RGB\\) or 4 \\(RGBA\\) channels"),
        (np.zeros((0, 30, 3), np.uint8), "non-empty"),
        (np.zeros((20, 30, 3), bool), "dtype bool"),
        (np.full((20, 30, 3), 1000, np.int32), "expected 0-255"),
        (PIL.Image.fromarray(np.zeros((20, 30), np.int32)), "mode 'I'"),
    ],
)
@pytest.mark.parametrize("processor_class", BACKENDS)
def test_unsupported_images_raise_clear_errors(processor_class, image, message):
    with pytest.raises(ValueError, match=message):
        processor_class()(image)


def test_unknown_keyword_is_rejected():
    with pytest.raises(TypeError, match="pad"):
        PEMImageProcessor()(random_image(8, 8), pad=True)
