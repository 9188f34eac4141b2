"""Tests of the benchmark (`benchmarks/benchmark/`): the structure and consistency of its results on tiny models,
its MAC counts against hand-computed values, its peak-memory measurement, and its command line. No timing
assertions."""

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn
from torch.nn import functional as F
from torchvision.ops import deform_conv2d
from transformers import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Mask2FormerImageProcessor,
    ResNetConfig,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from benchmark.cli import main  # noqa: E402
from benchmark.complexity import MAC_HANDLES  # noqa: E402
from benchmark.memory import PeakMemory  # noqa: E402
from benchmark.models import MODELS, RESNET_STAGES, ModelSpec, Scenario  # noqa: E402
from benchmark.report import format_markdown  # noqa: E402
from benchmark.run import run_benchmark  # noqa: E402
from benchmark.workloads import synthetic_targets  # noqa: E402

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor  # noqa: E402
from transformers_pem.inference.allocator import glibc_malloc_tuned  # noqa: E402

fvcore = pytest.importorskip("fvcore")


@pytest.fixture(autouse=True)
def restore_global_state():
    """The benchmark sets the thread count and the command line quiets transformers' logging: undo both."""
    threads, verbosity = torch.get_num_threads(), transformers.logging.get_verbosity()
    yield
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity(verbosity)


def tiny_backbone() -> ResNetConfig:
    return ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=RESNET_STAGES,
    )


def tiny_pem_config(num_labels: int) -> PEMConfig:
    return PEMConfig(
        backbone_config=tiny_backbone(),
        conv_dim=16,
        mask_dim=16,
        hidden_dim=16,
        num_queries=6,
        num_attention_heads=2,
        dim_feedforward=32,
        decoder_layers=2,
        train_num_points=64,
        id2label={index: f"class_{index}" for index in range(num_labels)},
    )


def tiny_mask2former_config(num_labels: int) -> Mask2FormerConfig:
    return Mask2FormerConfig(
        backbone_config=tiny_backbone(),
        feature_size=32,  # Mask2Former's GroupNorm has 32 groups
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=1,
        decoder_layers=3,
        num_attention_heads=2,
        num_queries=6,
        train_num_points=64,
        num_labels=num_labels,
    )


TINY_SPECS = [
    ModelSpec("pem-tiny", PEMForUniversalSegmentation, tiny_pem_config, lambda num_labels: PEMImageProcessor()),
    ModelSpec(
        "mask2former-r50",
        Mask2FormerForUniversalSegmentation,
        tiny_mask2former_config,
        lambda num_labels: Mask2FormerImageProcessor(),
    ),
]
SETTING = ("height", "width", "num_labels", "batch_size", "precision")


