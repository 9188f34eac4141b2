"""Convert official PEM checkpoints (detectron2) to transformers-pem: the official yaml configs read safely and mapped
to a `PEMConfig` and image processor, and a `save_pretrained` directory written with a model card.

Command line: `pem convert` (also `scripts/convert_pem_original_to_hf.py`):

    # a trained official checkpoint + its official yaml (or a preset name) -> a `save_pretrained` directory
    pem convert --checkpoint model_final.pth \
        --config configs/cityscapes/semantic-segmentation/pem_STDC1_bs32_90k.yaml --output-dir pem-stdc1-cityscapes

    # ImageNet backbone weights -> a PEM with a pretrained backbone and a fresh head, to start training from
    pem convert --backbone-weights STDCNet813M_73.91.tar \
        --config pem-stdc1-cityscapes-semantic --output-dir pem-stdc1-cityscapes-init

The weights are read by `conversion.checkpoint_io` (no code from a checkpoint ever runs); the yaml files with
`yaml.SafeLoader` (their one Python expression is recognised and computed, never evaluated).
"""

import ast
import copy
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import ResNetConfig

from ..configuration_pem import PEMConfig
from ..configuration_stdc import STDCConfig
from ..deploy.hub import DATASET_NAMES, backbone_name, card_data, push_folder, usage_section
from ..image_processing_pem import PEMImageProcessor
from ..labels_pem import DATASET_LABELS, dataset_for
from ..modeling_pem import PEMForUniversalSegmentation
from ..presets_pem import PRESETS, STDC_NAMES, get_preset
from ..utils.extras import require
from ..utils.paths import check_output_dir
from .checkpoint_io import load_backbone_weights, load_official_checkpoint

yaml = require("yaml", "convert", "Reading the official yaml configs")
logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Official yaml configs
# ---------------------------------------------------------------------------------------------------------------------


