"""pipeline("image-segmentation") and trust_remote_code on a tiny saved PEM checkpoint (offline)."""

import base64
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_configs import TINY_DECODER
from transformers import (
    AutoImageProcessor,
    AutoModelForUniversalSegmentation,
    ResNetConfig,
    TimmBackboneConfig,
    pipeline,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING

from transformers_pem import PEMConfig, PEMForUniversalSegmentation
from transformers_pem.image_processing_pem import PEMImageProcessor
from transformers_pem.image_processing_pem_pil import PEMImageProcessorPil

ID2LABEL = {0: "background", 1: "square", 2: "disc"}
# 50x70 is resized to 64x90 and padded to 64x96: results must drop the padding.
IMAGE = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny PEM (ResNet-style backbone) and its processor, saved like a released checkpoint."""
    torch.manual_seed(0)
    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 16],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = PEMConfig(
        backbone_config=backbone,
        **TINY_DECODER,
        decoder_layers=3,
        id2label=ID2LABEL,
        thing_ids=[1, 2],
    )
    model = PEMForUniversalSegmentation(config).eval()
    with torch.no_grad():  # confident classes, so that every subtask finds segments
        model.class_predictor.bias.copy_(torch.tensor([0.0, 8.0, 5.0, -4.0]))
    processor = PEMImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, thing_ids=[1, 2])
    directory = tmp_path_factory.mktemp("tiny-pem")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory, model, processor


def direct_results(model, processor, subtask):
    """The processor + model + post-processing path, with the processor's pixel_mask passed explicitly."""
    inputs = processor(IMAGE, return_tensors="pt")
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"])
    kwargs = {"target_sizes": [(IMAGE.height, IMAGE.width)], "pixel_mask": inputs["pixel_mask"]}
    if subtask == "semantic":
        return processor.post_process_semantic_segmentation(outputs, **kwargs)[0]
    kwargs.update(threshold=0.3, mask_threshold=0.5, overlap_mask_area_threshold=0.5)
    if subtask == "instance":
        return processor.post_process_instance_segmentation(outputs, **kwargs)[0]
    return processor.post_process_panoptic_segmentation(outputs, **kwargs)[0]


def test_checkpoint_carries_code_and_auto_map(checkpoint):
    directory, _, _ = checkpoint
    for name in (
        "configuration_pem.py",
        "modeling_pem.py",
        "image_processing_pem.py",
        "image_processing_pem_pil.py",
        "labels_pem.py",
        "image_loading_pem.py",
    ):
        assert (directory / name).is_file()
    auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_pem.PEMConfig"
    assert auto_map["AutoModelForUniversalSegmentation"] == "modeling_pem.PEMForUniversalSegmentation"
    assert auto_map["AutoModelForSemanticSegmentation"] == "modeling_pem.PEMForUniversalSegmentation"
    processor_auto_map = json.loads((directory / "preprocessor_config.json").read_text())["auto_map"]
    assert processor_auto_map["AutoImageProcessor"] == {
        "torchvision": "image_processing_pem.PEMImageProcessor",
        "pil": "image_processing_pem_pil.PEMImageProcessorPil",
    }


def test_pipeline_from_a_path_asks_nothing(checkpoint, monkeypatch):
    """transformers' pipeline also tries `AutoVideoProcessor` on the folder; with a plain-string `auto_map` entry it
    would ask "run custom code? [y/N]" and wait 15 s in a terminal."""
    directory, _, _ = checkpoint
    questions = []
    monkeypatch.setattr("builtins.input", lambda prompt="": questions.append(prompt) or "n")
    segmenter = pipeline("image-segmentation", model=str(directory))
    assert questions == []
    assert type(segmenter.image_processor) is PEMImageProcessor
    assert segmenter(PIL.Image.new("RGB", (96, 64)), subtask="semantic")


def test_auto_classes_load_the_checkpoint(checkpoint):
    directory, _, _ = checkpoint
    assert type(AutoModelForUniversalSegmentation.from_pretrained(directory)) is PEMForUniversalSegmentation
    assert type(AutoImageProcessor.from_pretrained(directory)) is PEMImageProcessor
    assert type(AutoImageProcessor.from_pretrained(directory, backend="pil")) is PEMImageProcessorPil


def test_pipeline_logs_no_error(checkpoint):
    _, model, processor = checkpoint
    # transformers' pipeline logs "The model ... is not supported for image-segmentation" for classes missing from its
    # static name tables.
    records = []
    handler = logging.Handler(level=logging.ERROR)
    handler.emit = records.append
    pipeline_logger = logging.getLogger("transformers.pipelines.base")
    pipeline_logger.addHandler(handler)
    try:
        pipeline("image-segmentation", model=model, image_processor=processor)
    finally:
        pipeline_logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == []
    # The listing leaves transformers' own Auto mappings working.
    assert "Mask2FormerForUniversalSegmentation" in [
        cls.__name__ for cls in MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING.values()
    ]
    assert type(AutoModelForUniversalSegmentation.from_config(model.config)) is PEMForUniversalSegmentation


@pytest.mark.parametrize("subtask", [None, "semantic", "instance", "panoptic"])
def test_pipeline_matches_the_processor_and_model(checkpoint, subtask):
    directory, model, processor = checkpoint
    segmenter = pipeline("image-segmentation", model=str(directory), trust_remote_code=False)
    annotations = segmenter(IMAGE, subtask=subtask, threshold=0.3, overlap_mask_area_threshold=0.5)
    expected = direct_results(model, processor, subtask or "panoptic")  # the pipeline's default is panoptic
    assert annotations, "the biased tiny model should produce segments"
    if subtask == "semantic":
        labels = expected.unique().tolist()
        assert [a["label"] for a in annotations] == [ID2LABEL[label] for label in labels]
        masks = [(expected == label).numpy() for label in labels]
    else:
        assert [a["label"] for a in annotations] == [ID2LABEL[s["label_id"]] for s in expected["segments_info"]]
        assert [a["score"] for a in annotations] == [s["score"] for s in expected["segments_info"]]
        masks = [(expected["segmentation"] == s["id"]).numpy() for s in expected["segments_info"]]
    for annotation, mask in zip(annotations, masks):
        assert annotation["mask"].mode == "L" and annotation["mask"].size == IMAGE.size
        assert np.array_equal(np.asarray(annotation["mask"]) > 0, mask)


@pytest.mark.parametrize("subtask", ["semantic", "instance", "panoptic"])
def test_pipeline_batches_mixed_sizes_with_a_pad_size(checkpoint, subtask):
    """transformers' pipeline concatenates a batch's pixel_values, so images of different sizes need one padded size:
    with the processor's `pad_size`, a batch of three sizes gives each image's own results."""
    directory, _, _ = checkpoint
    processor = PEMImageProcessor.from_pretrained(directory, pad_size={"height": 128, "width": 128})
    segmenter = pipeline("image-segmentation", model=str(directory), image_processor=processor)
    rng = np.random.default_rng(1)
    images = [PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in
              [(50, 70, 3), (64, 128, 3), (90, 60, 3)]]  # fmt: skip
    kwargs = {"subtask": subtask, "threshold": 0.3, "overlap_mask_area_threshold": 0.5}
    batched = segmenter(images, batch_size=3, **kwargs)
    assert len(batched) == 3
    for image, annotations in zip(images, batched):
        alone = segmenter(image, **kwargs)
        assert annotations and [a["label"] for a in annotations] == [a["label"] for a in alone]
        for annotation, expected in zip(annotations, alone):
            assert annotation["mask"].size == image.size
            assert np.array_equal(np.asarray(annotation["mask"]), np.asarray(expected["mask"]))


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, PIL.Image, torch
    from transformers import (AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation,
                              AutoModelForUniversalSegmentation, pipeline)

    directory = sys.argv[1]
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    config = AutoConfig.from_pretrained(directory, trust_remote_code=True)
    model = AutoModelForUniversalSegmentation.from_pretrained(directory, trust_remote_code=True).eval()
    semantic_model = AutoModelForSemanticSegmentation.from_pretrained(directory, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(directory, trust_remote_code=True)
    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).class_queries_logits
    pil_processor = AutoImageProcessor.from_pretrained(directory, trust_remote_code=True, backend="pil")
    segmenter = pipeline("image-segmentation", model=directory, trust_remote_code=True)
    annotations = segmenter(image, subtask="panoptic", threshold=0.3, overlap_mask_area_threshold=0.5)
    print(json.dumps({
        "classes": [type(config).__name__, type(model).__name__, type(semantic_model).__name__,
                    type(processor).__name__, type(pil_processor).__name__],
        "modules": [type(model).__module__, type(processor).__module__, type(pil_processor).__module__],
        "pil_pixel_values": pil_processor(image, return_tensors="pt")["pixel_values"].tolist(),
        "logits": logits.tolist(),
        "labels": [a["label"] for a in annotations],
        "mask_sums": [int((np.asarray(a["mask"]) > 0).sum()) for a in annotations],
        "imported_transformers_pem": "transformers_pem" in sys.modules,
    }))
    """
)


def run_in_fresh_process(script: str, directory: Path, tmp_path: Path) -> dict:
    """Run `script DIRECTORY` in a new process that never imports transformers_pem (another working directory, no
    PYTHONPATH, its own modules cache) and return the JSON it prints last."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    completed = subprocess.run(
        [sys.executable, "-c", script, str(directory)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_trust_remote_code_in_a_fresh_process(checkpoint, tmp_path):
    """A process that never imports transformers_pem loads everything from the checkpoint's own code files."""
    directory, model, processor = checkpoint
    result = run_in_fresh_process(REMOTE_CODE_SCRIPT, directory, tmp_path)
    assert not result["imported_transformers_pem"]
    assert result["classes"] == [
        "PEMConfig",
        "PEMForUniversalSegmentation",
        "PEMForUniversalSegmentation",
        "PEMImageProcessor",
        "PEMImageProcessorPil",
    ]
    assert all(module.startswith("transformers_modules.") for module in result["modules"])
    pil_inputs = PEMImageProcessorPil.from_pretrained(directory)(IMAGE, return_tensors="pt")
    torch.testing.assert_close(torch.tensor(result["pil_pixel_values"]), pil_inputs["pixel_values"])

    inputs = processor(IMAGE, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).class_queries_logits
    torch.testing.assert_close(torch.tensor(result["logits"]), logits, atol=1e-5, rtol=0)
    expected = direct_results(model, processor, "panoptic")
    assert result["labels"] == [ID2LABEL[s["label_id"]] for s in expected["segments_info"]]
    assert result["mask_sums"] == [int((expected["segmentation"] == s["id"]).sum()) for s in expected["segments_info"]]


PROCESSOR_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from transformers import AutoImageProcessor

    processors = [AutoImageProcessor.from_pretrained(sys.argv[1], trust_remote_code=True, **kwargs)
                  for kwargs in ({}, {"backend": "pil"}, {"backend": "torchvision"})]
    print(json.dumps({
        "classes": [type(processor).__name__ for processor in processors],
        "thing_ids": [processor.thing_ids for processor in processors],
        "imported_transformers_pem": "transformers_pem" in sys.modules,
    }))
    """
)


@pytest.mark.parametrize("saved", [PEMImageProcessor, PEMImageProcessorPil])
def test_a_saved_processor_of_either_backend_loads_both_in_a_fresh_process(saved, tmp_path):
    directory = tmp_path / "processor"
    saved.from_preset("pem-r50-ade20k-panoptic").save_pretrained(directory)
    assert {"image_processing_pem.py", "image_processing_pem_pil.py"} <= {path.name for path in directory.iterdir()}
    result = run_in_fresh_process(PROCESSOR_SCRIPT, directory, tmp_path)
    assert not result["imported_transformers_pem"]
    assert result["classes"] == ["PEMImageProcessor", "PEMImageProcessorPil", "PEMImageProcessor"]
    assert result["thing_ids"] == [PEMImageProcessor.from_preset("pem-r50-ade20k-panoptic").thing_ids] * 3


@pytest.mark.slow
def test_inference_notebook_runs_offline(checkpoint, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    directory, _, _ = checkpoint
    notebook = nbformat.read(Path(__file__).parents[1] / "notebooks" / "inference.ipynb", as_version=4)
    monkeypatch.setenv("PEM_CHECKPOINT", str(directory))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PEM_IMAGE", raising=False)
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 4  # the input image and three overlays


BACKBONE_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    import numpy as np, PIL.Image, torch
    from transformers import pipeline

    errors = []
    handler = logging.Handler()
    handler.emit = lambda record: errors.append(record.getMessage()) if record.levelno >= logging.ERROR else None
    logging.getLogger("transformers").addHandler(handler)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    segmenter = pipeline("image-segmentation", model=sys.argv[1], trust_remote_code=True)
    inputs = segmenter.image_processor(image, return_tensors="pt")
    with torch.no_grad():
        logits = segmenter.model(**inputs).class_queries_logits
    print(json.dumps({
        "backbone": type(segmenter.model.model.pixel_level_module.encoder).__name__,
        "model_module": type(segmenter.model).__module__,
        "logits": logits.tolist(),
        "num_segments": len(segmenter(image, subtask="semantic")),
        "errors": errors,
        "imported_transformers_pem": "transformers_pem" in sys.modules,
    }))
    """
)


def backbone_model(backbone: str) -> PEMForUniversalSegmentation:
    """A model of a preset's backbone (full size) or a timm backbone, with the tiny decoder."""
    torch.manual_seed(0)
    if backbone == "timm":
        timm_backbone = TimmBackboneConfig(backbone="resnet18", out_indices=[1, 2, 3, 4], num_channels=3)
        config = PEMConfig(backbone_config=timm_backbone, **TINY_DECODER, id2label=ID2LABEL)
    else:
        config = PEMConfig.from_preset(f"pem-{backbone}-cityscapes-panoptic", **TINY_DECODER)
    return PEMForUniversalSegmentation(config).eval()


@pytest.mark.parametrize(
    ("backbone", "encoder"),
    [("r50", "ResNetBackbone"), ("stdc1", "STDCBackbone"), ("stdc2", "STDCBackbone"), ("timm", "TimmBackbone")],
)
def test_trust_remote_code_loads_every_backbone(backbone, encoder, tmp_path):
    """Every backbone we support loads from the checkpoint's own code in a process that never imports
    transformers_pem, through the pipeline, with no error logged, and computes what the saved model computes."""
    model = backbone_model(backbone)
    processor = PEMImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, thing_ids=model.config.thing_ids)
    directory = tmp_path / "checkpoint"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    result = run_in_fresh_process(BACKBONE_SCRIPT, directory, tmp_path)
    assert not result["imported_transformers_pem"]
    assert result["backbone"] == encoder and result["model_module"].startswith("transformers_modules.")
    assert result["errors"] == []
    assert result["num_segments"] >= 1
    inputs = processor(IMAGE, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).class_queries_logits
    torch.testing.assert_close(torch.tensor(result["logits"]), logits, atol=1e-5, rtol=0)