def check_summary(summary: dict, repeats: int) -> None:
    values = summary["values"]
    assert len(values) == repeats and all(value > 0 for value in values)
    assert summary["min"] == min(values)
    assert summary["median"] == sorted(values)[repeats // 2]  # odd repeats


def backbone_macs(model: nn.Module, pixel_values: torch.Tensor) -> int:
    """Multiply-adds of the backbone's convolutions plus fvcore's 2 per element of an eval-mode affine BatchNorm,
    counted with forward hooks."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel_height, kernel_width = module.kernel_size
            total += output.numel() * module.in_channels // module.groups * kernel_height * kernel_width
        elif isinstance(module, nn.BatchNorm2d):
            total += 2 * inputs[0].numel()

    backbone = model.model.pixel_level_module.encoder
    handles = [module.register_forward_hook(count) for module in backbone.modules()]
    with torch.no_grad():
        backbone(pixel_values)
    for handle in handles:
        handle.remove()
    return total


@pytest.fixture(scope="module")
def results():
    return run_benchmark(
        TINY_SPECS,
        [Scenario(64, 96, 5)],
        [Scenario(64, 64, 5)],
        repeats=3,
        warmup=1,
        precisions=("fp32", "amp"),
        memory=False,
        threads=1,
    )


def test_results_structure(results):
    json.loads(json.dumps(results))  # serialisable
    assert results["environment"]["torch_threads"] == 1
    assert results["environment"]["device"] == "cpu"
    assert results["settings"]["models"] == ["pem-tiny", "mask2former-r50"]
    assert results["memory"] == []

    models, precisions = ["pem-tiny", "mask2former-r50"], ["fp32", "fp32", "amp", "amp"]
    assert [entry["model"] for entry in results["inference"]] == models * 2
    assert [entry["precision"] for entry in results["inference"]] == precisions
    for entry in results["inference"]:
        assert [entry[key] for key in SETTING] == [64, 96, 5, 1, entry["precision"]]
        check_summary(entry["forward_s"], 3)
        check_summary(entry["with_post_processing_s"], 3)
        # With post-processing = the same runs' forward time plus the post-processing time.
        for forward, total in zip(entry["forward_s"]["values"], entry["with_post_processing_s"]["values"]):
            assert total >= forward
        assert entry["forward_images_per_s"] == pytest.approx(1 / entry["forward_s"]["median"])
        assert entry["with_post_processing_images_per_s"] == pytest.approx(
            1 / entry["with_post_processing_s"]["median"]
        )
    for pem, reference in (results["inference"][:2], results["inference"][2:]):  # per precision
        for key in ("forward_s", "with_post_processing_s"):
            assert reference["speedup_vs_reference"][key] == 1
            assert pem["speedup_vs_reference"][key] == pytest.approx(reference[key]["median"] / pem[key]["median"])

    assert [entry["model"] for entry in results["training"]] == models * 2
    assert [entry["precision"] for entry in results["training"]] == precisions
    for entry in results["training"]:
        assert [entry[key] for key in SETTING] == [64, 64, 5, 2, entry["precision"]]
        check_summary(entry["step_s"], 3)
        assert entry["steps_per_s"] == pytest.approx(1 / entry["step_s"]["median"])
        assert entry["images_per_s"] == pytest.approx(2 / entry["step_s"]["median"])
    for pem, reference in (results["training"][:2], results["training"][2:]):
        assert reference["speedup_vs_reference"]["step_s"] == 1
        assert pem["speedup_vs_reference"]["step_s"] == pytest.approx(
            reference["step_s"]["median"] / pem["step_s"]["median"]
        )

    # End to end: the PEM model only (Mask2Former's processor and pipeline are transformers' own).
    (end_to_end,) = results["end_to_end"]
    assert end_to_end["model"] == "pem-tiny" and [end_to_end[key] for key in SETTING] == [64, 96, 5, 1, "fp32"]
    steps = ["preprocess_s", "forward_s", "by_hand_s", "pipeline_s"]
    steps += [f"{task}_post_processing_s" for task in ("semantic", "panoptic", "instance")]
    for key in steps:
        check_summary(end_to_end[key], 3)
    for task, share in end_to_end["post_processing_over_forward"].items():
        post = end_to_end[f"{task}_post_processing_s"]["median"]
        assert share == pytest.approx(post / end_to_end["forward_s"]["median"])
    assert end_to_end["pipeline_over_by_hand"] == pytest.approx(
        end_to_end["pipeline_s"]["median"] / end_to_end["by_hand_s"]["median"]
    )
    assert set(end_to_end["images_per_s"]) == {"1", "4", "8"} and all(
        v > 0 for v in end_to_end["images_per_s"].values()
    )

    markdown = format_markdown(results)
    for heading in ("## Inference", "## End to end", "### Batched", "## Training step", "## Parameters", "## GMACs"):
        assert heading in markdown
    assert "## Peak memory" not in markdown
    assert "| pem-tiny | 64×96 | 5 | amp |" in markdown


def test_parameters_and_gmacs(results):
    for spec in TINY_SPECS:
        torch.manual_seed(0)
        model = spec.model_class(spec.make_config(5)).eval()
        parameters = next(entry for entry in results["parameters"] if entry["model"] == spec.name)
        assert parameters["total"] == sum(parameter.numel() for parameter in model.parameters())
        backbone = sum(parameter.numel() for parameter in model.model.pixel_level_module.encoder.parameters())
        assert parameters["backbone"] == backbone
        # The three components cover every parameter.
        assert (
            parameters["backbone"] + parameters["pixel_decoder"] + parameters["transformer_decoder"]
            == (parameters["total"])
        )

        complexity = next(entry for entry in results["complexity"] if entry["model"] == spec.name)
        assert [complexity[key] for key in ("height", "width", "num_labels")] == [64, 96, 5]
        gmacs = complexity["gmacs"]
        assert gmacs["backbone"] * 1e9 == pytest.approx(backbone_macs(model, torch.zeros(1, 3, 64, 96)))
        components = gmacs["backbone"] + gmacs["pixel_decoder"] + gmacs["transformer_decoder"]
        assert components == pytest.approx(gmacs["total"])
        assert gmacs["post_processing"] > 0
        assert complexity["uncounted_ops"] == {}
    pem = next(entry for entry in results["complexity"] if entry["model"] == "pem-tiny")["gmacs"]
    mask2former = next(entry for entry in results["complexity"] if entry["model"] == "mask2former-r50")["gmacs"]
    assert mask2former["deform_conv"] == 0
    # 3 deformable 3x3 convolutions of 16 channels at strides 32, 16, 8 of 64x96: the multiply-adds of a dense
    # convolution, plus at most 4 per sampled value for the sampling and modulation (implementation-dependent).
    positions = 2 * 3 + 4 * 6 + 8 * 12
    assert positions * 16 * 16 * 9 <= pem["deform_conv"] * 1e9 <= positions * (16 * 16 * 9 + 4 * 16 * 9)


def test_mac_handles():
    from fvcore.nn import FlopCountAnalysis

    class Ops(nn.Module):
        def forward(self, features, offset, mask, weight, query, key, value, batch1, batch2, table, indices):
            deformed = deform_conv2d(features, offset, weight, padding=1, mask=mask)
            attended = F.scaled_dot_product_attention(query, key, value)
            product = torch.baddbmm(torch.zeros(2, 3, 5), batch1, batch2)
            gathered = F.embedding_bag(indices, table, per_sample_weights=torch.ones(indices.shape), mode="sum")
            written = torch.mm(batch1[0], batch2[0], out=torch.empty(3, 5))
            return deformed, attended, product, gathered, written

    inputs = (
        torch.randn(1, 4, 5, 6),  # features
        torch.randn(1, 18, 5, 6),  # offset
        torch.rand(1, 9, 5, 6),  # mask
        torch.randn(3, 4, 3, 3),  # weight
        torch.randn(1, 2, 5, 8),  # query
        torch.randn(1, 2, 7, 8),  # key
        torch.randn(1, 2, 7, 4),  # value
        torch.randn(2, 3, 4),  # batch1
        torch.randn(2, 4, 5),  # batch2
        torch.randn(10, 6),  # table
        torch.randint(0, 10, (3, 4)),  # indices
    )
    analysis = FlopCountAnalysis(Ops(), inputs).set_op_handle(**MAC_HANDLES)
    analysis.unsupported_ops_warnings(False)
    counts = analysis.by_operator()
    assert counts["deform_conv2d"] == 5 * 6 * 3 * 4 * 9 + 5 * 6 * 4 * 9  # convolution + modulation
    assert counts["scaled_dot_product_attention"] == 2 * 5 * 7 * 8 + 2 * 5 * 7 * 4
    assert counts["baddbmm"] == 2 * 3 * 4 * 5
    assert counts["embedding_bag"] == 3 * 4 * 6
    assert counts["mm"] == 3 * 4 * 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset is Linux-only")
def test_peak_memory_tracker_sees_an_allocation_and_resets():
    tracker = PeakMemory(torch.device("cpu"))
    with tracker.measure():
        tensor = torch.ones(64 * 2**20)  # 256 MB, written
        del tensor
    assert "VmHWM" in tracker.method
    assert tracker.peak_mb - tracker.baseline_mb >= 250
    with tracker.measure():  # the peak is reset: the earlier allocation no longer counts
        pass
    assert tracker.peak_mb - tracker.baseline_mb < 100


def test_peak_memory_in_a_fresh_process():
    results = run_benchmark(
        TINY_SPECS[:1], [Scenario(64, 96, 5)], [], repeats=1, warmup=0, gmacs=False, memory=True, threads=1
    )
    (entry,) = results["memory"]
    assert entry["model"] == "pem-tiny" and entry["mode"] == "inference"
    assert [entry[key] for key in SETTING] == [64, 96, 5, 1, "fp32"]
    assert entry["baseline_mb"] > 0
    assert entry["peak_mb"] >= entry["baseline_mb"]
    assert entry["increase_mb"] == pytest.approx(entry["peak_mb"] - entry["baseline_mb"])
    assert entry["with_post_processing_peak_mb"] >= entry["peak_mb"]
    assert results["settings"]["memory_method"]
    assert "## Peak memory (MB)" in format_markdown(results)


def test_synthetic_targets_partition_the_image():
    mask_labels, class_labels = synthetic_targets(2, 32, 64, 5, torch.Generator().manual_seed(0))
    for masks, classes in zip(mask_labels, class_labels):
        assert masks.shape == (len(classes), 32, 64)
        assert set(masks.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(masks.sum(dim=0), torch.ones(32, 64))  # one class per pixel
        assert classes.unique().numel() == classes.numel() and 0 <= classes.min() and classes.max() < 5
        assert (masks.sum(dim=(1, 2)) > 0).all()  # every listed class is present


def test_command_line(tmp_path, capsys):
    argv = ["--models", "pem-stdc1", "mask2former-r50", "--sizes", "64x128:19", "--train-sizes"]
    argv += ["--repeats", "1", "--warmup", "0", "--threads", "1", "--no-gmacs", "--no-memory"]
    # An earlier test in this process may have tuned the allocator (the CLIs' default); `default` must add nothing.
    tuned_before = glibc_malloc_tuned()
    main([*argv, "--allocator", "default", "--output-dir", str(tmp_path)])
    results = json.loads((tmp_path / "benchmark.json").read_text())
    markdown = (tmp_path / "benchmark.md").read_text()
    assert capsys.readouterr().out.strip() == markdown.strip()
    assert [entry["model"] for entry in results["inference"]] == ["pem-stdc1", "mask2former-r50"]
    assert results["training"] == [] and results["complexity"] == [] and results["memory"] == []
    assert {entry["num_labels"] for entry in results["parameters"]} == {19}
    assert "| pem-stdc1 | 64×128 | 19 | fp32 |" in markdown
    assert "## Training step" not in markdown
    assert results["environment"]["glibc_malloc_tuned"] is tuned_before
    assert ("Memory allocator: the C library's" in markdown) is not tuned_before
    # The instruction sets that decide int8 / bf16 speed, as /proc/cpuinfo lists them.
    if Path("/proc/cpuinfo").is_file():
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split())
        features = results["environment"]["cpu_features"]
        assert features == [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags] + [
            f for f in ("avx512_bf16", "amx_bf16", "amx_int8") if f in flags
        ]
        assert f"usable CPUs; {', '.join(features)})" in markdown if features else "usable CPUs; no AVX2" in markdown


@pytest.mark.parametrize(
    "text", ["512x1024", "512-1024:19", "512x1024:0", "axb:19", "512x1024x3:19"], ids=lambda text: text
)
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="HEIGHTxWIDTH:CLASSES|positive"):
        Scenario.parse(text)


def test_bad_arguments():
    with pytest.raises(ValueError, match="train_batch_size >= 2"):
        run_benchmark(TINY_SPECS, [], [Scenario(64, 64, 5)], train_batch_size=1)
    with pytest.raises(ValueError, match="precisions"):
        run_benchmark(TINY_SPECS, [Scenario(64, 64, 5)], [], precisions=("fp16",))
    with pytest.raises(ValueError, match="at least one model"):
        run_benchmark([], [Scenario(64, 64, 5)], [])
    with pytest.raises(ValueError, match="warmup >= 1"):
        run_benchmark([MODELS["pem-stdc1-compiled"]], [Scenario(64, 64, 5)], [], warmup=0)


def test_openvino_rows_are_timed_in_their_own_phase_and_the_first_model_retimed():
    """An OpenVINO model is timed after the others, compared with its eager baseline on the same input, and the first
    model is timed again after it (the check that OpenVINO's spinning threads left the machine as it was)."""
    pytest.importorskip("openvino")
    tiny = TINY_SPECS[0]
    openvino_spec = ModelSpec(
        "pem-tiny-openvino", PEMForUniversalSegmentation, tiny_pem_config, tiny.make_processor, "openvino", "pem-tiny"
    )
    results = run_benchmark(
        [openvino_spec, tiny], [Scenario(64, 96, 5)], [], repeats=3, warmup=1, memory=False, gmacs=False,
        end_to_end=False, threads=1,
    )  # fmt: skip
    assert [entry["model"] for entry in results["inference"]] == ["pem-tiny", "pem-tiny-openvino"]
    eager, openvino = results["inference"]
    assert eager["max_relative_difference"] is None and 0 <= openvino["max_relative_difference"] < 1e-4
    check_summary(openvino["forward_s"], 3)
    (retimed,) = results["retimed"]
    assert retimed["model"] == "pem-tiny" and retimed["before_s"] == eager["forward_s"]
    check_summary(retimed["after_openvino_s"], 3)
    markdown = format_markdown(results)
    assert "| pem-tiny-openvino | 64×96 | 5 | fp32 |" in markdown and "Re-timed after the OpenVINO phase" in markdown