class _OfficialConfigLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also understands the one Python tag of the official configs (see `_eval_list`)."""


# `INPUT.MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 1024) for x in range(5, 21)]"]`
_MIN_SIZE_EXPRESSION = re.compile(
    r"\[\s*int\(\s*x\s*\*\s*(?P<factor>\d+(?:\.\d*)?)\s*\*\s*(?P<size>\d+)\s*\)\s+"
    r"for\s+x\s+in\s+range\(\s*(?P<start>\d+)\s*,\s*(?P<stop>\d+)\s*\)\s*\]"
)


def _eval_list(loader: yaml.SafeLoader, node: yaml.Node) -> list[int]:
    """Compute the official `[int(x * F * N) for x in range(A, B)]` expressions without `eval`."""
    arguments = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else []
    expression = arguments[0] if len(arguments) == 1 and isinstance(arguments[0], str) else None
    match = _MIN_SIZE_EXPRESSION.fullmatch(expression.strip()) if expression else None
    if match is None:
        raise ValueError(
            f"Unsupported `!!python/object/apply:eval` value {arguments!r} in the yaml: only expressions of the form "
            "`[int(x * 0.1 * 1024) for x in range(5, 21)]` are evaluated (yaml files are never executed). Replace it "
            "with an explicit list."
        )
    factor, size = float(match["factor"]), int(match["size"])
    return [int(x * factor * size) for x in range(int(match["start"]), int(match["stop"]))]


_OfficialConfigLoader.add_constructor("tag:yaml.org,2002:python/object/apply:eval", _eval_list)

# detectron2 and `pem/config.py` (add_maskformer2_config) defaults of the settings the yaml files may leave out.
OFFICIAL_DEFAULTS = {
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": "",
        "PIXEL_MEAN": [103.53, 116.28, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
        "RESNETS": {
            "DEPTH": 50,
            "OUT_FEATURES": ["res4"],
            "NUM_GROUPS": 1,
            "NORM": "FrozenBN",
            "WIDTH_PER_GROUP": 64,
            "STRIDE_IN_1X1": True,
            "RES5_DILATION": 1,
            "RES2_OUT_CHANNELS": 256,
            "STEM_OUT_CHANNELS": 64,
            "DEFORM_ON_PER_STAGE": [False, False, False, False],
        },
        "STDC": {
            "LAYERS": [2, 2, 2],
            "BLOCK_NUM": 4,
            "BLOCK_TIPE": "cat",
            "USE_CONV_LAST": False,
            "NORM": "SyncBN",
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        },
        "SEM_SEG_HEAD": {
            "NAME": "SemSegFPNHead",
            "IN_FEATURES": ["p2", "p3", "p4", "p5"],
            "IGNORE_VALUE": 255,
            "NUM_CLASSES": 54,
            "CONVS_DIM": 128,
            "COMMON_STRIDE": 4,
            "NORM": "GN",
            "LOSS_WEIGHT": 1.0,
            "MASK_DIM": 256,
            "TRANSFORMER_ENC_LAYERS": 0,
            "PIXEL_DECODER_NAME": "BasePixelDecoder",
        },
        "MASK_FORMER": {
            "DEEP_SUPERVISION": True,
            "NO_OBJECT_WEIGHT": 0.1,
            "CLASS_WEIGHT": 1.0,
            "DICE_WEIGHT": 1.0,
            "MASK_WEIGHT": 20.0,
            "NHEADS": 8,
            "DROPOUT": 0.1,
            "DIM_FEEDFORWARD": 2048,
            "ENC_LAYERS": 0,
            "DEC_LAYERS": 6,
            "PRE_NORM": False,
            "HIDDEN_DIM": 256,
            "NUM_OBJECT_QUERIES": 100,
            "TRANSFORMER_IN_FEATURE": "res5",
            "ENFORCE_INPUT_PROJ": False,
            "TEST": {
                "SEMANTIC_ON": True,
                "INSTANCE_ON": False,
                "PANOPTIC_ON": False,
                "OBJECT_MASK_THRESHOLD": 0.0,
                "OVERLAP_THRESHOLD": 0.0,
                "SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False,
            },
            "SIZE_DIVISIBILITY": 32,
            "TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
            "TRAIN_NUM_POINTS": 112 * 112,
            "OVERSAMPLE_RATIO": 3.0,
            "IMPORTANCE_SAMPLE_RATIO": 0.75,
        },
    },
    "INPUT": {
        "MIN_SIZE_TRAIN": [800],
        "MIN_SIZE_TRAIN_SAMPLING": "choice",
        "MAX_SIZE_TRAIN": 1333,
        "MIN_SIZE_TEST": 800,
        "MAX_SIZE_TEST": 1333,
        "FORMAT": "BGR",
        "CROP": {"ENABLED": False, "TYPE": "relative_range", "SIZE": [0.9, 0.9], "SINGLE_CATEGORY_MAX_AREA": 1.0},
        "DATASET_MAPPER_NAME": "mask_former_semantic",
        "COLOR_AUG_SSD": False,
        "SIZE_DIVISIBILITY": -1,
        "IMAGE_SIZE": 1024,
        "MIN_SCALE": 0.1,
        "MAX_SCALE": 2.0,
    },
    "DATASETS": {"TRAIN": [], "TEST": []},
    "TEST": {
        "DETECTIONS_PER_IMAGE": 100,
        "EVAL_PERIOD": 0,
        "AUG": {"ENABLED": False, "MIN_SIZES": [400, 500, 600, 700, 800, 900, 1000, 1100, 1200], "MAX_SIZE": 4000},
    },
}


def _decode_value(value):
    """Decode a yaml value as detectron2's config system does: strings that are Python literals (`"(512, 1024)"`,
    `"1e-6"`) become values (through `ast.literal_eval`, which evaluates literals only); tuples become lists."""
    if isinstance(value, dict):
        return {key: _decode_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_decode_value(item) for item in value]
    if isinstance(value, str):
        try:
            decoded = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
        return _decode_value(decoded) if decoded is None or isinstance(decoded, list | tuple | int | float) else value
    return value


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path.resolve() in seen:
        raise ValueError(f"The `_BASE_` chain of {str(seen[0])!r} loops through {str(path)!r}.")
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"Cannot read the config file {str(path)!r}: {error}.") from error
    try:
        config = yaml.load(text, Loader=_OfficialConfigLoader) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"Cannot parse {str(path)!r} (read with yaml.SafeLoader; no Python tags): {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} is not a detectron2 yaml config (its top level is not a mapping).")
    base = config.pop("_BASE_", None)
    if base is None:
        return config
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    if not base_path.is_file():
        # The official ADE20K STDC yamls name `pem_R50_bs32_90k.yaml`, but their folder has only the 160k R50 config,
        # which differs from a 90k one only in the schedule (see the README of the official-code reference data).
        fallback = base_path.with_name("pem_R50_bs32_160k.yaml")
        if base_path.name != "pem_R50_bs32_90k.yaml" or not fallback.is_file():
            raise ValueError(
                f"{str(path)!r} names `_BASE_: {base}`, but {str(base_path)!r} does not exist. Point `_BASE_` to the "
                "right file (the official configs come from the PEM repository's `configs/` folder)."
            )
        logger.warning(
            "%s names `_BASE_: %s`, which does not exist (a known issue of the official ADE20K STDC configs); using "
            "%s from the same folder instead.",
            path,
            base,
            fallback.name,
        )
        base_path = fallback
    return _merge(_load_yaml_chain(base_path, (*seen, path.resolve())), config)


def load_official_config(path: str | Path) -> dict:
    """Read an official PEM / detectron2 yaml config with its `_BASE_` chain, on top of the detectron2 and PEM
    defaults of the settings the converter uses (`OFFICIAL_DEFAULTS`). The yaml is parsed with `yaml.SafeLoader`; its
    one Python expression (`INPUT.MIN_SIZE_TRAIN`) is recognised and computed, never evaluated."""
    return _decode_value(_merge(OFFICIAL_DEFAULTS, _load_yaml_chain(Path(path))))


# ---------------------------------------------------------------------------------------------------------------------
# Official config -> PEMConfig + image processor
# ---------------------------------------------------------------------------------------------------------------------

_RESNET_DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


@dataclass
class ConversionTarget:
    """What a `--config` resolves to.

    Attributes:
        config: the model configuration.
        image_processor: the processor with the configuration's test settings, or `None` if unknown.
        preset: the official configuration this is (see `PEMConfig.presets()`), or `None` for a custom one.
        source: where the configuration came from, for the model card.
    """

    config: PEMConfig
    image_processor: PEMImageProcessor | None
    preset: str | None
    source: str


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _backbone_from_official(model: dict) -> tuple[ResNetConfig | STDCConfig, str | None]:
    """Backbone config and preset name part (`r50`, `stdc1`, `stdc2` or `None`) of an official `MODEL` section."""
    out_features = ["stage1", "stage2", "stage3", "stage4"]
    name = model["BACKBONE"]["NAME"]
    if name == "D2STDCnet":
        stdc = model["STDC"]
        _require(
            stdc["OUT_FEATURES"] == ["res2", "res3", "res4", "res5"],
            f"MODEL.STDC.OUT_FEATURES must be [res2, res3, res4, res5], got {stdc['OUT_FEATURES']}.",
        )
        config = STDCConfig(
            layers=list(stdc["LAYERS"]),
            block_num=stdc["BLOCK_NUM"],
            block_type=stdc["BLOCK_TIPE"],
            use_conv_last=stdc["USE_CONV_LAST"],
            out_features=out_features,
        )
        official = stdc["BLOCK_NUM"] == 4 and stdc["BLOCK_TIPE"] == "cat" and not stdc["USE_CONV_LAST"]
        return config, STDC_NAMES.get(tuple(stdc["LAYERS"])) if official else None
    if name == "build_resnet_backbone":
        resnet = model["RESNETS"]
        unsupported = {
            "DEPTH": (resnet["DEPTH"], "50, 101 or 152", resnet["DEPTH"] in _RESNET_DEPTHS),
            "NUM_GROUPS": (resnet["NUM_GROUPS"], "1", resnet["NUM_GROUPS"] == 1),
            "WIDTH_PER_GROUP": (resnet["WIDTH_PER_GROUP"], "64", resnet["WIDTH_PER_GROUP"] == 64),
            "STEM_OUT_CHANNELS": (resnet["STEM_OUT_CHANNELS"], "64", resnet["STEM_OUT_CHANNELS"] == 64),
            "RES2_OUT_CHANNELS": (resnet["RES2_OUT_CHANNELS"], "256", resnet["RES2_OUT_CHANNELS"] == 256),
            "RES5_DILATION": (resnet["RES5_DILATION"], "1", resnet["RES5_DILATION"] == 1),
            "DEFORM_ON_PER_STAGE": (
                resnet["DEFORM_ON_PER_STAGE"],
                "all False",
                not any(resnet["DEFORM_ON_PER_STAGE"]),
            ),
        }
        problems = [f"{key} = {value} (needs {needed})" for key, (value, needed, ok) in unsupported.items() if not ok]
        _require(not problems, f"Unsupported MODEL.RESNETS settings: {'; '.join(problems)}.")
        config = ResNetConfig(
            depths=_RESNET_DEPTHS[resnet["DEPTH"]],
            downsample_in_bottleneck=resnet["STRIDE_IN_1X1"],  # stride in the first 1x1 conv
            out_features=out_features,
        )
        return config, "r50" if resnet["DEPTH"] == 50 and not resnet["STRIDE_IN_1X1"] else None
    raise ValueError(
        f"Unsupported MODEL.BACKBONE.NAME {name!r}: PEM converts `build_resnet_backbone` and `D2STDCnet`."
    )


def _dataset_from_official(config: dict) -> str:
    test_sets = config["DATASETS"]["TEST"]
    name = test_sets[0] if test_sets else ""
    for dataset in DATASET_LABELS:
        if name.startswith(dataset):
            return dataset
    raise ValueError(
        f"Cannot tell the label set from DATASETS.TEST = {test_sets}: the converter knows {sorted(DATASET_LABELS)} "
        "(dataset names starting with one of these). For another dataset, save a PEMConfig with your id2label and "
        "pass its directory as --config."
    )


def config_from_official(official: dict, source: str = "official yaml") -> ConversionTarget:
    """Build the `PEMConfig` and image processor of an official config (as returned by `load_official_config`).

    Settings PEM cannot represent (another meta-architecture, pixel decoder or transformer decoder, BGR input,
    unsupported backbone options) raise a `ValueError`.
    """
    model, mask_former = official["MODEL"], official["MODEL"]["MASK_FORMER"]
    head, test = official["MODEL"]["SEM_SEG_HEAD"], official["MODEL"]["MASK_FORMER"]["TEST"]
    expected = {
        "MODEL.META_ARCHITECTURE": (model["META_ARCHITECTURE"], "MaskFormer"),
        "MODEL.SEM_SEG_HEAD.NAME": (head["NAME"], "MaskFormerHead"),
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": (head["PIXEL_DECODER_NAME"], "PEM_Pixel_Decoder"),
        "MODEL.SEM_SEG_HEAD.IN_FEATURES": (head["IN_FEATURES"], ["res2", "res3", "res4", "res5"]),
        "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": (head["COMMON_STRIDE"], 4),
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": (
            mask_former["TRANSFORMER_DECODER_NAME"],
            "MultiScaleMaskedTransformerDecoder",
        ),
        "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": (
            mask_former["TRANSFORMER_IN_FEATURE"],
            "multi_scale_pixel_decoder",
        ),
        "INPUT.FORMAT": (official["INPUT"]["FORMAT"], "RGB"),
    }
    problems = [
        f"{key} = {value!r} (PEM needs {needed!r})" for key, (value, needed) in expected.items() if value != needed
    ]
    _require(not problems, f"This is not a PEM configuration the converter supports: {'; '.join(problems)}.")

    if mask_former["DROPOUT"]:
        logger.warning(
            "MODEL.MASK_FORMER.DROPOUT = %s is ignored: PEM's decoder has no dropout.", mask_former["DROPOUT"]
        )
    backbone_config, backbone_name = _backbone_from_official(model)
    dataset = _dataset_from_official(official)
    task = "panoptic" if test["PANOPTIC_ON"] else "semantic"
    num_labels = len(DATASET_LABELS[dataset])
    _require(
        head["NUM_CLASSES"] == num_labels,
        f"MODEL.SEM_SEG_HEAD.NUM_CLASSES = {head['NUM_CLASSES']}, but {dataset} ({official['DATASETS']['TEST']}) "
        f"has {num_labels} classes.",
    )
    label_preset = f"pem-{backbone_name or 'r50'}-{dataset}-{task}"  # labels and processor depend on dataset and task
    config = PEMConfig.from_preset(
        label_preset,
        backbone_config=backbone_config,
        conv_dim=head["CONVS_DIM"],
        mask_dim=head["MASK_DIM"],
        ignore_value=head["IGNORE_VALUE"],
        hidden_dim=mask_former["HIDDEN_DIM"],
        num_queries=mask_former["NUM_OBJECT_QUERIES"],
        num_attention_heads=mask_former["NHEADS"],
        dim_feedforward=mask_former["DIM_FEEDFORWARD"],
        decoder_layers=mask_former["DEC_LAYERS"] - 1,  # the official count includes the learnable-query prediction
        pre_norm=mask_former["PRE_NORM"],
        enforce_input_projection=mask_former["ENFORCE_INPUT_PROJ"],
        no_object_weight=mask_former["NO_OBJECT_WEIGHT"],
        class_weight=mask_former["CLASS_WEIGHT"],
        mask_weight=mask_former["MASK_WEIGHT"],
        dice_weight=mask_former["DICE_WEIGHT"],
        train_num_points=mask_former["TRAIN_NUM_POINTS"],
        oversample_ratio=mask_former["OVERSAMPLE_RATIO"],
        importance_sample_ratio=mask_former["IMPORTANCE_SAMPLE_RATIO"],
        use_auxiliary_loss=mask_former["DEEP_SUPERVISION"],
        object_mask_threshold=test["OBJECT_MASK_THRESHOLD"],
        overlap_threshold=test["OVERLAP_THRESHOLD"],
        test_topk_per_image=official["TEST"]["DETECTIONS_PER_IMAGE"],
    )

    processor_settings = {
        "size": {
            "shortest_edge": official["INPUT"]["MIN_SIZE_TEST"],
            "longest_edge": official["INPUT"]["MAX_SIZE_TEST"],
        },
        "resize_masks_before_semantic_inference": bool(
            test["PANOPTIC_ON"] or test["INSTANCE_ON"] or test["SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE"]
        ),
        "size_divisor": mask_former["SIZE_DIVISIBILITY"],
    }
    image_processor = PEMImageProcessor.from_preset(label_preset, model_config=config, **processor_settings)
    mean, std = [value / 255 for value in model["PIXEL_MEAN"]], [value / 255 for value in model["PIXEL_STD"]]
    preset_normalisation = list(image_processor.image_mean) + list(image_processor.image_std)
    if not all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(mean + std, preset_normalisation)):
        image_processor = PEMImageProcessor.from_preset(
            label_preset, model_config=config, **processor_settings, image_mean=mean, image_std=std
        )

    official_preset = label_preset if backbone_name is not None else None
    if official_preset is not None and config.to_dict() != PEMConfig.from_preset(official_preset).to_dict():
        official_preset = None
    return ConversionTarget(config=config, image_processor=image_processor, preset=official_preset, source=source)


def resolve_config(config: str | Path) -> ConversionTarget:
    """Resolve a `--config` value: a preset name (`PEMConfig.presets()`), an official yaml file, or a directory (or
    `config.json`) with a saved `PEMConfig` for custom architectures (its processor is used if the directory has a
    `preprocessor_config.json`)."""
    if str(config) in PRESETS:
        name = str(config)
        return ConversionTarget(
            PEMConfig.from_preset(name), PEMImageProcessor.from_preset(name), preset=name, source=f"preset {name}"
        )
    path = Path(config)
    if path.suffix in (".yaml", ".yml"):
        return config_from_official(load_official_config(path), source=f"official config {path.name}")
    if path.is_dir() or path.suffix == ".json":
        directory = path if path.is_dir() else path.parent
        pem_config = PEMConfig.from_pretrained(path) if path.is_dir() else PEMConfig.from_json_file(path)
        image_processor = None
        if (directory / "preprocessor_config.json").is_file():
            image_processor = PEMImageProcessor.from_pretrained(directory)
        return ConversionTarget(pem_config, image_processor, preset=None, source=f"custom config {path.name}")
    raise ValueError(
        f"--config {str(config)!r} is neither a preset ({', '.join(PRESETS)}), nor a .yaml file, nor a "
        "directory / config.json with a saved PEMConfig."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Output: save_pretrained directory, model card, Hub upload
# ---------------------------------------------------------------------------------------------------------------------


def model_card(
    target: ConversionTarget, model: PEMForUniversalSegmentation, weights: str, trained: bool, repo_id: str
) -> str:
    """The README.md of a converted checkpoint: what it is, the paper's result for its configuration, usage, citation.

    `weights` describes where the weights came from; `trained` is False for a model with only ImageNet backbone
    weights; `repo_id` is the name used in the usage snippet (Hub repository or local directory)."""
    config = target.config
    dataset = dataset_for(config.id2label)
    backbone = backbone_name(config)
    preset = get_preset(target.preset) if target.preset else None
    task = preset.task if preset else None
    title = f"PEM-{backbone}" + (f" ({DATASET_NAMES[dataset]}{f', {task}' if task else ''})" if dataset else "")
    if not trained:
        result = "None: only the backbone is pretrained (ImageNet); fine-tune the model before using it."
    elif preset is not None and preset.paper_result is not None:
        result = f"{preset.paper_result}: the paper's result for the official `{preset.name}` configuration."
    elif preset is not None:
        result = f"The paper reports no result for `{target.preset}`."
    else:
        result = "Custom configuration: the paper reports no result for it."
    num_parameters = model.num_parameters() / 1e6
    front_matter = f"---\n{card_data(title, dataset).to_yaml()}\n---"
    return f"""{front_matter}