def segment_masks(segmenter, image) -> list[tuple[str, np.ndarray]]:
    return [(a["label"], np.asarray(a["mask"])) for a in segmenter(image, subtask="panoptic", threshold=0.3)]


def test_pem_pipeline_decodes_files_as_a_viewer_shows_them(checkpoint, tmp_path):
    """16-bit, transparent and EXIF-rotated files: PEMImageSegmentationPipeline segments them as the 8-bit upright
    RGB image a viewer shows; transformers' own loader clips the 16-bit file to white."""
    from transformers_pem import PEMImageSegmentationPipeline

    directory, _, _ = checkpoint
    segmenter = pipeline("image-segmentation", model=str(directory), pipeline_class=PEMImageSegmentationPipeline)
    rgb = np.asarray(IMAGE)
    gray = rgb[..., 0]
    cases = {}
    # 16-bit grayscale: the viewer's 8-bit image is value / 257.
    PIL.Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    cases["deep.png"] = np.dstack([gray] * 3)
    # Transparent left half over white.
    alpha = np.full(gray.shape, 255, np.uint8)
    alpha[:, :35] = 0
    PIL.Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "alpha.png")
    cases["alpha.png"] = np.where(alpha[..., None] == 0, 255, rgb).astype(np.uint8)
    # Stored rotated by 90 degrees, with the EXIF orientation that turns it upright (6: rotate 270 to show).
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    PIL.Image.fromarray(np.rot90(rgb, k=1).copy()).save(tmp_path / "rotated.png", exif=exif)
    cases["rotated.png"] = rgb
    for name, shown in cases.items():
        expected = segment_masks(segmenter, PIL.Image.fromarray(shown))
        assert expected
        for given in (
            str(tmp_path / name),
            tmp_path / name,
            (tmp_path / name).read_bytes(),
            PIL.Image.open(tmp_path / name),
        ):
            found = segment_masks(segmenter, given)
            assert [label for label, _ in found] == [label for label, _ in expected], (name, type(given))
            assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(found, expected)), (name, type(given))
    deep = str(tmp_path / "deep.png")
    clipped = segment_masks(pipeline("image-segmentation", model=str(directory)), deep)
    found = segment_masks(segmenter, deep)
    assert len(clipped) != len(found) or any(not np.array_equal(a, b) for (_, a), (_, b) in zip(clipped, found))
    with pytest.raises(ValueError, match=r"missing\.png: no such file"):
        segmenter(str(tmp_path / "missing") + ".png")
    data = base64.b64encode((tmp_path / "alpha.png").read_bytes()).decode()
    expected = segment_masks(segmenter, tmp_path / "alpha.png")
    for encoded in (data, f"data:image/png;base64,{data}"):  # base64, as transformers' loader takes it too
        found = segment_masks(segmenter, encoded)
        assert [label for label, _ in found] == [label for label, _ in expected]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(found, expected))
