"""Deployment outside eager PyTorch: ONNX export (every backbone, 19 and 150 classes, dynamic shapes), the ONNX
Runtime model behind the processor and the pipeline, int8 quantization, `torch.export`, and the errors of each."""

import json
import sys

import numpy as np
import onnx
import PIL.Image
import pytest
import torch
from tiny_configs import (
    assert_close_relative,
    assert_pipelines_give_the_same_segments,
    backbone_model,
    save_confident_cityscapes_checkpoint,
)
from transformers import pipeline

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor
from transformers_pem.cli import main as cli
from transformers_pem.deploy.onnx_export import (
    INT8_FILE,
    ONNX_FILE,
    calibration_images,
    export,
    export_onnx,
    export_program,
)
from transformers_pem.deploy.onnx_model import PEMOnnxModel
from transformers_pem.transformer_decoder_pem import PEMPrototypeCrossAttention

# An image whose processed size (resized to 96x134, padded to 96x160) is neither the traced example's nor square.
ODD_IMAGE = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 98, 3), dtype=np.uint8))


def eager_logits(model, pixel_values):
    with torch.no_grad():
        outputs = model(pixel_values)
    return outputs.class_queries_logits, outputs.masks_queries_logits


@pytest.mark.parametrize(("backbone", "num_labels"), [("r50", 19), ("stdc1", 19), ("stdc2", 150), ("timm", 19)])
def test_onnx_export_matches_eager_at_several_sizes(backbone, num_labels, tmp_path):
    """One export per backbone runs at several batch sizes and image sizes in ONNX Runtime, within 1e-4 relative of
    the unfolded eager model; the graph keeps the deformable sampling as DeformConv nodes and passes onnx.checker."""
    model = backbone_model(backbone, num_labels)
    path = export_onnx(model, tmp_path / ONNX_FILE)
    assert not model.batch_norm_folded  # the export folded a copy
    graph = onnx.load(path)
    onnx.checker.check_model(graph, full_check=True)
    operators = [node.op_type for node in graph.graph.node]
    # Deformable sampling kept; no ONNX loop; the transposed convolutions exported as convolutions.
    assert operators.count("DeformConv") == 3 and "Loop" not in operators and "ConvTranspose" not in operators
    deform_weights = {node.input[1] for node in graph.graph.node if node.op_type == "DeformConv"}
    initializers = {tensor.name: tensor for tensor in graph.graph.initializer}
    assert all(tuple(initializers[name].dims[2:]) == (3, 3) for name in deform_weights)

    config = model.config.to_dict()
    (tmp_path / "config.json").write_text(json.dumps(config))
    runtime = PEMOnnxModel.from_pretrained(tmp_path)
    torch.manual_seed(1)
    processor = PEMImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})
    odd = processor(ODD_IMAGE, return_tensors="pt")["pixel_values"]
    assert tuple(odd.shape[-2:]) == (96, 160)
    for pixel_values in (torch.randn(1, 3, 128, 256), torch.randn(3, 3, 64, 64), odd):
        outputs = runtime(pixel_values)
        expected_classes, expected_masks = eager_logits(model, pixel_values)
        assert outputs.class_queries_logits.shape == (pixel_values.shape[0], 8, num_labels + 1)
        assert_close_relative(outputs.class_queries_logits, expected_classes)
        assert_close_relative(outputs.masks_queries_logits, expected_masks)


