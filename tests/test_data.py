"""Tests of the synthetic dataset generator, the dataset loaders, the training augmentations and the collate function.

References are independent of the code under test: cityscapesscripts (label table, `createPanopticImgs`), the
official ADE20K conventions (annotation = class + 1, panoptic ids = RGB colours), `colorsys`, and hand-built maps.
"""

import colorsys
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode

from transformers_pem.data.augmentation import (
    LABEL_DIVISOR,
    AugmentedSegmentationDataset,
    ColorAugSSD,
    PEMSegmentationTransform,
    RandomCropWithCategoryAreaConstraint,
    RandomShortestEdgeResize,
    build_train_augmentation,
    collate_fn,
    hsv_uint8_to_rgb,
    official_train_augmentation,
    rgb_to_hsv_uint8,
)
from transformers_pem.data.loaders import (
    load_ade20k,
    load_cityscapes,
    load_segmentation_dataset,
    rgb_to_id,
    semantic_from_panoptic,
)
from transformers_pem.data.synthetic import generate_ade20k, generate_cityscapes, main
from transformers_pem.image_processing_pem import PEMImageProcessor
from transformers_pem.labels_pem import ADE20K_LABELS, CITYSCAPES_LABELS

CS_LABEL_TO_TRAIN = {label_id: train_id for train_id, (_, _, _, label_id) in enumerate(CITYSCAPES_LABELS)}
CS_THING_LABEL_IDS = {label_id for _, _, isthing, label_id in CITYSCAPES_LABELS if isthing}


@pytest.fixture(scope="module")
def cityscapes_root(synthetic_cityscapes) -> Path:
    return synthetic_cityscapes(num_train=5, num_val=2, size=(64, 128), seed=3)


@pytest.fixture(scope="module")
def ade20k_root(synthetic_ade20k) -> Path:
    return synthetic_ade20k(num_train=6, num_val=2, size=(64, 80), seed=3)


def _array(path) -> np.ndarray:
    return np.array(Image.open(path))


def _train_ids(label_ids: np.ndarray) -> np.ndarray:
    from cityscapesscripts.helpers.labels import id2label

    lut = np.full(256, 255, np.int64)
    for label_id, label in id2label.items():
        if 0 <= label_id < 256 and 0 <= label.trainId < 255:
            lut[label_id] = label.trainId
    return lut[label_ids]


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic data generator
# ---------------------------------------------------------------------------------------------------------------------


