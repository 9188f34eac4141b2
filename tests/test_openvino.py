"""OpenVINO: the IR export (every backbone, dynamic shapes), `PEMOpenVINOModel` behind the processor, the pipeline and
the command lines, NNCF int8, and the errors of each."""

import copy
import json
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_configs import assert_pipelines_give_the_same_segments, backbone_model, save_confident_cityscapes_checkpoint
from transformers import pipeline

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor
from transformers_pem.cli import main as cli
from transformers_pem.deploy.openvino_export import (
    OPENVINO_FILE,
    OPENVINO_INT8_FILE,
    PRODUCT_PATTERN,
    export,
    export_openvino,
    quantize_openvino,
)
from transformers_pem.deploy.openvino_model import PEMOpenVINOModel

openvino = pytest.importorskip("openvino")

# An image whose processed size (resized to 96x134, padded to 96x160) is neither the traced example's nor square.
ODD_IMAGE = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 98, 3), dtype=np.uint8))


def logits(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        outputs = model(pixel_values)
    return outputs.class_queries_logits, outputs.masks_queries_logits


@pytest.mark.parametrize(("backbone", "num_labels"), [("r50", 19), ("stdc1", 19), ("stdc2", 150), ("timm", 19)])
def test_openvino_fp32_matches_float64_eager_at_several_sizes(backbone, num_labels, tmp_path):
    """One IR per backbone runs at several batch sizes and image sizes; its distance to the float64 eager model is
    within eager fp32's own distance to it (the noise floor: the hard prototype argmax flips near-ties under any
    change of float order), and the IR keeps float32 weights and the three deformable convolutions."""
    model = backbone_model(backbone, num_labels)
    path = export_openvino(model, tmp_path / OPENVINO_FILE)
    assert not model.batch_norm_folded  # the export folded a copy
    ir = openvino.Core().read_model(str(path))
    operations = [operation.get_type_name() for operation in ir.get_ordered_ops()]
    assert operations.count("DeformableConvolution") == 3
    assert not any(
        op.get_type_name() == "Constant" and op.get_element_type() == openvino.Type.f16 for op in ir.get_ordered_ops()
    )
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    runtime = PEMOpenVINOModel.from_pretrained(tmp_path)
    reference = copy.deepcopy(model).double()
    processor = PEMImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})
    odd = processor(ODD_IMAGE, return_tensors="pt")["pixel_values"]
    torch.manual_seed(1)
    for pixel_values in (torch.randn(1, 3, 128, 256), torch.randn(3, 3, 64, 64), odd):
        outputs = runtime(pixel_values)
        assert outputs.class_queries_logits.shape == (pixel_values.shape[0], 8, num_labels + 1)
        assert outputs.masks_queries_logits.shape == (
            pixel_values.shape[0],
            8,
            *(s // 4 for s in pixel_values.shape[-2:]),
        )
        exact = logits(reference, pixel_values.double())
        eager = logits(model, pixel_values)
        for actual, fp32, float64 in zip((outputs.class_queries_logits, outputs.masks_queries_logits), eager, exact):
            noise_floor = (fp32.double() - float64).abs().max().item()
            distance = (actual.double() - float64).abs().max().item()
            assert distance <= 2 * noise_floor + 1e-5 * max(1.0, float64.abs().max().item()), (distance, noise_floor)


@pytest.fixture(scope="module")
def trained_openvino(trained_tiny_checkpoint, tmp_path_factory):
    """The session's briefly trained tiny PEM exported with `pem export --format openvino`, with its NNCF int8 IR
    calibrated on the validation images."""
    checkpoint, calibration = trained_tiny_checkpoint
    output = tmp_path_factory.mktemp("openvino") / "ir"
    arguments = ["export", str(checkpoint), "--format", "openvino", "--output", str(output), "--quantize", "int8"]
    assert cli.main([*arguments, "--calibration-data", str(calibration)]) == 0
    images = [PIL.Image.open(path).convert("RGB") for path in sorted(calibration.rglob("*.png"))]
    return checkpoint, output, images


@pytest.mark.slow
def test_openvino_directory_is_self_describing(trained_openvino):
    checkpoint, output, _ = trained_openvino
    expected = {OPENVINO_FILE, "openvino_model.bin", OPENVINO_INT8_FILE, "openvino_model_int8.bin", "config.json"}
    names = {p.name for p in output.iterdir()}
    assert expected | {"preprocessor_config.json"} <= names and not any(name.startswith(".") for name in names)
    assert PEMConfig.from_pretrained(output).to_dict()["id2label"] == PEMConfig.from_pretrained(checkpoint).id2label
    assert (
        PEMImageProcessor.from_pretrained(output).to_dict() == PEMImageProcessor.from_pretrained(checkpoint).to_dict()
    )
    int8 = openvino.Core().read_model(str(output / OPENVINO_INT8_FILE))
    operations = [operation.get_type_name() for operation in int8.get_ordered_ops()]
    assert operations.count("FakeQuantize") > 10 and operations.count("DeformableConvolution") == 3


@pytest.mark.slow
@pytest.mark.parametrize("subtask", ["semantic", "panoptic", "instance"])
def test_pipeline_on_openvino_gives_the_eager_segments(trained_openvino, subtask):
    checkpoint, output, images = trained_openvino
    processor = PEMImageProcessor.from_pretrained(output)
    eager = pipeline("image-segmentation", model=PEMForUniversalSegmentation.from_pretrained(checkpoint),
                     image_processor=processor)  # fmt: skip
    runtime = pipeline("image-segmentation", model=PEMOpenVINOModel.from_pretrained(output), image_processor=processor)
    assert_pipelines_give_the_same_segments(eager, runtime, images, subtask)


@pytest.mark.slow
def test_int8_agrees_with_fp32_on_most_pixels(trained_openvino):
    _, output, images = trained_openvino
    processor = PEMImageProcessor.from_pretrained(output)
    fp32 = PEMOpenVINOModel.from_pretrained(output)
    int8 = PEMOpenVINOModel.from_pretrained(output, file_name=OPENVINO_INT8_FILE)
    agreement = []
    for image in images:
        inputs = processor(image, return_tensors="pt")
        fp32_result, int8_result = (
            processor.post_process_semantic_segmentation(model(**inputs), target_sizes=[(image.height, image.width)])[
                0
            ]
            for model in (fp32, int8)
        )
        agreement.append((fp32_result == int8_result).float().mean().item())
    assert np.mean(agreement) >= 0.95, agreement


@pytest.mark.slow
def test_predict_and_evaluate_on_openvino_equal_pytorch(trained_openvino, trained_tiny_checkpoint, tmp_path):
    """`pem predict --runtime openvino` writes the PyTorch run's segments; `pem evaluate --openvino` (and `--onnx`
    on an ONNX export of the same checkpoint) gives its metrics."""
    from transformers_pem.cli import evaluate as evaluate_cli

    checkpoint, output, _ = trained_openvino
    validation = trained_tiny_checkpoint[1]
    for runtime, model in (("pytorch", checkpoint), ("openvino", output)):
        arguments = [str(validation), f"--model={model}", f"--out={tmp_path / runtime}", "--no-progress"]
        assert cli.main(["predict", *arguments, f"--runtime={runtime}", "--task=panoptic"]) == 0
    pytorch_records = sorted((tmp_path / "pytorch" / "segments").rglob("*.json"))
    assert pytorch_records
    for record in pytorch_records:
        openvino_record = tmp_path / "openvino" / record.relative_to(tmp_path / "pytorch")
        expected, actual = json.loads(record.read_text()), json.loads(openvino_record.read_text())
        assert [s["label"] for s in actual["segments"]] == [s["label"] for s in expected["segments"]]
        assert [s["area"] for s in actual["segments"]] == [s["area"] for s in expected["segments"]]
    data_root = validation.parents[1]
    common = ["--dataset=cityscapes", f"--data-root={data_root}", "--task=panoptic", "--no-progress"]
    expected = evaluate_cli.main([str(checkpoint), *common])["metrics"]
    actual = evaluate_cli.main([str(output), *common, "--openvino"])["metrics"]
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert actual[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


# ------------------------------------------------------------------------------------------------------ bad input


def test_openvino_without_the_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=r'pip install "transformers-pem\[openvino\]"'):
        export_openvino(backbone_model("timm"), tmp_path / OPENVINO_FILE)
    with pytest.raises(ImportError, match=r'pip install "transformers-pem\[openvino\]"'):
        PEMOpenVINOModel.from_pretrained(tmp_path)
    monkeypatch.setitem(sys.modules, "openvino", openvino)
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ImportError, match=r"nncf.*pip install \"transformers-pem\[openvino\]\""):
        export(tmp_path, tmp_path / "out", quantize="int8", calibration_data=tmp_path)