def test_onnx_selection_equals_eager_argmax_with_ties(tmp_path):
    """The exported prototype selection returns the same token as the eager one where scores tie: duplicated tokens
    (first maximum), and queries whose mask excludes every token (token 0, as officially), over more tokens than
    the eager chunk size."""
    import onnxruntime

    attention = PEMPrototypeCrossAttention(hidden_dim=8, num_heads=2).eval()

    class Selection(torch.nn.Module):
        def forward(self, memory, queries, mask_logits):
            return attention.select_prototypes(memory, queries, mask_logits)[1]

    tokens = attention.selection_chunk_size + 300
    generator = torch.Generator().manual_seed(0)
    distinct = torch.nn.functional.normalize(torch.randn(1, 16, 8, generator=generator), dim=-1)
    memory = distinct[:, torch.randint(0, 16, (tokens,), generator=generator)]  # every token repeated many times
    memory[:, tokens - 1] = distinct[:, 3]
    queries = torch.nn.functional.normalize(torch.randn(1, 5, 8, generator=generator), dim=-1)
    mask_logits = torch.randn(1, 5, tokens, generator=generator)
    mask_logits[:, 1] = -1.0  # query 1 masks every token
    mask_logits[:, 2, : attention.selection_chunk_size] = -1.0  # query 2 keeps only tokens of the second chunk
    dim = torch.export.Dim("tokens", min=2, max=100000)
    program = torch.onnx.export(
        Selection(),
        (memory, queries, mask_logits),
        dynamo=True,
        opset_version=19,
        input_names=["memory", "queries", "mask_logits"],
        dynamic_shapes={"memory": {1: dim}, "queries": {}, "mask_logits": {2: dim}},
        verbose=False,
    )
    program.save(str(tmp_path / "selection.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "selection.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = Selection()(memory, queries, mask_logits)
    (indices,) = session.run(
        None, {"memory": memory.numpy(), "queries": queries.numpy(), "mask_logits": mask_logits.numpy()}
    )
    assert torch.equal(torch.from_numpy(indices), expected)
    assert (expected[:, :, 1] == 0).all() and (expected[:, :, 2] >= attention.selection_chunk_size).all()
    # The tie rule itself, computed independently: per head, the first best token the mask keeps, else 0.
    head_dim = 4
    for head in range(2):
        head_scores = torch.einsum(
            "nc,qc->qn",
            memory[0, :, head * head_dim : (head + 1) * head_dim],
            queries[0, :, head * head_dim : (head + 1) * head_dim],
        )
        keep = mask_logits[0] >= 0
        head_scores = head_scores.masked_fill(~keep, float("-inf"))
        for query in range(5):
            row = head_scores[query]
            first = int(torch.nonzero(row == row.max())[0]) if torch.isfinite(row.max()) else 0
            assert int(expected[0, head, query]) == first


def test_torch_export_program_saves_reloads_and_matches_eager(tmp_path):
    """`torch.export` with dynamic height and width; the saved program reloads and gives the eager outputs at two
    sizes."""
    model, _ = save_confident_cityscapes_checkpoint(tmp_path / "checkpoint")
    program = export_program(model)
    torch.export.save(program, tmp_path / "pem.pt2")
    reloaded = torch.export.load(tmp_path / "pem.pt2").module()
    torch.manual_seed(2)
    for pixel_values in (torch.randn(1, 3, 64, 128), torch.randn(2, 3, 160, 96)):
        classes, masks = reloaded(pixel_values)
        expected_classes, expected_masks = eager_logits(model, pixel_values)
        assert_close_relative(classes, expected_classes)
        assert_close_relative(masks, expected_masks)


@pytest.fixture(scope="module")
def trained_export(trained_tiny_checkpoint, tmp_path_factory):
    """The session's briefly trained tiny PEM exported with `pem export` to fp32 and statically quantized int8
    calibrated on the validation images."""
    checkpoint, calibration = trained_tiny_checkpoint
    output = tmp_path_factory.mktemp("export") / "onnx"
    code = cli.main(
        [
            "export",
            str(checkpoint),
            "--output",
            str(output),
            "--quantize",
            "int8",
            "--calibration-data",
            str(calibration),
        ]
    )
    assert code == 0
    images = [PIL.Image.open(path).convert("RGB") for path in sorted(calibration.rglob("*.png"))]
    return checkpoint, output, images


@pytest.mark.slow
def test_export_directory_is_self_describing(trained_export):
    checkpoint, output, _ = trained_export
    assert {ONNX_FILE, INT8_FILE, "config.json", "preprocessor_config.json"} <= {p.name for p in output.iterdir()}
    saved = PEMConfig.from_pretrained(checkpoint).to_dict()
    exported = PEMConfig.from_pretrained(output).to_dict()
    assert exported["id2label"] == saved["id2label"] and exported["thing_ids"] == saved["thing_ids"]
    assert (
        PEMImageProcessor.from_pretrained(output).to_dict() == PEMImageProcessor.from_pretrained(checkpoint).to_dict()
    )


@pytest.mark.slow
@pytest.mark.parametrize("subtask", ["semantic", "panoptic", "instance"])
def test_pipeline_on_onnx_model_gives_the_eager_segments(trained_export, subtask):
    checkpoint, output, images = trained_export
    processor = PEMImageProcessor.from_pretrained(output)
    model = PEMForUniversalSegmentation.from_pretrained(checkpoint)
    eager = pipeline("image-segmentation", model=model, image_processor=processor)
    runtime = pipeline("image-segmentation", model=PEMOnnxModel.from_pretrained(output), image_processor=processor)
    assert_pipelines_give_the_same_segments(eager, runtime, images, subtask)


@pytest.mark.slow
def test_int8_model_agrees_with_fp32_on_most_pixels(trained_export):
    _, output, images = trained_export
    processor = PEMImageProcessor.from_pretrained(output)
    fp32 = PEMOnnxModel.from_pretrained(output)
    int8 = PEMOnnxModel.from_pretrained(output, file_name=INT8_FILE)
    graph = onnx.load(output / INT8_FILE)
    operators = [node.op_type for node in graph.graph.node]
    assert operators.count("QuantizeLinear") > 10 and operators.count("DeformConv") == 3
    agreement, clear_agreement = [], []
    for image in images:
        inputs = processor(image, return_tensors="pt")
        sizes = [(image.height, image.width)]
        fp32_result, int8_result = (
            processor.post_process_semantic_segmentation(model(**inputs), target_sizes=sizes)[0]
            for model in (fp32, int8)
        )
        scores = processor.post_process_semantic_segmentation(
            fp32(**inputs), target_sizes=sizes, return_segmentation_scores=True
        )[0].segmentation_scores
        top2 = scores.topk(2, dim=0).values
        clear = top2[0] - top2[1] > 0.1  # int8 rounding can flip near-ties of a briefly trained model, not more
        same = fp32_result == int8_result
        agreement.append(same.float().mean().item())
        clear_agreement.append(same[clear].float().mean().item())
        assert clear.float().mean() > 0.5
    assert np.mean(clear_agreement) >= 0.98 and np.mean(agreement) >= 0.85, (clear_agreement, agreement)


def test_dynamic_int8_without_calibration_data(tmp_path):
    save_confident_cityscapes_checkpoint(tmp_path / "checkpoint")
    written = export(tmp_path / "checkpoint", tmp_path / "onnx", quantize="int8-dynamic")
    operators = {node.op_type for node in onnx.load(written["int8"]).graph.node}
    assert {"ConvInteger", "DynamicQuantizeLinear"} <= operators
    processor = PEMImageProcessor.from_pretrained(tmp_path / "onnx")
    inputs = processor(ODD_IMAGE, return_tensors="pt")
    fp32 = PEMOnnxModel.from_pretrained(tmp_path / "onnx")(**inputs)
    int8 = PEMOnnxModel.from_pretrained(tmp_path / "onnx", file_name=INT8_FILE)(**inputs)
    assert torch.equal(fp32.class_queries_logits.argmax(-1), int8.class_queries_logits.argmax(-1))


@pytest.mark.slow
def test_calibration_images_from_a_folder_and_a_saved_dataset(trained_export, tmp_path):
    """Calibration reads the images of a folder (recursively, name order) or the image column of a saved `datasets`
    split, up to the number asked for."""
    import datasets

    _, _, images = trained_export
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    for index, image in enumerate(images):
        image.save(folder / ("nested" if index % 2 else ".") / f"{index}.png")
    (folder / "notes.txt").write_text("not an image")
    from_folder = calibration_images(folder, num_images=3)
    expected = [images[0], images[2], images[1]]  # 0.png, 2.png, then nested/1.png
    assert [np.asarray(a).tolist() for a in from_folder] == [np.asarray(e).tolist() for e in expected]
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"image": images})}).save_to_disk(tmp_path / "ds")
    from_dataset = calibration_images(tmp_path / "ds", num_images=10, split="validation")
    assert [np.asarray(a).tolist() for a in from_dataset] == [np.asarray(e).tolist() for e in images]
    with pytest.raises(ValueError, match="No images"):
        calibration_images(folder / "*.txt", num_images=3)