def test_cityscapes_layout_matches_cityscapesscripts(cityscapes_root, tmp_path, capsys):
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    images = sorted((cityscapes_root / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    assert len(images) == 5 and len(list((cityscapes_root / "leftImg8bit" / "val").glob("*/*.png"))) == 2
    for image_path in images:
        assert image_path.name.count("_") == 3  # <city>_<seq>_<frame>_leftImg8bit.png
        prefix = str(image_path).replace("leftImg8bit/", "gtFine/").replace("_leftImg8bit.png", "_gtFine_")
        image = Image.open(image_path)
        assert image.mode == "RGB" and image.size == (128, 64)
        label_ids = _array(prefix + "labelIds.png")
        instance_ids = _array(prefix + "instanceIds.png").astype(np.int64)
        assert label_ids.dtype == np.uint8 and _array(prefix + "instanceIds.png").dtype == np.uint16
        np.testing.assert_array_equal(_array(prefix + "labelTrainIds.png"), _train_ids(label_ids))
        # instanceIds: labelId * 1000 + k for thing instances, the labelId elsewhere.
        things = instance_ids >= 1000
        np.testing.assert_array_equal(np.where(things, instance_ids // 1000, instance_ids), label_ids)
        assert set(np.unique(instance_ids[things] // 1000)) <= CS_THING_LABEL_IDS
        assert things.any() and {7, 11, 23} <= set(np.unique(label_ids))

    # The panoptic ground truth equals what cityscapesscripts' own converter makes of the instanceIds.
    convert2panoptic(str(cityscapes_root / "gtFine"), str(tmp_path), setNames=["train", "val"])
    capsys.readouterr()
    for split in ("train", "val"):
        ours = json.loads((cityscapes_root / "gtFine" / f"cityscapes_panoptic_{split}.json").read_text())
        official = json.loads((tmp_path / f"cityscapes_panoptic_{split}.json").read_text())
        assert ours == official
        for annotation in official["annotations"]:
            name = annotation["file_name"]
            np.testing.assert_array_equal(
                _array(cityscapes_root / "gtFine" / f"cityscapes_panoptic_{split}" / name),
                _array(tmp_path / f"cityscapes_panoptic_{split}" / name),
            )


def test_ade20k_layout_is_consistent(ade20k_root):
    assert ade20k_root.name == "ADEChallengeData2016"
    panoptic = json.loads((ade20k_root / "ade20k_panoptic_train.json").read_text())
    assert [(c["id"], c["name"], bool(c["isthing"])) for c in panoptic["categories"]] == [
        (index, name, isthing) for index, (name, _, isthing, _) in enumerate(ADE20K_LABELS)
    ]
    assert len(panoptic["images"]) == len(panoptic["annotations"]) == 6
    widths = set()
    for image_info, annotation in zip(panoptic["images"], panoptic["annotations"]):
        stem = annotation["image_id"]
        assert image_info["file_name"] == f"{stem}.jpg" and annotation["file_name"] == f"{stem}.png"
        image = Image.open(ade20k_root / "images" / "training" / f"{stem}.jpg")
        semantic = _array(ade20k_root / "annotations" / "training" / f"{stem}.png")
        segment_ids = rgb_to_id(_array(ade20k_root / "ade20k_panoptic_train" / f"{stem}.png"))
        assert image.size == (image_info["width"], image_info["height"]) == semantic.shape[::-1]
        widths.add(image.size[0])
        assert semantic.dtype == np.uint8 and semantic.max() <= 150
        listed = {s["id"] for s in annotation["segments_info"]}
        assert set(np.unique(segment_ids)) - {0} == listed
        for segment in annotation["segments_info"]:
            mask = segment_ids == segment["id"]
            ys, xs = np.nonzero(mask)
            assert segment["area"] == mask.sum()
            assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            # The annotation PNG stores class + 1 on the same pixels.
            assert set(np.unique(semantic[mask])) == {segment["category_id"] + 1}
            name, colour, isthing, _ = ADE20K_LABELS[segment["category_id"]]
            if not isthing:  # stuff segments take their class colour (panopticapi IdGenerator)
                assert segment["id"] == colour[0] + 256 * colour[1] + 65536 * colour[2]
        # "other" (0) is exactly the void of the panoptic map.
        np.testing.assert_array_equal(segment_ids == 0, semantic == 0)
    assert len(widths) > 1  # ADE20K image sizes vary


def test_generator_is_deterministic(tmp_path):
    first = generate_cityscapes(tmp_path / "a", num_train=2, num_val=1, size=(48, 96), seed=7)
    second = generate_cityscapes(tmp_path / "b", num_train=2, num_val=1, size=(48, 96), seed=7)
    other = generate_cityscapes(tmp_path / "c", num_train=2, num_val=1, size=(48, 96), seed=8)
    files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(second) for path in second.rglob("*") if path.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert any((first / f).read_bytes() != (other / f).read_bytes() for f in files if f.suffix == ".png")
    main(["--layout", "ade20k", "--out", str(tmp_path / "cli"), "--num-train", "1", "--num-val", "1"])
    assert len(list((tmp_path / "cli" / "ADEChallengeData2016" / "images" / "validation").glob("*.jpg"))) == 1
    with pytest.raises(ValueError, match="at least 32"):
        generate_ade20k(tmp_path / "d", size=(16, 16))


def test_street_scene_crops_hold_several_persons(tmp_path):
    # The demo trains on quarter-image crops (the official resize + crop at its scale): a model only learns to tell
    # persons apart from crops that show several. Persons only beside the road left 21 % of the crops with two or
    # more (cars: 61 %), and the demo's person PQ stayed at 7-16.
    root = generate_cityscapes(tmp_path, num_train=24, num_val=1, size=(128, 256), seed=0)
    processor = PEMImageProcessor.from_preset("pem-stdc1-cityscapes-panoptic")
    augmentation = official_train_augmentation("cityscapes", "panoptic", scale=128 / 1024)
    transform = PEMSegmentationTransform(processor, "panoptic", augmentation)
    dataset = AugmentedSegmentationDataset(load_cityscapes(root, split="train", task="panoptic"), transform, 0)
    person = [label.name for label in CITYSCAPES_LABELS].index("person")  # the train id
    persons = [dataset[i % 24]["class_labels"].tolist().count(person) for i in range(96)]
    assert sum(count >= 2 for count in persons) >= 0.4 * len(persons)


# ---------------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------------


def test_cityscapes_loader_semantic(cityscapes_root, tmp_path):
    dataset = load_cityscapes(cityscapes_root, split="val", task="semantic")
    assert dataset.column_names == ["image_id", "image", "semantic"] and len(dataset) == 2
    for example in dataset:
        label_path = next(cityscapes_root.glob(f"gtFine/val/*/{example['image_id']}_gtFine_labelIds.png"))
        image_path = next(cityscapes_root.glob(f"leftImg8bit/val/*/{example['image_id']}_leftImg8bit.png"))
        np.testing.assert_array_equal(np.array(example["image"]), _array(image_path))
        np.testing.assert_array_equal(np.array(example["semantic"]), _train_ids(_array(label_path)))

    # Missing labelTrainIds files are written from the labelIds (as createTrainIdLabelImgs would), or refused.
    root = _copy(cityscapes_root, tmp_path)
    for path in root.glob("gtFine/train/*/*_labelTrainIds.png"):
        path.unlink()
    with pytest.raises(ValueError, match="labelTrainIds files are missing"):
        load_cityscapes(root, task="semantic", write_train_ids=False)
    dataset = load_cityscapes(root, task="semantic")
    for example, label_path in zip(dataset, sorted(root.glob("gtFine/train/*/*_labelIds.png"))):
        np.testing.assert_array_equal(np.array(example["semantic"]), _train_ids(_array(label_path)))


@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_cityscapes_loader_panoptic_sources_agree(cityscapes_root, task):
    from_json = load_cityscapes(cityscapes_root, split="train", task=task, panoptic_source="json")
    from_ids = load_cityscapes(cityscapes_root, split="train", task=task, panoptic_source="instance_ids")
    assert from_json.column_names == ["image_id", "image", task, "segments_info"]
    assert from_json["segments_info"] == from_ids["segments_info"]
    for a, b in zip(from_json, from_ids):
        instance_ids = np.array(b[task]).astype(np.int64)
        segment_ids = rgb_to_id(np.array(a[task]))
        listed = np.isin(instance_ids, [s["id"] for s in a["segments_info"]])
        np.testing.assert_array_equal(segment_ids[listed], instance_ids[listed])
        for segment in a["segments_info"]:
            label_id = segment["id"] // 1000 if segment["id"] >= 1000 else segment["id"]
            assert segment["category_id"] == CS_LABEL_TO_TRAIN[label_id]  # train id, not label id
            assert segment["iscrowd"] == int(segment["id"] < 1000 and label_id in CS_THING_LABEL_IDS)
            assert task == "panoptic" or label_id in CS_THING_LABEL_IDS
    # Crowd regions (instanceIds 24 = a group of persons) are listed as such.
    assert {s["iscrowd"] for segments in from_json["segments_info"] for s in segments} == {0, 1}


def test_ade20k_loader(ade20k_root):
    semantic = load_ade20k(ade20k_root.parent, split="validation", task="semantic")
    assert semantic.column_names == ["image_id", "image", "semantic"] and len(semantic) == 2
    for example in semantic:
        path = ade20k_root / "annotations" / "validation" / f"{example['image_id']}.png"
        np.testing.assert_array_equal(np.array(example["semantic"]), _array(path))  # raw: 0 = other

    panoptic = load_ade20k(ade20k_root, split="train", task="panoptic")
    instance = load_ade20k(ade20k_root, split="train", task="instance")
    annotations = json.loads((ade20k_root / "ade20k_panoptic_train.json").read_text())["annotations"]
    for example, things, annotation in zip(panoptic, instance, annotations):
        assert example["image_id"] == annotation["image_id"]
        expected = [{k: s[k] for k in ("id", "category_id", "iscrowd")} for s in annotation["segments_info"]]
        assert example["segments_info"] == expected
        assert things["segments_info"] == [s for s in expected if ADE20K_LABELS[s["category_id"]][2]]
        np.testing.assert_array_equal(
            np.array(example["panoptic"]), _array(ade20k_root / "ade20k_panoptic_train" / annotation["file_name"])
        )
        # The class map of the panoptic target is the reduced semantic annotation.
        semantic_map = semantic_from_panoptic(rgb_to_id(np.array(example["panoptic"])), example["segments_info"])
        raw = _array(ade20k_root / "annotations" / "training" / f"{example['image_id']}.png").astype(np.int64)
        np.testing.assert_array_equal(semantic_map, np.where(raw == 0, 255, raw - 1))


def test_loader_errors(cityscapes_root, ade20k_root, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_cityscapes(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"not a Cityscapes root.*gtFine"):
        load_cityscapes(cityscapes_root / "leftImg8bit")
    with pytest.raises(ValueError, match=r"split 'test' not found.*\['train', 'val'\]"):
        load_cityscapes(cityscapes_root, split="test")
    with pytest.raises(ValueError, match="Unknown task"):
        load_cityscapes(cityscapes_root, task="depth")
    with pytest.raises(ValueError, match="Unknown ADE20K split"):
        load_ade20k(ade20k_root, split="test")
    with pytest.raises(ValueError, match="not an ADE20K root"):
        load_ade20k(tmp_path)

    root = _copy(cityscapes_root, tmp_path)
    prefixes = sorted(root.glob("gtFine/train/*/*_labelIds.png"))
    # A mismatched size, an unreadable file and a missing file.
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(str(prefixes[0]).replace("labelIds", "labelTrainIds"))
    with pytest.raises(ValueError, match="Size mismatch.*128x64.*10x10"):
        load_cityscapes(root, task="semantic")
    Path(str(prefixes[0]).replace("labelIds", "labelTrainIds")).write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Cannot read image file"):
        load_cityscapes(root, task="semantic")
    Path(str(prefixes[1]).replace("labelIds", "instanceIds")).unlink()
    with pytest.raises(ValueError, match="instanceIds map files are missing"):
        load_cityscapes(root, task="panoptic", panoptic_source="instance_ids")
    # The panoptic JSON must cover every image and name known classes.
    json_path = root / "gtFine" / "cityscapes_panoptic_train.json"
    content = json.loads(json_path.read_text())
    content["annotations"][0]["segments_info"][0]["category_id"] = 4  # label id 4 ("static") is no class
    json_path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="category_id 4, which is not a class"):
        load_cityscapes(root, task="panoptic")
    content["annotations"] = content["annotations"][1:]
    json_path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="1 images have no annotation"):
        load_cityscapes(root, task="panoptic")
    json_path.unlink()
    with pytest.raises(ValueError, match="cityscapes_panoptic_train.json not found"):
        load_cityscapes(root, task="panoptic", panoptic_source="json")

    ade = _copy(ade20k_root, tmp_path)
    (ade / "ade20k_panoptic_val.json").unlink()
    with pytest.raises(ValueError, match="prepare_ade20k_pan_seg.py"):
        load_ade20k(ade, split="val", task="panoptic")
    next((ade / "annotations" / "validation").glob("*.png")).unlink()
    with pytest.raises(ValueError, match="1 ADE20K annotation files are missing"):
        load_ade20k(ade, split="val")


def test_generic_loader_offline(ade20k_root, tmp_path):
    # An image folder with one metadata.jsonl per split, as `datasets` expects.
    folder = tmp_path / "folder"
    sources = sorted((ade20k_root / "images" / "training").glob("*.jpg"))[:3]
    for split, paths in (("train", sources[:2]), ("validation", sources[2:])):
        (folder / split / "images").mkdir(parents=True)
        (folder / split / "labels").mkdir()
        lines = []
        for path in paths:
            shutil.copy(path, folder / split / "images")
            shutil.copy(ade20k_root / "annotations" / "training" / f"{path.stem}.png", folder / split / "labels")
            lines.append({"file_name": f"images/{path.name}", "annotation_file_name": f"labels/{path.stem}.png"})
        (folder / split / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    cache = str(tmp_path / "cache")
    dataset = load_segmentation_dataset(
        folder, split="validation", column_mapping={"annotation": "semantic"}, cache_dir=cache
    )
    assert len(dataset) == 1
    np.testing.assert_array_equal(
        np.array(dataset[0]["semantic"]), _array(ade20k_root / "annotations" / "training" / f"{sources[2].stem}.png")
    )
    with pytest.raises(ValueError, match=r"needs the columns.*column_mapping"):
        load_segmentation_dataset(folder, split="train", cache_dir=cache)
    with pytest.raises(ValueError, match="names columns \\['label'\\]"):
        load_segmentation_dataset(folder, split="train", column_mapping={"label": "semantic"}, cache_dir=cache)

    # Parquet (images embedded as bytes) and save_to_disk folders, with a panoptic JSON string column.
    panoptic = load_ade20k(ade20k_root, task="panoptic").select(range(2))
    table = datasets.Dataset.from_dict(
        {
            "img": [
                {"bytes": (ade20k_root / "images" / "training" / f"{i}.jpg").read_bytes(), "path": None}
                for i in panoptic["image_id"]
            ],
            "pan": [str(ade20k_root / "ade20k_panoptic_train" / f"{i}.png") for i in panoptic["image_id"]],
            "segments_info": [json.dumps(s) for s in panoptic["segments_info"]],
        }
    )
    table = table.cast_column("img", datasets.Image()).cast_column("pan", datasets.Image())
    table.to_parquet(tmp_path / "train.parquet")
    mapping = {"img": "image", "pan": "panoptic"}
    from_parquet = load_segmentation_dataset(
        tmp_path / "train.parquet", task="panoptic", column_mapping=mapping, cache_dir=cache
    )
    datasets.DatasetDict({"train": table}).save_to_disk(tmp_path / "saved")
    from_disk = load_segmentation_dataset(tmp_path / "saved", task="panoptic", column_mapping=mapping)
    processor = PEMImageProcessor(thing_ids=[])
    for loaded in (from_parquet, from_disk):
        for index in range(2):
            ours = PEMSegmentationTransform(processor, task="panoptic")(loaded[index])
            reference = PEMSegmentationTransform(processor, task="panoptic")(panoptic[index])
            assert all(torch.equal(ours[key], reference[key]) for key in ours)
    with pytest.raises(ValueError, match="Split 'test' not found"):
        load_segmentation_dataset(tmp_path / "saved", split="test", task="panoptic", column_mapping=mapping)
    with pytest.raises(ValueError, match="folder' does not exist: pass a dataset folder"):
        load_segmentation_dataset(str(tmp_path / "missing" / "folder"), cache_dir=cache)
    with pytest.raises(ValueError, match="neither a local dataset"):  # a possible Hub name, offline
        load_segmentation_dataset("no-such-dataset-name", cache_dir=cache)


# ---------------------------------------------------------------------------------------------------------------------
# Augmentations
# ---------------------------------------------------------------------------------------------------------------------


def test_official_recipes():
    cityscapes = official_train_augmentation("cityscapes", "semantic").transforms
    assert [type(t).__name__ for t in cityscapes] == [
        "RandomShortestEdgeResize",
        "RandomCropWithCategoryAreaConstraint",
        "ColorAugSSD",
        "RandomHorizontalFlip",
    ]
    assert cityscapes[0].short_edge_lengths == [512, 614, 716, 819, 921, 1024, 1126, 1228] + [
        1331,
        1433,
        1536,
        1638,
        1740,
        1843,
        1945,
        2048,
    ]
    assert cityscapes[0].max_size == 4096 and cityscapes[1].crop_size == (512, 1024)
    assert cityscapes[1].single_category_max_area == 1.0 and cityscapes[3].p == 0.5
    assert cityscapes[0].mask_interpolation == InterpolationMode.NEAREST  # torch nearest for semantic maps
    ade_panoptic = official_train_augmentation("ade20k", "panoptic").transforms
    assert ade_panoptic[0].short_edge_lengths == list(range(320, 1281, 64)) and ade_panoptic[0].max_size == 2560
    assert ade_panoptic[1].crop_size == (640, 640) and ade_panoptic[-1].size == (640, 640)  # padded to the crop
    assert ade_panoptic[0].mask_interpolation == InterpolationMode.NEAREST_EXACT  # PIL nearest for panoptic PNGs
    ade_semantic = official_train_augmentation("ade20k", "semantic", scale=0.25).transforms
    assert ade_semantic[0].short_edge_lengths[0] == 64 and ade_semantic[-1].size == (128, 128)
    with pytest.raises(ValueError, match="Unknown dataset"):
        official_train_augmentation("coco")


def test_resize_follows_detectron2_and_keeps_ids_exact():
    resize = RandomShortestEdgeResize([50], max_size=120)
    labels = torch.arange(100 * 300, dtype=torch.int64).reshape(100, 300) + 255 * LABEL_DIVISOR
    image = tv_tensors.Image(torch.zeros(3, 100, 300, dtype=torch.uint8))
    image, mask = resize(image, tv_tensors.Mask(labels))
    # short side 100 -> 50 gives 50x150; the long side 150 > 120 scales again: 40x120.
    assert image.shape == (3, 40, 120) and mask.shape == (40, 120) and mask.dtype == torch.int64
    rows, columns = (torch.arange(40) * 100) // 40, (torch.arange(120) * 300) // 120  # nearest: floor(i * in / out)
    assert torch.equal(mask.as_subclass(torch.Tensor), labels[rows][:, columns])
    # PIL's NEAREST (detectron2's resize of panoptic PNGs) samples pixel centres: floor((i + 0.5) * in / out).
    resize = RandomShortestEdgeResize([50], max_size=120, mask_interpolation=InterpolationMode.NEAREST_EXACT)
    mask = resize(tv_tensors.Mask(labels)).as_subclass(torch.Tensor)
    rows, columns = ((torch.arange(40) * 2 + 1) * 100) // 80, ((torch.arange(120) * 2 + 1) * 300) // 240
    assert torch.equal(mask, labels[rows][:, columns])
    pil = np.array(Image.fromarray(labels.numpy().astype(np.int32) - 255 * LABEL_DIVISOR).resize((120, 40), 0))
    assert torch.equal(mask - 255 * LABEL_DIVISOR, torch.from_numpy(pil.astype(np.int64)))
    # detectron2 rounds half up (int(x + 0.5)): 375x500 to short side 512 is 512x683.
    assert RandomShortestEdgeResize([512], 4096)(tv_tensors.Image(torch.zeros(3, 375, 500))).shape[-2:] == (512, 683)


def test_flip_crop_resize_keep_image_and_target_aligned():
    # Each class has its own colour, and an asymmetric layout shows whether a flip happened.
    classes = torch.zeros(60, 90, dtype=torch.int64)
    classes[:, 45:] = 1
    classes[:20, :30] = 2
    palette = torch.tensor([[200, 20, 20], [20, 200, 20], [20, 20, 200]], dtype=torch.uint8)
    image = tv_tensors.Image(palette[classes].permute(2, 0, 1).contiguous())
    augmentation = build_train_augmentation([40, 60, 90], 1000, (48, 64), color_augmentation=False)
    flips = set()
    for seed in range(40):
        torch.manual_seed(seed)
        out_image, out_labels = augmentation(image, tv_tensors.Mask(classes * LABEL_DIVISOR))
        out_classes = out_labels // LABEL_DIVISOR
        colour_classes = out_image.as_subclass(torch.Tensor).argmax(dim=0)
        # Bilinear resizing blends colours only on the one-pixel borders between regions.
        assert (colour_classes == out_classes).float().mean() > 0.97
        corner = (out_classes == 2).nonzero()
        if len(corner):
            flips.add(bool(corner[:, 1].float().mean() > out_classes.shape[1] / 2))
    assert flips == {False, True}


def test_ade20k_recipe_pads_small_crops():
    augmentation = official_train_augmentation("ade20k", "semantic", scale=0.125)  # crop 64x64, short sides 32..128
    image = tv_tensors.Image(torch.full((3, 40, 50), 7, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.full((40, 50), 3 * LABEL_DIVISOR, dtype=torch.int64))
    sizes = set()
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, out_mask = augmentation(image, mask)
        assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64)
        valid = out_mask != 255 * LABEL_DIVISOR
        assert set(out_mask[valid].unique().tolist()) <= {3 * LABEL_DIVISOR}
        rows, columns = int(valid.any(1).sum()), int(valid.any(0).sum())
        assert valid[:rows, :columns].all()  # the image is top-left, padding bottom/right
        assert (out_image[:, ~valid] == 128).all()
        sizes.add((rows, columns))
    assert len(sizes) > 1


def test_crop_single_category_area_rule():
    # Class 2 on the left 50 columns, class 1 on the right 50; crops are 60 wide. A crop at x0 passes the rule
    # (two classes, none above 75%) when 6 <= x0 <= 34: 29 of the 41 positions.
    labels = torch.ones(10, 100, dtype=torch.int64)
    labels[:, :50] = 2
    labels[:, 95:] = 255  # ignored pixels do not count
    mask = tv_tensors.Mask(labels * LABEL_DIVISOR)

    def crop_fractions(max_area):
        crop = RandomCropWithCategoryAreaConstraint((10, 60), max_area, ignore_index=255)
        fractions = []
        for seed in range(100):
            torch.manual_seed(seed)
            out = crop(mask).as_subclass(torch.Tensor) // LABEL_DIVISOR
            assert out.shape == (10, 60)
            counts = torch.stack([(out == c).sum() for c in (1, 2)]).float()
            fractions.append(float(counts.max() / counts.sum()))
        return np.array(fractions)

    assert (crop_fractions(0.75) < 0.75).all()
    assert (crop_fractions(1.0) >= 0.75).mean() > 0.15  # the rule is off at 1.0 (the official configs)


def _opencv_like_hsv(rgb: np.ndarray) -> np.ndarray:
    """Reference 8-bit HSV (hue in units of 2 degrees) computed with colorsys."""
    out = []
    for r, g, b in rgb.reshape(-1, 3) / 255.0:
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        out.append((round(h * 180) % 180, round(s * 255), round(v * 255)))
    return np.array(out)


def test_color_aug_ssd_matches_reference():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    hue, saturation, value = rgb_to_hsv_uint8(torch.from_numpy(rgb))
    reference = _opencv_like_hsv(rgb.transpose(1, 2, 0))
    ours = torch.stack([hue, saturation, value], dim=-1).reshape(-1, 3).numpy().astype(int)
    assert np.abs(ours - reference).max() <= 1
    back = hsv_uint8_to_rgb(hue, saturation, value).numpy().transpose(1, 2, 0).reshape(-1, 3)
    expected = [[round(c * 255) for c in colorsys.hsv_to_rgb(h / 180, s / 255, v / 255)] for h, s, v in ours.tolist()]
    assert np.abs(back.astype(int) - np.array(expected)).max() <= 1

    image = tv_tensors.Image(torch.from_numpy(rgb))
    mask = tv_tensors.Mask(torch.arange(64).reshape(8, 8))
    augmentation = ColorAugSSD()
    draws = {"brightness": [], "contrast": [], "saturation": [], "hue": []}
    for seed in range(200):
        torch.manual_seed(seed)
        params = augmentation.make_params([image, mask])
        for key in draws:
            draws[key].append(params[key])
        out_image, out_mask = augmentation.transform(image, params), augmentation.transform(mask, params)
        assert out_mask is mask and out_image.dtype == torch.uint8
        if params["contrast"] is params["saturation"] is params["hue"] is None and params["brightness"] is not None:
            # brightness alone: add, clip, truncate (numpy's astype(uint8))
            expected = np.clip(rgb.astype(np.float32) + np.float32(params["brightness"]), 0, 255).astype(np.uint8)
            np.testing.assert_array_equal(out_image.numpy(), expected)
    for key, (low, high) in {"brightness": (-32, 32), "contrast": (0.5, 1.5), "saturation": (0.5, 1.5)}.items():
        values = [v for v in draws[key] if v is not None]
        assert 60 < len(values) < 140 and low <= min(values) and max(values) <= high
    hues = [v for v in draws["hue"] if v is not None]
    assert all(isinstance(v, int) and -18 <= v <= 18 for v in hues) and 60 < len(hues) < 140


# ---------------------------------------------------------------------------------------------------------------------
# Model inputs, seeding and collation
# ---------------------------------------------------------------------------------------------------------------------


def test_transform_targets_without_augmentation(cityscapes_root, ade20k_root):
    processor = PEMImageProcessor.from_preset("pem-r50-cityscapes-panoptic")
    example = load_cityscapes(cityscapes_root, split="train", task="semantic")[0]
    inputs = PEMSegmentationTransform(processor, task="semantic", num_labels=19)(example)
    train_ids = torch.from_numpy(np.array(example["semantic"]).astype(np.int64))
    expected_classes = [c for c in train_ids.unique().tolist() if c != 255]
    assert inputs["class_labels"].tolist() == expected_classes
    assert torch.equal(inputs["mask_labels"].bool(), train_ids[None] == torch.tensor(expected_classes)[:, None, None])
    assert inputs["pixel_values"].shape == (3, 64, 128) and inputs["pixel_mask"].all()
    # label_map: the same target as one map, class * LABEL_DIVISOR, ignored pixels -1.
    expected_map = torch.where(train_ids == 255, -1, train_ids * LABEL_DIVISOR).int()
    assert inputs["label_map"].dtype == torch.int32 and torch.equal(inputs["label_map"], expected_map)

    example = load_cityscapes(cityscapes_root, split="train", task="panoptic", panoptic_source="instance_ids")[0]
    inputs = PEMSegmentationTransform(processor, task="panoptic")(example)
    instance_ids = np.array(example["panoptic"]).astype(np.int64)
    expected = {}  # independent: thing instances and stuff, no crowd, no ignored labels
    for value in np.unique(instance_ids):
        label_id = value // 1000 if value >= 1000 else value
        if label_id in CS_LABEL_TO_TRAIN and not (value < 1000 and label_id in CS_THING_LABEL_IDS):
            expected[CS_LABEL_TO_TRAIN[label_id], (instance_ids == value).tobytes()] = True
    ours = {(int(c), m.numpy().astype(bool).tobytes()) for c, m in zip(inputs["class_labels"], inputs["mask_labels"])}
    assert ours == set(expected)
    # Each mask is one label_map value of its class, distinct per mask; pixels under no mask (void, crowd) are -1.
    label_map = inputs["label_map"]
    assert torch.equal(label_map == -1, ~inputs["mask_labels"].any(0))
    values = [label_map[mask].unique() for mask in inputs["mask_labels"]]
    assert all(len(v) == 1 for v in values) and len({int(v) for v in values}) == len(values)
    assert [int(v) // LABEL_DIVISOR for v in values] == inputs["class_labels"].tolist()

    # ADE20K semantic maps are reduced by the preset processor's do_reduce_labels (0 = "other" is ignored).
    example = load_ade20k(ade20k_root, split="train", task="semantic")[0]
    inputs = PEMSegmentationTransform(PEMImageProcessor.from_preset("pem-r50-ade20k-semantic"), task="semantic")(
        example
    )
    raw = np.array(example["semantic"])
    assert inputs["class_labels"].tolist() == [int(c) - 1 for c in np.unique(raw) if c != 0]
    with pytest.raises(ValueError, match="has class id .* but the model has 5 classes"):
        PEMSegmentationTransform(processor, task="semantic", reduce_labels=True, num_labels=5)(example)
    bad = dict(example, semantic=example["semantic"].crop((0, 0, 10, 10)))
    with pytest.raises(ValueError, match="Size mismatch"):
        PEMSegmentationTransform(processor, task="semantic")(bad)


def test_seeded_dataset_and_collate(cityscapes_root):
    processor = PEMImageProcessor.from_preset("pem-r50-cityscapes-panoptic")
    train = load_cityscapes(cityscapes_root, split="train", task="panoptic")
    augmentation = official_train_augmentation("cityscapes", "panoptic", scale=0.0625)  # crop 32x64
    dataset = AugmentedSegmentationDataset(train, PEMSegmentationTransform(processor, "panoptic", augmentation), 5)

    state = torch.random.get_rng_state()
    first = [dataset[i] for i in range(len(dataset))]
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    torch.manual_seed(123)
    again = [dataset[i] for i in reversed(range(len(dataset)))][::-1]  # other order, other global RNG state
    for a, b in zip(first, again):
        assert all(torch.equal(a[key], b[key]) for key in a)
    dataset.set_epoch(1)
    assert any(not torch.equal(a["pixel_values"], dataset[i]["pixel_values"]) for i, a in enumerate(first))

    for example in first:
        assert example["pixel_values"].shape == (3, 32, 64)
        assert example["mask_labels"].shape[1:] == (32, 64)
        assert len(example["mask_labels"]) == len(example["class_labels"]) > 0
        # masks of a panoptic target do not overlap
        assert example["mask_labels"].sum(0).max() <= 1
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_fn)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (3, 3, 32, 64) and batch["pixel_mask"].shape == (3, 32, 64)
    assert isinstance(batch["mask_labels"], list) and len(batch["class_labels"]) == 3

    # Different sizes are padded bottom/right with 0, masks included.
    small = {key: value[..., :16, :40] if key != "class_labels" else value for key, value in first[0].items()}
    batch = collate_fn([small, first[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 64)
    assert batch["pixel_mask"][0, :16, :40].all() and not batch["pixel_mask"][0, 16:].any()
    assert not batch["pixel_mask"][0, :, 40:].any() and batch["mask_labels"][0].shape[1:] == (32, 64)
    assert not batch["mask_labels"][0][:, 16:].any()
    assert batch["label_maps"].shape == (2, 32, 64) and torch.equal(batch["label_maps"][1], first[1]["label_map"])
    assert torch.equal(batch["label_maps"][0, :16, :40], small["label_map"])
    assert (batch["label_maps"][0, 16:] == -1).all() and (batch["label_maps"][0, :, 40:] == -1).all()


def test_transform_decodes_images_as_a_viewer_shows_them(cityscapes_root):
    """16-bit and transparent training images: the model inputs of the 8-bit RGB image a viewer shows (value / 257;
    transparent pixels white), not Pillow's clipped or alpha-dropping `convert("RGB")`."""
    processor = PEMImageProcessor.from_preset("pem-r50-cityscapes-panoptic")
    transform = PEMSegmentationTransform(processor, task="semantic", num_labels=19)
    example = dict(load_cityscapes(cityscapes_root, split="train", task="semantic")[0])
    rgb = np.array(example["image"].convert("RGB"))
    gray = rgb[..., 1]
    alpha = np.where(np.arange(rgb.shape[1]) < rgb.shape[1] // 2, 0, 255).astype(np.uint8)[None].repeat(len(rgb), 0)
    cases = [
        (Image.fromarray(gray.astype(np.uint16) * 257), np.dstack([gray] * 3)),
        (Image.fromarray(np.dstack([rgb, alpha])), np.where(alpha[..., None] == 0, 255, rgb).astype(np.uint8)),
    ]
    for image, shown in cases:
        expected = transform({**example, "image": Image.fromarray(shown)})["pixel_values"]
        assert torch.equal(transform({**example, "image": image})["pixel_values"], expected)
    assert not torch.equal(  # the 16-bit case is one Pillow alone gets wrong
        transform({**example, "image": cases[0][0].convert("RGB")})["pixel_values"],
        transform({**example, "image": Image.fromarray(cases[0][1])})["pixel_values"],
    )
