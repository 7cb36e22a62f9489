"""Seeds, threads and the record of versions that goes with every output."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from importlib import metadata

import pyro
import torch

__all__ = ["set_seed", "configure_threads", "environment", "native_bfloat16", "cxx_compiler"]


def set_seed(seed: int) -> None:
    """Seed torch, NumPy's legacy global state and ``random`` together (via Pyro)."""
    pyro.set_rng_seed(seed)


def configure_threads(num_threads: int) -> None:
    """Use ``num_threads`` torch threads; 0 leaves torch's default."""
    if num_threads:
        torch.set_num_threads(num_threads)


def native_bfloat16() -> bool | None:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX tiles).

    None where torch cannot tell: not an x86 CPU, or a torch without the (private)
    checks. ``train.precision = "bfloat16"`` pays only where this is True.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    checks = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is None for check in checks):
        return None
    try:
        return any(bool(check()) for check in checks)
    except RuntimeError:
        return None


def cxx_compiler() -> str | None:
    """The C++ compiler that ``torch.compile`` (TorchInductor) would call, or None.

    Inductor runs ``$CXX``, else ``clang++`` on macOS and ``g++`` elsewhere;
    ``train.compile = true`` needs it and is refused with a clear error without it.
    Found is not proven to work: :func:`deepfactor.train.compile_decoder` tries it.
    """
    # as torch._inductor.config reads it: an empty $CXX is empty, not unset
    name = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    return shutil.which(name) if name else None


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
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # SIMD torch uses
        "native_bfloat16": native_bfloat16(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