# ------------------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def exported_dir(trained_export):
    return trained_export[1]


def test_export_without_the_extra_names_it(tmp_path, monkeypatch):
    model = backbone_model("timm")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r'pip install "transformers-pem\[export\]"'):
        export_onnx(model, tmp_path / ONNX_FILE)


def test_export_refuses_an_opset_without_deform_conv(tmp_path):
    with pytest.raises(ValueError, match="opset 17 is not supported.*DeformConv.*19"):
        export_onnx(backbone_model("timm"), tmp_path / ONNX_FILE, opset=17)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(tmp_path), "--output", str(tmp_path / "o"), "--opset", "18"])
    assert exit_info.value.code == 2


def test_export_of_a_missing_checkpoint_or_into_a_file(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 1
    assert "missing' does not exist: pass a folder written by save_pretrained" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        export(tmp_path / "missing", tmp_path / "file")
    with pytest.raises(ValueError, match="quantize='int4' is not supported"):
        export(tmp_path / "missing", tmp_path / "out", quantize="int4")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign", "missing"])
def test_runtime_refuses_a_damaged_or_foreign_graph(exported_dir, tmp_path, damage):
    directory = tmp_path / damage
    directory.mkdir()
    (directory / "config.json").write_bytes((exported_dir / "config.json").read_bytes())
    data = (exported_dir / ONNX_FILE).read_bytes()
    if damage == "truncated":
        (directory / ONNX_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        (directory / ONNX_FILE).write_bytes(b"")
    elif damage == "foreign":
        x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
        onnx.save(onnx.helper.make_model(graph), directory / ONNX_FILE)
    expected = {
        "truncated": "is not a loadable ONNX model.*truncated or corrupt",
        "empty": "is not a loadable ONNX model",
        "foreign": r"not a PEM export: it takes \['x'\]",
        "missing": "No ONNX model at",
    }[damage]
    with pytest.raises(ValueError, match=expected):
        PEMOnnxModel.from_pretrained(directory)


@pytest.mark.slow
def test_runtime_needs_the_pem_config_and_loads_an_older_one(exported_dir, tmp_path):
    (tmp_path / ONNX_FILE).symlink_to(exported_dir / ONNX_FILE)
    with pytest.raises(ValueError, match="has no config.json"):
        PEMOnnxModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mask2former"}))
    with pytest.raises(ValueError, match="config of a 'mask2former' model, not of PEM"):
        PEMOnnxModel.from_pretrained(tmp_path)
    # A config written before later fields existed (only the labels and the architecture's sizes): their defaults.
    config = json.loads((exported_dir / "config.json").read_text())
    older = {key: config[key] for key in ("model_type", "id2label", "label2id", "backbone_config", "num_queries")}
    (tmp_path / "config.json").write_text(json.dumps(older))
    model = PEMOnnxModel.from_pretrained(tmp_path)
    assert model.config.id2label == {int(k): v for k, v in config["id2label"].items()}


@pytest.mark.slow
def test_runtime_model_errors(exported_dir):
    model = PEMOnnxModel.from_pretrained(exported_dir)
    with pytest.raises(ValueError, match="multiples of 32, got 70x98"):
        model(torch.zeros(1, 3, 70, 98))
    with pytest.raises(ValueError, match=r"\(batch_size, 3, height, width\)"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="need the PyTorch model"):
        model(torch.zeros(1, 3, 64, 64), output_hidden_states=True)
    with pytest.raises(ValueError, match="providers="):
        model.to("cuda")
    with pytest.raises(ValueError, match="inference only"):
        model.train()
    with pytest.raises(ValueError, match=r"not available in this installation.*onnxruntime-gpu"):
        PEMOnnxModel.from_pretrained(exported_dir, providers=["TensorrtExecutionProvider"])
    assert model.eval() is model and model.to("cpu") is model