def test_openvino_export_arguments_are_checked_before_any_work(tmp_path, capsys):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match="calibrated on images: pass calibration_data"):
        export(missing, tmp_path / "out", quantize="int8")
    with pytest.raises(ValueError, match="quantize='int8-dynamic' is not supported for OpenVINO"):
        export(missing, tmp_path / "out", quantize="int8-dynamic", calibration_data=tmp_path)
    with pytest.raises(ValueError, match="used by int8 quantization only"):
        export(missing, tmp_path / "out", calibration_data=tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        export(missing, tmp_path / "file")
    assert cli.main(["export", str(missing), "--format", "openvino", "--output", str(tmp_path / "out")]) == 1
    assert "missing' does not exist: pass a folder written by save_pretrained" in capsys.readouterr().err
    refusals = {"--opset": "--opset is an ONNX option", "--quantize": "int8-dynamic is an ONNX Runtime mode"}
    for option, value in (("--opset", "19"), ("--quantize", "int8-dynamic")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["export", str(missing), "--format", "openvino", "--output", str(tmp_path / "o"), option, value])
        assert exit_info.value.code == 2 and refusals[option] in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """A tiny checkpoint exported to OpenVINO (fp32), for the error tests."""
    root = tmp_path_factory.mktemp("small_openvino")
    save_confident_cityscapes_checkpoint(root / "checkpoint")
    export(root / "checkpoint", root / "ir")
    return root / "ir"


def quantized_products(quantized) -> set[str]:
    """Names of the `bmm` matrix products (the mask einsums, the prototype similarities) fed by an int8 input,
    through the reshapes between the two."""

    def through_reshapes(value):
        node = value.get_node()
        while node.get_type_name() in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert"):
            node = node.input_value(0).get_node()
        return node

    return {
        op.get_friendly_name()
        for op in quantized.get_ordered_ops()
        if op.get_type_name() == "MatMul" and op.get_friendly_name().startswith("bmm")
        and any(through_reshapes(value).get_type_name() == "FakeQuantize" for value in op.input_values())
    }  # fmt: skip


def test_quantization_options_keep_what_they_name_float(small_export):
    converted = openvino.Core().read_model(str(small_export / OPENVINO_FILE))
    calibration = [torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))]
    products = [
        op.get_friendly_name() for op in converted.get_ordered_ops()
        if op.get_type_name() == "MatMul" and op.get_friendly_name().startswith("bmm")
    ]  # fmt: skip
    # Per decoder layer its attention-mask einsum and its prototype similarity, and the final mask einsum.
    num_layers = json.loads((small_export / "config.json").read_text())["decoder_layers"]
    assert len(products) == 2 * num_layers + 1
    quantized = quantized_products(quantize_openvino(converted, calibration))
    # NNCF quantizes the einsums (the final one last in the graph), not the similarities: their inputs are broadcast.
    assert len(quantized) == num_layers + 1 and f"bmm_{2 * num_layers}/aten.bmm.default/MatMul" in quantized
    kept = quantize_openvino(converted, calibration, bias_correction="none", ignored_patterns=[PRODUCT_PATTERN])
    assert quantized_products(kept) == set()
    # The convolutions are still int8.
    assert any(op.get_type_name() == "FakeQuantize" for op in kept.get_ordered_ops())
    with pytest.raises(ValueError, match=r"bias_correction='slow' is not supported: use one of \['fast', 'full'"):
        quantize_openvino(converted, calibration, bias_correction="slow")
    with pytest.raises(ValueError, match=r"a list of regular expressions: pass \['bmm'\]"):
        quantize_openvino(converted, calibration, ignored_patterns="bmm")
    with pytest.raises(ValueError, match=r"entry 'bmm\(' is not a regular expression"):
        quantize_openvino(converted, calibration, ignored_patterns=["bmm("])