# {title}

PEM (Prototype-based Efficient MaskFormer, Cavagnero et al., CVPR 2024, [arXiv 2402.19422](https://arxiv.org/abs/2402.19422))
for [transformers](https://github.com/huggingface/transformers) through the `transformers-pem` package: a
{backbone} backbone, PEM's efficient pixel decoder and a transformer decoder with prototype-based masked
cross-attention; {config.num_labels} classes{f" ({DATASET_NAMES[dataset]})" if dataset else ""},
{config.num_queries} queries, {num_parameters:.1f} M parameters.

- **Weights:** {weights}, converted with `pem convert` (every key mapped and checked).
- **Configuration:** {target.source}.
- **Result:** {result}

{usage_section(repo_id, task)}"""


def convert(
    config: str | Path,
    output_dir: str | Path,
    checkpoint: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    push_to_hub: str | None = None,
) -> PEMForUniversalSegmentation:
    """Convert an official checkpoint (or build a model with ImageNet backbone weights) and write a
    `save_pretrained` directory: `config.json` (with id2label / label2id), `model.safetensors`,
    `preprocessor_config.json` and a model card `README.md`. With `push_to_hub`, upload it to that Hub repository."""
    if (checkpoint is None) == (backbone_weights is None):
        raise ValueError("Pass exactly one of `checkpoint` (an official PEM model) and `backbone_weights` (ImageNet).")
    output_dir = check_output_dir(output_dir, "output_dir")
    target = resolve_config(config)
    model = PEMForUniversalSegmentation(target.config).eval()
    if checkpoint is not None:
        load_official_checkpoint(model, checkpoint)
        weights = f"official PEM checkpoint `{Path(checkpoint).name}`"
    else:
        load_backbone_weights(model, backbone_weights)
        weights = f"ImageNet backbone weights `{Path(backbone_weights).name}` and a randomly initialised head"

    model.save_pretrained(output_dir)
    if target.image_processor is not None:
        target.image_processor.save_pretrained(output_dir)
    else:
        logger.warning("No image processor settings for %s: %s has no preprocessor_config.json.", config, output_dir)
    card = model_card(target, model, weights, trained=checkpoint is not None, repo_id=push_to_hub or str(output_dir))
    (output_dir / "README.md").write_text(card)
    if push_to_hub:
        push_folder(output_dir, push_to_hub, commit_message=f"Add {output_dir.name}")
    return model
