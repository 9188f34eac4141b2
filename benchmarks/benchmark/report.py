"""The results as markdown tables, and the report files (`write_report`, shared by the benchmarks' scripts)."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .timing import POST_PROCESSING_TASKS, THROUGHPUT_BATCH_SIZES


def _number(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _timing(summary: dict[str, Any] | None) -> str:
    return "–" if summary is None else f"{summary['median']:.3f} ({summary['min']:.3f})"


def _size(entry: dict[str, Any]) -> str:
    return f"{entry['height']}×{entry['width']}"


def _table(columns: list[tuple[str, Callable[[dict[str, Any]], str]]], entries: list[dict[str, Any]]) -> list[str]:
    """A markdown table with one row per entry; `columns` are (header, cell of an entry) pairs."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(entry) for _, cell in columns) + " |" for entry in entries]


INFERENCE_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Input", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Precision", lambda e: e["precision"]),
    ("Forward (s)", lambda e: _timing(e["forward_s"])),
    ("Images/s", lambda e: _number(e["forward_images_per_s"])),
    ("× ref", lambda e: _number(e["speedup_vs_reference"]["forward_s"], suffix="×")),
    ("With post-processing (s)", lambda e: _timing(e["with_post_processing_s"])),
    ("Images/s", lambda e: _number(e["with_post_processing_images_per_s"])),
    ("× ref", lambda e: _number(e["speedup_vs_reference"]["with_post_processing_s"], suffix="×")),
    (
        "max rel. Δ to eager",
        lambda e: "–" if e.get("max_relative_difference") is None else f"{e['max_relative_difference']:.1e}",
    ),
]


def _share(entry: dict[str, Any], task: str) -> str:
    return f"{_timing(entry[f'{task}_post_processing_s'])} ({entry['post_processing_over_forward'][task]:.0%})"


END_TO_END_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Input", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Preprocess (s)", lambda e: _timing(e["preprocess_s"])),
    ("Forward (s)", lambda e: _timing(e["forward_s"])),
    *(
        (f"{task.capitalize()} post (s, % of forward)", lambda e, t=task: _share(e, t))
        for task in POST_PROCESSING_TASKS
    ),
    ("By hand (s)", lambda e: _timing(e["by_hand_s"])),
    ("Pipeline (s)", lambda e: _timing(e["pipeline_s"])),
    ("Pipeline / by hand", lambda e: _number(e["pipeline_over_by_hand"])),
]


THROUGHPUT_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Input", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    *((f"Images/s, batch {b}", lambda e, b=b: _number(e["images_per_s"][str(b)])) for b in THROUGHPUT_BATCH_SIZES),
    (
        "Batch 4 / batch 1",
        lambda e: (
            _number(e["images_per_s"]["4"] / e["images_per_s"]["1"], suffix="×") if e["images_per_s"]["1"] else "–"
        ),
    ),
]


TRAINING_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Crop", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Batch", lambda e: str(e["batch_size"])),
    ("Precision", lambda e: e["precision"]),
    ("Step (s)", lambda e: _timing(e["step_s"])),
    ("Steps/s", lambda e: _number(e["steps_per_s"], 3)),
    ("Images/s", lambda e: _number(e["images_per_s"], 3)),
    ("× ref", lambda e: _number(e["speedup_vs_reference"]["step_s"], suffix="×")),
    ("× baseline", lambda e: _number(e.get("speedup_vs_baseline"), suffix="×")),
]


PARAMETER_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Total", lambda e: _number(e["total"] / 1e6)),
    ("Backbone", lambda e: _number(e["backbone"] / 1e6)),
    ("Pixel decoder", lambda e: _number(e["pixel_decoder"] / 1e6)),
    ("Transformer decoder", lambda e: _number(e["transformer_decoder"] / 1e6)),
]


COMPLEXITY_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Input", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Total", lambda e: _number(e["gmacs"]["total"], 1)),
    ("Backbone", lambda e: _number(e["gmacs"]["backbone"], 1)),
    ("Pixel decoder", lambda e: _number(e["gmacs"]["pixel_decoder"], 1)),
    ("Transformer decoder", lambda e: _number(e["gmacs"]["transformer_decoder"], 1)),
    ("Deform. conv", lambda e: _number(e["gmacs"]["deform_conv"], 1)),
    ("Post-processing", lambda e: _number(e["gmacs"]["post_processing"], 1)),
    ("Uncounted ops", lambda e: ", ".join(sorted(e["uncounted_ops"])) or "–"),
]


MEMORY_COLUMNS = [
    ("Model", lambda e: e["model"]),
    ("Mode", lambda e: e["mode"]),
    ("Input", _size),
    ("Classes", lambda e: str(e["num_labels"])),
    ("Batch", lambda e: str(e["batch_size"])),
    ("Precision", lambda e: e["precision"]),
    ("Before", lambda e: _number(e["baseline_mb"], 0)),
    ("Peak", lambda e: _number(e["peak_mb"], 0)),
    ("Increase", lambda e: _number(e["increase_mb"], 0)),
    ("Peak with post-processing", lambda e: _number(e["with_post_processing_peak_mb"], 0)),
    ("Peak / baseline", lambda e: _number(e.get("peak_vs_baseline"))),
]


def _allocator_description(environment: dict[str, Any]) -> str:
    if environment.get("glibc_malloc_tuned"):
        return "glibc, tuned with `tune_glibc_malloc()` (no fresh memory maps, nothing returned to the system)"
    settings = " ".join(f"{name}={value}" for name, value in environment.get("malloc_environment", {}).items())
    return f"the C library's, with {settings}" if settings else "the C library's defaults"


