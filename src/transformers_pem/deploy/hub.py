"""Hub publication: model cards (with `model-index` results that the Hub shows and parses) and the upload of a
`save_pretrained` folder, for converted checkpoints (`conversion.convert`), trained ones (`train(push_to_hub=...)`) and
evaluated ones (`pem evaluate --push-to-hub`)."""

import os
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from transformers import ResNetConfig

from ..configuration_stdc import STDCConfig
from ..labels_pem import dataset_for
from ..presets_pem import STDC_NAMES

CITATION = """@inproceedings{cavagnero2024pem,
  title={PEM: Prototype-based Efficient MaskFormer for Image Segmentation},
  author={Cavagnero, Niccol{\\`o} and Rosi, Gabriele and Cuttano, Claudia and Pistilli, Francesca and Ciccone, Marco
          and Averta, Giuseppe and Cermelli, Fabio},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={15804--15813},
  year={2024}
}"""

DATASET_NAMES = {"cityscapes": "Cityscapes", "ade20k": "ADE20K"}
# The metrics a card's model-index reports per task (the paper's headline columns).
CARD_METRICS = {
    "semantic": ("mIoU", "mAcc", "pAcc"),
    "panoptic": ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU"),
    "instance": ("AP", "AP50", "AP75"),
}


def backbone_name(config) -> str:
    """`ResNet-50`, `STDC1`, `STDC2` or the backbone config's class name."""
    backbone = config.backbone_config
    if isinstance(backbone, STDCConfig):
        return STDC_NAMES.get(tuple(backbone.layers), "stdc").upper()
    if isinstance(backbone, ResNetConfig):
        return f"ResNet-{3 * sum(backbone.depths) + 2}"  # bottleneck blocks: 3 convs each
    return type(backbone).__name__.removesuffix("Config")


def card_data(
    model_name: str,
    dataset: str | None,
    task: str | None = None,
    metrics: Mapping[str, float] | None = None,
    split: str | None = None,
) -> ModelCardData:
    """The card's metadata: library, pipeline tag, tags, and with `metrics` an `EvalResult` per headline metric of
    `task` (dataset, split, value in percent) for the `model-index`."""
    results = None
    if metrics:
        results = [
            EvalResult(
                task_type="image-segmentation",
                task_name=f"{task.capitalize()} segmentation",
                dataset_type=dataset or "custom",
                dataset_name=DATASET_NAMES.get(dataset, dataset or "custom"),
                dataset_split=split,
                metric_type=name,
                metric_name=name,
                metric_value=round(float(metrics[name]), 2),
            )
            for name in CARD_METRICS[task]
            if name in metrics and metrics[name] == metrics[name]  # NaN: not reported
        ]
    tags = ["pem", "image-segmentation"] + ([dataset] if dataset else [])
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=tags,
        model_name=model_name,
        eval_results=results or None,
    )


def usage_section(repo_id: str, task: str | None) -> str:
    post_process = f"post_process_{task if task in ('panoptic', 'instance') else 'semantic'}_segmentation"
    return f"""## Usage

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

import transformers_pem  # registers PEM with the Auto classes (or pass trust_remote_code=True without it)

processor = AutoImageProcessor.from_pretrained("{repo_id}")
model = AutoModelForUniversalSegmentation.from_pretrained("{repo_id}").eval()

image = Image.open("image.png").convert("RGB")
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
result = processor.{post_process}(outputs, target_sizes=[image.size[::-1]])[0]
```

## Citation

```bibtex
{CITATION}
```
"""


def trained_model_card(
    config,
    repo_id: str,
    task: str,
    metrics: Mapping[str, float] | None = None,
    split: str | None = None,
    training: Mapping[str, object] | None = None,
    curves: str | None = None,
) -> ModelCard:
    """The card of a model trained or evaluated with this package: what it is, its measured metrics (also in the
    `model-index`), the training settings, the curves picture (a file name in the same folder)."""
    dataset = dataset_for(config.id2label)
    title = f"PEM-{backbone_name(config)}" + (f" ({DATASET_NAMES[dataset]}, {task})" if dataset else f" ({task})")
    data = card_data(title, dataset, task, metrics, split)
    lines = [
        f"# {title}",
        "",
        "PEM (Prototype-based Efficient MaskFormer, CVPR 2024, [arXiv 2402.19422](https://arxiv.org/abs/2402.19422)) "
        f"trained with the `transformers-pem` package: {config.num_labels} classes, {config.num_queries} queries.",
        "",
    ]
    reported = data.eval_results or []
    if reported:
        lines += [f"## Results ({reported[0].dataset_name}, {split or 'evaluation'} split)", ""]
        lines += ["| " + " | ".join(r.metric_name for r in reported) + " |", "|" + "---|" * len(reported)]
        lines += ["| " + " | ".join(f"{r.metric_value:.1f}" for r in reported) + " |", ""]
    if training:
        lines += ["## Training", "", "| setting | value |", "|---|---|"]
        lines += [f"| `{key}` | `{value}` |" for key, value in training.items() if value is not None]
        lines.append("")
    if curves:
        lines += [f"![Training curves]({curves})", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n" + usage_section(repo_id, task)
    return ModelCard(content)


def check_hub_token(argument: str = "push_to_hub") -> None:
    """Before any work: a Hub upload needs a token (`hf auth login` or `HF_TOKEN`)."""
    if get_token() is None:
        raise ValueError(f"{argument} needs a Hugging Face token: run `hf auth login` or set HF_TOKEN.")


def push_folder(folder: str | os.PathLike, repo_id: str, commit_message: str) -> None:
    """Create the Hub model repository `repo_id` if needed and upload `folder` to it (huggingface_hub; the token
    from `huggingface-cli login` or `HF_TOKEN`)."""
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(Path(folder)), commit_message=commit_message)
