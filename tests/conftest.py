"""What the test modules share: the `slow` marker and session-wide synthetic datasets and checkpoints.

`make test` runs every test. `pytest -m "not slow"` leaves out the slow ones (a model trained for hundreds of steps,
the browser, several processes, command lines and notebooks in subprocesses) for a fast loop while editing.

The shared datasets and checkpoints are built once per session and settings; tests read them and never change them
(a test that edits data copies it to its own `tmp_path` first).
"""

from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_configs import save_confident_cityscapes_checkpoint


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", 'slow: a slow test (training, browser, processes); deselect with -m "not slow"')


def _cached(make: Callable[..., object], tmp_path_factory: pytest.TempPathFactory, name: str) -> Callable:
    """`make(folder, **settings)`, called once per settings; later calls return the first result."""
    made = {}

    def build(**settings):
        key = tuple(sorted((name, tuple(v) if isinstance(v, list) else v) for name, v in settings.items()))
        if key not in made:
            made[key] = make(tmp_path_factory.mktemp(name), **settings)
        return made[key]

    return build


@pytest.fixture(scope="session")
def synthetic_cityscapes(tmp_path_factory) -> Callable[..., Path]:
    """`synthetic_cityscapes(num_train=, num_val=, size=, seed=)`: the root of a synthetic dataset in the genuine
    Cityscapes layout (`generate_cityscapes`)."""
    from transformers_pem.data.synthetic import generate_cityscapes

    return _cached(generate_cityscapes, tmp_path_factory, "cityscapes")


@pytest.fixture(scope="session")
def synthetic_ade20k(tmp_path_factory) -> Callable[..., Path]:
    """`synthetic_ade20k(num_train=, num_val=, size=, seed=)`: the root of a synthetic dataset in the ADE20K layout
    (`generate_ade20k`)."""
    from transformers_pem.data.synthetic import generate_ade20k

    return _cached(generate_ade20k, tmp_path_factory, "ade20k")


@pytest.fixture(scope="session")
def confident_checkpoint(tmp_path_factory) -> Callable[..., tuple]:
    """`confident_checkpoint(shortest_edge=64)`: `(directory, model, processor)` of a tiny saved Cityscapes PEM whose
    queries are confident of road, car or person (`tiny_configs.save_confident_cityscapes_checkpoint`)."""

    def make(directory: Path, shortest_edge: int = 64) -> tuple:
        return (directory, *save_confident_cityscapes_checkpoint(directory, shortest_edge=shortest_edge))

    return _cached(make, tmp_path_factory, "checkpoint")


@pytest.fixture(scope="session")
def trained_tiny_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """`(checkpoint, validation_images)`: a tiny PEM trained for 400 steps (~30 s) on synthetic Cityscapes scenes
    (`run/final`), and the folder of the dataset's validation images, which the exported runtimes calibrate on."""
    from tiny_configs import TINY_DECODER, TINY_STDC

    from transformers_pem.data.synthetic import generate_cityscapes
    from transformers_pem.training.config import TrainingConfig
    from transformers_pem.training.loop import train

    root = tmp_path_factory.mktemp("trained")
    data = generate_cityscapes(root / "data", num_train=8, num_val=4, size=(64, 128), seed=3)
    overrides = {**TINY_STDC, **TINY_DECODER, "decoder_layers": 2, "train_num_points": 256}
    train(
        TrainingConfig(
            output_dir=root / "run",
            data_root=data,
            preset="pem-stdc1-cityscapes-panoptic",
            task="panoptic",
            config_overrides=overrides,
            scale=0.125,
            test_size=(64, 128),
            batch_size=4,
            max_steps=400,
            learning_rate=2e-3,
            eval_every=0,
            save_every=1000,
        )
    )
    return root / "run" / "final", data / "leftImg8bit" / "val"