def format_markdown(results: dict[str, Any]) -> str:
    """The results of `run_benchmark` as markdown tables, headed by the machine and the settings."""
    environment, settings = results["environment"], results["settings"]
    reference = settings["reference"]
    machine = environment["gpu"] or f"{environment['cpu']} ({environment['usable_cpus']} usable CPUs)"
    if not environment["gpu"] and "cpu_features" in environment:  # results from before the field have no such list
        features = ", ".join(environment["cpu_features"]) or "no AVX2 / AVX-512 / VNNI / BF16 / AMX"
        machine = machine[:-1] + f"; {features})"
    lines = [
        f"# PEM vs {reference}",
        "",
        f"Measured {environment['date']} on {machine} with {environment['torch_threads']} PyTorch threads: "
        f"torch {environment['torch']}, torchvision {environment['torchvision']}, "
        f"transformers {environment['transformers']}, Python {environment['python']}, {environment['platform']}; "
        f"transformers-pem revision {environment['transformers_pem_revision']}. Memory allocator: "
        + _allocator_description(environment)
        + ".",
        "",
        f"Random weights. Times in seconds, median (min) of {settings['repeats']} runs per model, interleaved across "
        f"models, after {settings['warmup']} warm-up run(s). `× ref`: median time of {reference} / median time of "
        "the model, in the same run (higher is faster).",
    ]
    if results["inference"]:
        lines += ["", f"## Inference (batch {settings['batch_size']})", ""]
        lines += [
            "With post-processing: the forward pass, then the model's own semantic post-processing to the input "
            "size (Mask2Former's resizes the mask logits to 384×384 first, PEM's to the input size, as officially). "
            "`max rel. Δ to eager`: the largest |output - eager| / max(1, |eager|) over the class and mask logits, "
            "against the unoptimised eager model of the same architecture on the same input. `-onnx`: ONNX Runtime "
            "(CPU provider, as many threads as PyTorch); `-onnx-int8`: its static int8 quantization; `-openvino`: "
            "OpenVINO (fp32, as many threads as PyTorch, each shape compiled statically from its second run), timed "
            "in a phase of its own after the others; `-openvino-int8`: its NNCF int8 quantization; `-bf16`: "
            "OpenVINO's bf16 inference precision for what runs in float.",
            "",
        ]
        lines += _table(INFERENCE_COLUMNS, results["inference"])
        for entry in results.get("retimed", []):
            lines += [
                "",
                f"Re-timed after the OpenVINO phase ({_size(entry)}, {entry['precision']}): {entry['model']} "
                f"{_timing(entry['after_openvino_s'])} s, against {_timing(entry['before_s'])} s before it.",
            ]
    if results.get("end_to_end"):
        lines += [
            "",
            "## End to end (image in, segments out)",
            "",
            "One PIL image of the input size, each step timed apart: the processor (without its resize), the forward "
            "pass, the semantic, panoptic and instance post-processing to the input size on outputs shaped like a "
            "trained model's (`confident_outputs`: one confident class and one region per object query; random "
            "weights give flat masks that panoptic post-processing would drop), with their share of the forward "
            "time; processor + model + semantic post-processing called by hand, and "
            '`pipeline("image-segmentation", subtask="semantic")` doing the same (its masks as PIL images '
            "included). The random model's own outputs are post-processed there.",
            "",
        ]
        lines += _table(END_TO_END_COLUMNS, results["end_to_end"])
        throughput = [e for e in results["end_to_end"] if e["images_per_s"]["1"] is not None]
        if throughput:
            lines += [
                "",
                "### Batched throughput",
                "",
                "Images/s through processor + model + semantic post-processing, images of the input size.",
                "",
            ]
            lines += _table(THROUGHPUT_COLUMNS, throughput)
    if results["training"]:
        lines += [
            "",
            "## Training step (forward with the loss, backward, AdamW; synthetic targets)",
            "",
            "`-checkpointing`: with activation checkpointing (`activation_checkpointing_enable()`); `× baseline`: the "
            "plain model's median step time / the variant's, in the same run.",
            "",
        ]
        lines += _table(TRAINING_COLUMNS, results["training"])
    lines += ["", "## Parameters (millions)", ""]
    lines += _table(PARAMETER_COLUMNS, results["parameters"])
    if results["complexity"]:
        lines += [
            "",
            "## GMACs (batch 1)",
            "",
            "fvcore `FlopCountAnalysis` (one multiply-add = one), default handles as in detectron2's `analyze_model`, "
            "plus attention and deformable-convolution handles. `Total` is the forward pass; `Deform. conv` is part "
            "of the pixel decoder and missing from the paper's counts (fvcore cannot trace detectron2's deformable "
            "convolution); the post-processing is not in `Total`.",
            "",
        ]
        lines += _table(COMPLEXITY_COLUMNS, results["complexity"])
    if results["memory"]:
        lines += [
            "",
            "## Peak memory (MB)",
            "",
            f"Method: {settings['memory_method']}. `Before`: with the model and its inputs loaded (on CPU including "
            "the Python and PyTorch runtime); `Peak`: during the forward pass or training step; `Increase`: Peak - "
            "Before; `Peak with post-processing`: the peak of the forward pass followed by the post-processing; "
            "`Peak / baseline`: a variant's peak over the plain model's.",
            "",
        ]
        lines += _table(MEMORY_COLUMNS, results["memory"])
    return "\n".join(lines) + "\n"


def write_report(output_dir: Path | None, name: str, results: Any, markdown: str) -> None:
    """Print a benchmark's markdown report and, with an output folder, write it with the JSON results there
    (`<name>.md`, `<name>.json`)."""
    print(markdown)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
        (output_dir / f"{name}.md").write_text(markdown)
