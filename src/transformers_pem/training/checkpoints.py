"""A run's checkpoints: written atomically (a temporary folder renamed when complete), the newest intact one
found on resume, a folder of another run refused."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import accelerate

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints, newest first (incomplete ones are `*.tmp` and ignored)."""
    checkpoints = [
        (int(match.group(1)), path)
        for path in output_dir.glob("checkpoint-*")
        if (match := CHECKPOINT_PATTERN.match(path.name)) and (path / "trainer_state.json").exists()
    ]
    return [path for _, path in sorted(checkpoints, reverse=True)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the most steps."""
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[0] if checkpoints else None


def check_new_run_dir(output_dir: Path) -> None:
    """Refuse to start a run in a folder that holds another run's checkpoints or final model: mixed, a later
    `resume="latest"` would pick up the wrong run's weights."""
    previous = sorted(path.name for path in output_dir.iterdir() if CHECKPOINT_PATTERN.match(path.name))
    previous += ["final"] if (output_dir / "final").exists() else []
    if previous:
        raise ValueError(
            f"output_dir={str(output_dir)!r} already holds a run ({', '.join(previous[:3])}): pass resume='latest' "
            "(--resume latest) to continue it, or another output_dir for a new run."
        )


def load_newest_intact_checkpoint(accelerator: "accelerate.Accelerator", checkpoints: list[Path]) -> tuple[Path, dict]:
    """Load the first of `checkpoints` (newest first) that reads back whole; say which ones were skipped and why.
    Every state (weights, optimizer, scheduler, random generators) is overwritten by the one that loads."""
    for index, checkpoint in enumerate(checkpoints):
        try:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            accelerator.load_state(str(checkpoint))
            return checkpoint, state
        except Exception as error:  # any unreadable file: fall back to the previous checkpoint
            fallback = (
                f"falling back to {checkpoints[index + 1].name}" if index + 1 < len(checkpoints) else "none left"
            )
            accelerator.print(f"Checkpoint {checkpoint} is unreadable ({type(error).__name__}: {error}); {fallback}.")
    raise ValueError(
        f"No intact checkpoint among {[path.name for path in checkpoints]}: start a new run in another output_dir."
    )


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of named tensors (e.g. a state dict), to compare replicas and runs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(accelerator: "accelerate.Accelerator", output_dir: Path, step: int, epoch: int, keep: int) -> None:
    """Write `checkpoint-<step>` atomically (to a temporary folder, renamed when complete), keep the last `keep`."""
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    if accelerator.is_main_process:
        (temporary / "trainer_state.json").write_text(json.dumps({"step": step, "epoch": epoch}))
        if final.exists():  # an unreadable checkpoint that resuming fell back from: the new one replaces it
            shutil.rmtree(final)
        os.replace(temporary, final)
        checkpoints = sorted(
            (int(m.group(1)), p) for p in output_dir.glob("checkpoint-*") if (m := CHECKPOINT_PATTERN.match(p.name))
        )
        for _, old in checkpoints[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
