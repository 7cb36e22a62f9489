"""Saving and loading fitted models: atomic writes, ``weights_only`` loads, format checks.

A checkpoint is a ``torch.save`` of a dict holding only tensors and plain Python types
(str, int, float, bool, lists, dicts): the configuration, the ``state_dict`` of model
and guide, the raw-id maps, the posterior parameters and the encoders' training
inputs. It is loaded with ``torch.load(..., weights_only=True)``, which refuses to
run any code a crafted pickle might carry. Pyro's own ``ParamStore.load`` and
``PyroOptim.load`` unpickle without that protection, so we never use them.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "FORMAT", "FORMAT_VERSION", "atomic_write", "save_checkpoint",
           "load_checkpoint", "write_json"]

FORMAT = "deepfactor-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint could not be read: missing, truncated, foreign, unsafe or too new."""


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it.

    Readers never see a half-written file, and a failure leaves the old ``path``
    untouched. The file gets the permissions a plain ``open`` would give it (0666 less
    the umask), not the private 0600 of a temporary file, so that a shared run
    directory stays readable by whom the umask allows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.chmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (read by setting it, then putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Save ``payload`` (tensors and plain types only) atomically, tagged with the format."""
    tagged = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    atomic_write(path, lambda f: torch.save(tagged, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, executing no pickled code.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated, not a deepfactor checkpoint, holds objects
        other than tensors and plain types, or comes from a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; torch.load would read anything else as a
        # legacy pickle and fail with the message of an unsafe file, which misleads
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a "
                              "torch file: not a zip archive)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the file's
        # code: never pass that on.
        raise CheckpointError(f"{path}: refused to load: it is corrupt or holds objects "
                              "other than tensors and plain types") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a "
                              f"torch file: {reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a deepfactor checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer deepfactor (format "
                              f"{payload['format_version']}, this one reads up to "
                              f"{FORMAT_VERSION})")
    return payload
