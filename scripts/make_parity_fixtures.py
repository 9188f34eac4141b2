"""Copy the parts of the official-implementation reference data (../shared/parity) that the tests use into
tests/fixtures/parity: weights without STDC alias duplicates, the model inputs, the decoder outputs and the selected
prototype indices. Data only; run once when the reference data change."""

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

CASES = ("stdc1_tiny_semantic", "stdc2_tiny_panoptic", "r50_head_tiny")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "parity")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/parity")
    args = parser.parse_args()
    for case in CASES:
        source, output = args.source / case, args.output / case
        output.mkdir(parents=True, exist_ok=True)
        meta = json.loads((source / "meta.json").read_text())
        aliases = set(meta.get("stdc_alias_map", {}))
        weights = {k: v for k, v in load_file(source / "weights.safetensors").items() if k not in aliases}
        save_file(weights, output / "weights.safetensors")
        inputs = load_file(source / "inputs.safetensors")
        save_file(
            {k: v for k, v in inputs.items() if k in ("pixel_values", "pixel_mask") or k.startswith("features")},
            output / "inputs.safetensors",
        )
        outputs = load_file(source / "outputs.safetensors")
        save_file(
            {k: v for k, v in outputs.items() if "pred_logits" in k or "pred_masks" in k and "instances" not in k},
            output / "outputs.safetensors",
        )
        intermediates = load_file(source / "intermediates.safetensors")
        save_file(
            {k: v for k, v in intermediates.items() if k.endswith("most_similar_indices")},
            output / "indices.safetensors",
        )
        (output / "config.json").write_text(json.dumps(meta["config"], indent=1))
    unit = args.output / "pem_ca_unit"
    unit.mkdir(exist_ok=True)
    for name in ("inputs.safetensors", "outputs.safetensors", "weights.safetensors", "meta.json"):
        shutil.copy(args.source / "pem_ca_unit" / name, unit / name)


if __name__ == "__main__":
    main()
