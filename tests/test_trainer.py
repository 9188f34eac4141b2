"""PEM with transformers' `Trainer`: `collate_fn`, `label_names`, `remove_unused_columns=False`, and evaluation
through `PEMTrainerMetrics` with `batch_eval_metrics=True` (streaming: nothing kept across batches)."""

import math
from types import SimpleNamespace

import pytest
import torch
from tiny_configs import TINY_DECODER, TINY_STDC
from transformers import Trainer, TrainingArguments

from transformers_pem import (
    AugmentedSegmentationDataset,
    PEMConfig,
    PEMForUniversalSegmentation,
    PEMImageProcessor,
    PEMSegmentationTransform,
    PEMTrainerMetrics,
    collate_fn,
    evaluate_model,
    load_cityscapes,
    official_train_augmentation,
)


@pytest.fixture(scope="module")
def data_root(synthetic_cityscapes):
    return synthetic_cityscapes(num_train=4, num_val=3, size=(64, 128), seed=3)


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_trainer_fine_tunes_and_evaluates(data_root, tmp_path, task):
    torch.manual_seed(0)
    preset = f"pem-stdc1-cityscapes-{'semantic' if task == 'semantic' else 'panoptic'}"
    config = PEMConfig.from_preset(preset, **TINY_STDC, **TINY_DECODER, decoder_layers=2, train_num_points=256)
    model = PEMForUniversalSegmentation(config)
    # The validation images keep their size (64x128, no padding): the processed size is the original one.
    size = {"shortest_edge": 64, "longest_edge": 128}
    processor = PEMImageProcessor.from_preset(preset, model_config=config, size=size)
    augmentation = official_train_augmentation("cityscapes", task, scale=0.0625)
    train_set = AugmentedSegmentationDataset(
        load_cityscapes(data_root, split="train", task=task), PEMSegmentationTransform(processor, task, augmentation)
    )
    validation = load_cityscapes(data_root, split="val", task=task)
    assert len(validation) % 2 == 1  # a short last batch, which Trainer truncates (see PEMTrainerMetrics)
    eval_set = AugmentedSegmentationDataset(validation, PEMSegmentationTransform(processor, task))
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, per_device_eval_batch_size=2,
        learning_rate=1e-3, remove_unused_columns=False, label_names=["label_maps"],
        batch_eval_metrics=True, eval_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
        logging_steps=1, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collate_fn,
        compute_metrics=PEMTrainerMetrics(processor, task, config.id2label),
    )
    before = {name: value.clone() for name, value in model.named_parameters()}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert any(not torch.equal(before[name], value) for name, value in model.named_parameters())

    with torch.no_grad():  # decisive classes and masks: no near-ties that float order could flip between the paths
        model.class_predictor.weight.normal_(0, 10)
        model.model.transformer_module.mask_embedder.layers[2].weight.mul_(3e5)
    metrics = trainer.evaluate()
    headline = {"semantic": ["mIoU", "mAcc", "pAcc"], "panoptic": ["PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU"],
                "instance": ["AP", "AP50", "AP75"]}[task]  # fmt: skip
    assert {f"eval_{name}" for name in headline} <= set(metrics) and math.isfinite(metrics["eval_loss"])
    if task == "semantic":
        # The same batches through evaluate_model, which scores against the dataset's own label maps.
        expected = evaluate_model(model, processor, validation, task="semantic", batch_size=2, progress=False)
        for name in headline:
            assert metrics[f"eval_{name}"] == pytest.approx(expected[name], abs=1e-9), name
    else:
        values = [metrics[f"eval_{name}"] for name in headline if not math.isnan(metrics[f"eval_{name}"])]
        assert values and all(0.0 <= value <= 100.0 for value in values)


def test_trainer_metrics_asks_for_label_maps():
    config = PEMConfig.from_preset("pem-stdc1-cityscapes-semantic", **TINY_STDC, **TINY_DECODER)
    processor = PEMImageProcessor.from_preset("pem-stdc1-cityscapes-semantic", model_config=config)
    metrics = PEMTrainerMetrics(processor, "semantic", config.id2label)
    prediction = SimpleNamespace(
        predictions=(torch.zeros(1, 4, 20), torch.zeros(1, 4, 8, 8)),
        label_ids=([torch.zeros(2, 8, 8)], [torch.tensor([0, 1])]),  # label_names=["mask_labels", "class_labels"]
    )
    with pytest.raises(ValueError, match=r"label_names=\['label_maps'\]"):
        metrics(prediction, compute_result=True)
