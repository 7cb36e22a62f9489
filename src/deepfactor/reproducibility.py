"""Seeds, threads and the record of versions that goes with every output."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import pyro
import torch

__all__ = ["set_seed", "configure_threads", "environment"]


def set_seed(seed: int) -> None:
    """Seed torch, NumPy's legacy global state and ``random`` together (via Pyro)."""
    pyro.set_rng_seed(seed)


def configure_threads(num_threads: int) -> None:
    """Use ``num_threads`` torch threads; 0 leaves torch's default."""
    if num_threads:
        torch.set_num_threads(num_threads)


def environment() -> dict:
    """Versions and threading settings, recorded beside every run."""
    packages = {}
    for name in ("deepfactor", "torch", "pyro-ppl", "numpy", "pandas", "arviz", "scikit-learn"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
