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


def tiny_problem(inputs: str = "sketch", sizes=(120,), seed: int = 0):
    """Model, guide and batches (one per size) of 300 ratings of 30 movies by 25 users,
    with a decoder on ``[z_m * z_u, z_m, z_u]`` and two encoder layers."""
    from deepfactor.batching import EncoderInputs, make_batch
    from deepfactor.data.ratings import IdIndex, Ratings
    from deepfactor.fitted import build_modules
    from deepfactor.fitting import training_inputs

    rng = np.random.default_rng(seed)
    num_movies, num_users, num_ratings = 30, 25, 300
    cells = rng.choice(num_movies * num_users, size=num_ratings, replace=False)
    values = rng.integers(1, 6, num_ratings).astype(float)
    ratings = Ratings(cells // num_users, cells % num_users, values,
                      IdIndex(range(num_movies)), IdIndex(range(num_users)))
    config = small_config(**{"guide.inputs": inputs, "guide.sketch_dim": 8,
                             "model.latent_dim": 4, "model.decoder_hidden": [32],
                             "guide.encoder_hidden": [32, 16],
                             "model.decoder_inputs": "product+latents"})
    model, guide = build_modules(config, num_movies, num_users)
    if inputs == "sketch":
        encoder_inputs = training_inputs(config, ratings, float(values.mean()), 1.0)
    else:
        encoder_inputs = EncoderInputs(ratings, values, float(values.mean()), 1.0)
    batches = [make_batch(ratings, values, rng.permutation(num_ratings)[:size],
                          encoder_inputs) for size in sizes]
    return model, guide, batches


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
