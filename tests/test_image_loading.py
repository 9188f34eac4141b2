"""The one image decoder (`image_loading_pem`) of the processor's path inputs, `predict`, `pem predict` and the app:
images come out as a viewer shows them. Expected pixels are computed here with numpy from the values written."""

import io
import logging

import numpy as np
import PIL.Image
import pytest
import torch

from transformers_pem import PEMImageProcessor, PEMImageProcessorPil
from transformers_pem.data.sources import read_frames
from transformers_pem.image_loading_pem import image_frames, load_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 10, 3)).astype(np.uint8)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    PIL.Image.fromarray(RGB).save(path, exif=exif, quality=100, subsampling=0)
    stored = np.asarray(PIL.Image.open(path).convert("RGB"))
    image = np.asarray(load_image(path))
    assert image.shape == (10, 6, 3)  # displayed upright: the stored 6x10 turned a quarter
    assert np.array_equal(image, np.rot90(stored, k=-1))


def test_16bit_images_are_scaled_not_clipped(tmp_path):
    values = RNG.integers(0, 65536, (6, 10)).astype(np.uint16)
    path = tmp_path / "depth16.png"
    PIL.Image.fromarray(values).save(path)
    assert PIL.Image.open(path).mode == "I;16"
    expected = np.round(values / 257.0).astype(np.uint8)
    assert np.array_equal(np.asarray(load_image(path)), np.repeat(expected[..., None], 3, axis=-1))


def test_32bit_integer_images_with_16bit_values_are_scaled(tmp_path):
    values = RNG.integers(0, 65536, (6, 10)).astype(np.int32)
    path = tmp_path / "int32.tif"
    PIL.Image.fromarray(values, mode="I").save(path)
    expected = np.round(values / 257.0).astype(np.uint8)
    assert np.array_equal(np.asarray(load_image(path))[..., 0], expected)


def test_float_images_in_0_1_are_scaled_others_stretched(tmp_path, caplog):
    values = RNG.random((6, 10)).astype(np.float32)
    PIL.Image.fromarray(values, mode="F").save(tmp_path / "unit.tif")
    assert np.array_equal(np.asarray(load_image(tmp_path / "unit.tif"))[..., 0], np.round(values * 255))
    wide = values * 40 - 7
    PIL.Image.fromarray(wide, mode="F").save(tmp_path / "wide.tif")
    with caplog.at_level(logging.WARNING):
        image = np.asarray(load_image(tmp_path / "wide.tif"))[..., 0]
    low, high = float(wide.min()), float(wide.max())
    assert np.array_equal(image, np.round((wide.astype(np.float64) - low) / (high - low) * 255).astype(np.uint8))
    assert "stretched from its minimum to its maximum" in caplog.text
    nan = values.copy()
    nan[0, 0] = np.nan
    PIL.Image.fromarray(nan, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_image(tmp_path / "nan.tif")


def test_transparency_is_composited_over_white(tmp_path):
    alpha = RNG.integers(0, 256, (6, 10)).astype(np.uint8)
    alpha[0, 0], alpha[0, 1] = 0, 255
    PIL.Image.fromarray(np.dstack([RGB, alpha]), mode="RGBA").save(tmp_path / "rgba.png")
    image = np.asarray(load_image(tmp_path / "rgba.png")).astype(np.int32)
    weight = alpha[..., None].astype(np.float64)
    expected = (RGB * weight + 255 * (255 - weight)) / 255
    assert np.abs(image - expected).max() <= 1  # Pillow's integer compositing rounds
    assert (image[0, 0] == 255).all() and np.array_equal(image[0, 1], RGB[0, 1])
    palette = PIL.Image.fromarray(RGB).quantize(8)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    index = np.asarray(PIL.Image.open(tmp_path / "palette.png"))
    decoded = np.asarray(load_image(tmp_path / "palette.png"))
    assert (decoded[index == 0] == 255).all()


def test_animations_give_every_frame_and_the_first_with_a_warning(tmp_path, caplog):
    frames = [PIL.Image.fromarray(np.full((6, 10, 3), value, np.uint8)) for value in (0, 120, 250)]
    path = tmp_path / "clip.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    decoded = [np.asarray(frame) for frame in image_frames(path)]
    assert [int(frame.mean().round()) for frame in decoded] == [0, 120, 250]
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(np.asarray(load_image(path)), decoded[0])
    assert "has 3 frames: the first is used" in caplog.text
    names = [name for name, _ in read_frames(path, "a/clip.gif")]
    assert names == ["a/clip.gif/000000", "a/clip.gif/000001", "a/clip.gif/000002"]


def test_unreadable_files_get_one_line_errors(tmp_path, monkeypatch):
    PIL.Image.fromarray(RGB).save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    cases = {
        "truncated.png": "truncated or corrupt",
        "text.png": "not an image Pillow can read",
        "missing.png": "no such file",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            load_image(tmp_path / name)
    with pytest.raises(ValueError, match="it is a folder"):
        load_image(tmp_path)
    assert np.array_equal(np.asarray(load_image(io.BytesIO(data))), RGB)
    assert np.array_equal(np.asarray(load_image(data)), RGB)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 20)  # 60 pixels is more than twice the limit: a bomb
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "good.png")


@pytest.mark.parametrize("processor_class", [PEMImageProcessor, PEMImageProcessorPil], ids=["torchvision", "pil"])
def test_processor_path_inputs_use_the_decoder(tmp_path, processor_class):
    values = RNG.integers(0, 65536, (40, 60)).astype(np.uint16)
    PIL.Image.fromarray(values).save(tmp_path / "gray16.png")
    exif = PIL.Image.Exif()
    exif[0x0112] = 8  # "rotate 90 CCW to display"
    photo = RNG.integers(0, 256, (40, 60, 3)).astype(np.uint8)
    PIL.Image.fromarray(photo).save(tmp_path / "photo.png", exif=exif)
    processor = processor_class(size={"shortest_edge": 32, "longest_edge": 64})
    gray = np.repeat(np.round(values / 257.0).astype(np.uint8)[..., None], 3, axis=-1)
    from_paths = processor([str(tmp_path / "gray16.png"), tmp_path / "photo.png"], return_tensors="pt")
    from_arrays = processor([gray, np.ascontiguousarray(np.rot90(photo))], return_tensors="pt")
    torch.testing.assert_close(from_paths.pixel_values, from_arrays.pixel_values, rtol=0, atol=0)
    assert from_paths.pixel_values.shape[-2:] == from_arrays.pixel_values.shape[-2:]
