"""Checkpoints: round trip in a fresh process, and nothing we load can run code."""

import subprocess
import sys

import pytest
import torch

from deepfactor.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from deepfactor.fitted import load
from deepfactor.fitting import fit

from conftest import small_config


@pytest.mark.parametrize("inputs", ["sparse", "sketch"])
def test_fitted_model_round_trips_in_a_fresh_process(tmp_path, inputs):
    fitted = fit(small_config(**{"guide.inputs": inputs, "guide.sketch_dim": 8}),
                 progress=False)
    fitted.save(tmp_path)
    users, movies = fitted.user_ids.raw[:5], fitted.movie_ids.raw[:5]
    expected = fitted.predict(users, movies)

    code = (
        "import sys, deepfactor\n"
        f"f = deepfactor.load({str(tmp_path)!r})\n"
        f"f.predict({users!r}, {movies!r}).to_csv(sys.stdout, index=False)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    import io
    import pandas as pd
    again = pd.read_csv(io.StringIO(out.stdout), dtype={"user": str, "movie": str})
    pd.testing.assert_frame_equal(again, expected, check_exact=False, rtol=1e-6)

    reloaded = load(tmp_path)
    torch.testing.assert_close(reloaded.posterior.z_user_loc, fitted.posterior.z_user_loc)


class _Payload:
    """A pickle that would create a marker file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"format": "deepfactor-checkpoint", "format_version": 1,
                "model": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load(tmp_path)
    assert not marker.exists()


def test_truncated_foreign_and_newer_checkpoints_are_clear_errors(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a torch file"):
        load_checkpoint(path)

    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not a deepfactor checkpoint"):
        load_checkpoint(path)

    torch.save({"format": "deepfactor-checkpoint", "format_version": 99}, path)
    with pytest.raises(CheckpointError, match="newer deepfactor"):
        load_checkpoint(path)

    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def failing(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_garbage_never_suggests_unsafe_loading(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"garbage\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value)


def test_written_files_follow_the_umask_not_the_temporary_files_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda f: f.write(b"x"))
        os.umask(0o077)
        atomic_write(tmp_path / "b.txt", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_loading_a_config_file_as_a_run_says_what_load_reads():
    from conftest import REPO
    from deepfactor import load

    path = REPO / "models" / "ordinal.toml"
    with pytest.raises(CheckpointError, match=r"ordinal\.toml: not a run; load reads the "
                                              r"folder that `deepfactor fit --out` wrote"):
        load(path)


def test_a_text_file_is_not_a_torch_file_rather_than_an_unsafe_one(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("[model]\nlikelihood = 'normal'\n")
    with pytest.raises(CheckpointError, match="truncated or not a torch file: not a zip"):
        load_checkpoint(path)
