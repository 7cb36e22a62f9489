"""Shared test setup: fresh Pyro state per test, validation on, small problems."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from deepfactor.config import Config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Each test starts from a clean param store, fixed seed and validation on."""
    pyro.clear_param_store()
    pyro.settings.set(module_local_params=True)
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    torch.set_default_dtype(torch.float32)
    yield
    pyro.enable_validation(False)


@pytest.fixture
def ml100k_dir() -> Path:
    """The folder holding MovieLens 100K, from $DEEPFACTOR_DATA; skips when absent."""
    root = os.environ.get("DEEPFACTOR_DATA")
    if not root or not (Path(root) / "ml-100k" / "u.data").is_file():
        pytest.skip("MovieLens 100K not found: set DEEPFACTOR_DATA to the folder that "
                    "holds ml-100k/u.data (the licence forbids shipping it)")
    return Path(root) / "ml-100k"


def small_config(**dotted) -> Config:
    """A synthetic problem small enough to fit in a second or two."""
    values = {
        "data.dataset": "synthetic", "data.split": "random",
        "data.synthetic_movies": 40, "data.synthetic_users": 30,
        "data.synthetic_ratings": 600, "data.validation_fraction": 0.1,
        "model.latent_dim": 3, "model.decoder_hidden": [8], "guide.encoder_hidden": [16],
        "guide.inputs": "sparse",  # the sketch path is tested where a test asks for it
        "train.epochs": 3, "train.batch_size": 128, "train.patience": 0,
        "eval.num_samples": 10, "train.num_threads": 1,
    }
    values.update(dotted)
    nested: dict = {}
    for name, value in values.items():
        section, key = name.split(".")
        nested.setdefault(section, {})[key] = value
    return Config.from_dict(nested, source="<test>")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