@pytest.mark.parametrize("damage", ["truncated-xml", "truncated-bin", "missing-bin", "foreign", "missing", "onnx"])
def test_runtime_refuses_a_damaged_or_foreign_ir(small_export, tmp_path, damage):
    directory = tmp_path / damage
    directory.mkdir()
    (directory / "config.json").write_bytes((small_export / "config.json").read_bytes())
    xml, weights = (small_export / OPENVINO_FILE).read_bytes(), (small_export / "openvino_model.bin").read_bytes()
    if damage != "missing":
        (directory / OPENVINO_FILE).write_bytes(xml[: len(xml) // 2] if damage == "truncated-xml" else xml)
    if damage not in ("missing", "missing-bin"):
        (directory / "openvino_model.bin").write_bytes(
            weights[: len(weights) // 2] if damage == "truncated-bin" else weights
        )
    if damage == "foreign":
        parameter = openvino.opset13.parameter([1], openvino.Type.f32, name="x")
        relu = openvino.Model([openvino.opset13.relu(parameter)], [parameter], "relu")
        openvino.save_model(relu, str(directory / OPENVINO_FILE))
    expected = {
        "truncated-xml": "is not a loadable OpenVINO model.*truncated or corrupt",
        "truncated-bin": "is not a loadable OpenVINO model",
        "missing-bin": "has no weights file openvino_model.bin",
        "foreign": r"not a PEM export: it takes \[\['x'\]\]",
        "missing": "No OpenVINO model at",
        "onnx": r"No OpenVINO model at .*model.onnx",
    }[damage]
    with pytest.raises(ValueError, match=expected):
        PEMOpenVINOModel.from_pretrained(directory, **({"file_name": "model.onnx"} if damage == "onnx" else {}))


def test_runtime_model_errors(small_export):
    model = PEMOpenVINOModel.from_pretrained(small_export)
    with pytest.raises(ValueError, match="multiples of 32, got 70x98"):
        model(torch.zeros(1, 3, 70, 98))
    with pytest.raises(ValueError, match=r"\(batch_size, 3, height, width\)"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="must be a float tensor.*torch.uint8"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="need the PyTorch model"):
        model(torch.zeros(1, 3, 64, 64), output_hidden_states=True)
    with pytest.raises(ValueError, match="device="):
        model.to("cuda")
    with pytest.raises(ValueError, match="inference only"):
        model.train()
    assert model.eval() is model and model.to("cpu") is model
    with pytest.raises(ValueError, match=r"precision='fp16' is not supported: use one of \['fp32', 'bf16'\]"):
        PEMOpenVINOModel.from_pretrained(small_export, precision="fp16")
    with pytest.raises(ValueError, match="num_threads must be a positive integer, got 0"):
        PEMOpenVINOModel.from_pretrained(small_export, num_threads=0)
    with pytest.raises(ValueError, match="OpenVINO device 'NPU7' is not available"):
        PEMOpenVINOModel.from_pretrained(small_export, device="NPU7")


def test_bf16_is_an_explicit_choice(small_export):
    """fp32 by default (the eager values), bf16 only when asked: OpenVINO would pick bf16 itself on AMX CPUs."""
    checkpoint = small_export.parent / "checkpoint"
    eager = PEMForUniversalSegmentation.from_pretrained(checkpoint).eval()
    pixel_values = PEMImageProcessor.from_pretrained(small_export)(ODD_IMAGE, return_tensors="pt")["pixel_values"]
    expected = logits(eager, pixel_values)[0]
    fp32 = PEMOpenVINOModel.from_pretrained(small_export)
    assert fp32.compiled_model.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    assert (logits(fp32, pixel_values)[0] - expected).abs().max() < 1e-4
    bf16 = PEMOpenVINOModel.from_pretrained(small_export, precision="bf16", num_threads=1)
    assert bf16.compiled_model.get_property("INFERENCE_NUM_THREADS") == 1
    supported = "bf16" in str(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")).lower()
    assert bf16.compiled_model.get_property("INFERENCE_PRECISION_HINT") == (
        openvino.Type.bf16 if supported else openvino.Type.f32
    )


def test_predict_and_app_options_are_checked_before_loading(small_export, tmp_path, capsys):
    checkpoint = small_export.parent / "checkpoint"
    image = tmp_path / "image.png"
    ODD_IMAGE.save(image)
    cases = {
        ("--runtime=openvino", "--device=cuda"): "runs the exported model as it is, on the CPU: drop --device",
        ("--model-file=openvino_model_int8.xml",): "--model-file picks the file of an export directory",
        ("--runtime=openvino", "--model-file=nothing.xml"): "No OpenVINO model at",
    }
    for options, message in cases.items():
        model = checkpoint if "--runtime=openvino" not in options else small_export
        code = cli.main(["predict", str(image), f"--model={model}", f"--out={tmp_path / 'out'}", *options])
        assert code == 1 and message in capsys.readouterr().err
    assert cli.main(["predict", str(image), f"--model={checkpoint}", "--runtime=openvino", f"--out={tmp_path}/o"]) == 1
    assert "No OpenVINO model at" in capsys.readouterr().err


def test_repeated_shapes_run_statically_compiled_with_the_same_outputs(small_export):
    """A shape's second run compiles the IR for it alone (kept for the most recent shapes): the outputs stay those of
    the dynamic model and of eager PyTorch."""
    from transformers_pem.deploy.openvino_model import STATIC_SHAPES_KEPT

    eager = PEMForUniversalSegmentation.from_pretrained(small_export.parent / "checkpoint").eval()
    model = PEMOpenVINOModel.from_pretrained(small_export)
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    dynamic, static, again = (logits(model, pixel_values) for _ in range(3))
    assert list(model.static_requests) == [(1, 3, 64, 96)]
    expected = logits(eager, pixel_values)
    for outputs in (dynamic, static, again):
        for actual, reference in zip(outputs, expected):
            assert (actual - reference).abs().max() < 1e-4
    for height in range(1, STATIC_SHAPES_KEPT + 2):
        for _ in range(2):
            logits(model, torch.zeros(1, 3, 32 * height, 32))
    assert len(model.static_requests) == STATIC_SHAPES_KEPT and (1, 3, 64, 96) not in model.static_requests


def test_app_segmenter_runs_an_openvino_directory(small_export):
    """The web app's segmenter on `--runtime openvino`: the eager model's segments, and no prototype view (the
    exported model returns the logits only)."""
    from transformers_pem.app.web import Segmenter

    eager = Segmenter(small_export.parent / "checkpoint")
    runtime = Segmenter(small_export, runtime="openvino")
    for task in ("semantic", "panoptic", "instance"):
        expected, actual = eager(ODD_IMAGE, task), runtime(ODD_IMAGE, task)
        assert actual[1] == expected[1] and actual[1]  # the segment rows: label, score, area
        assert np.array_equal(np.asarray(actual[0]), np.asarray(expected[0]))  # the overlay
        assert expected[3] is not None and actual[3] is None
