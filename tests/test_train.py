"""The training loop: warm-up schedule, exact resume after a signal, checkpoints."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from deepfactor.fitting import fit, read_training_checkpoint
from deepfactor.reproducibility import cxx_compiler
from deepfactor.train import SVITrainer, TrainingInterrupted, kl_weight

from conftest import REPO, small_config


def test_kl_weight_rises_linearly_then_stays_at_one():
    assert [kl_weight(e, 4, 0.2) for e in range(1, 7)] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert kl_weight(1, 0, 0.2) == 1.0
    # a tempered bound: the warm-up ends at the final weight and stays there
    assert [kl_weight(e, 4, 0.2, 0.6) for e in range(1, 7)] == pytest.approx(
        [0.2, 0.3, 0.4, 0.5, 0.6, 0.6])
    assert kl_weight(3, 0, 0.2, 0.5) == 0.5


def test_a_tempered_fit_keeps_its_weight_and_reports_the_true_elbo(monkeypatch):
    from deepfactor.batching import RatingBatcher

    weights = []
    epoch = RatingBatcher.epoch
    monkeypatch.setattr(RatingBatcher, "epoch",
                        lambda self, kl_weight=1.0: weights.append(kl_weight)
                        or epoch(self, kl_weight))
    config = small_config(**{"train.epochs": 4, "train.kl_warmup_epochs": 2,
                             "train.kl_warmup_start": 0.1, "train.kl_weight": 0.3,
                             "train.patience": 0})
    tempered = fit(config, progress=False)
    assert [row["kl_weight"] for row in tempered.history] == pytest.approx(
        [0.1, 0.2, 0.3, 0.3])
    assert tempered.metrics["fit"]["best_epoch"] > 2  # chosen after the warm-up only
    # the final ELBO is the model's, at KL weight 1, not the bound that was trained
    assert weights == [1.0]

    # a weaker pull to the prior: the posteriors end further from it than the ELBO's
    exact = fit(config.replace(**{"train.kl_weight": 1.0}), progress=False)
    def mean_kl(fitted):  # KL(q || prior) per rated user, summed over dimensions
        from deepfactor.diagnostics import kl_per_dimension

        p = fitted.posterior
        return kl_per_dimension(p.z_user_loc.numpy(), p.z_user_scale.numpy(),
                                fitted.encoder_ratings.user_counts()).sum()

    assert mean_kl(tempered) > mean_kl(exact)



def test_early_stopping_waits_for_the_objective_not_for_the_warm_up_epochs(caplog):
    import numpy as np

    base = {"train.epochs": 4, "train.kl_warmup_epochs": 10, "train.patience": 0}
    # a warm-up that starts at the final weight trains on the objective from epoch 1
    flat = fit(small_config(**base, **{"train.kl_warmup_start": 1.0}), progress=False)
    assert [row["kl_weight"] for row in flat.history] == [1.0] * 4
    lpd = [row["val_lpd"] for row in flat.history]
    assert flat.metrics["fit"]["best_epoch"] == int(np.argmax(lpd)) + 1
    # a warm-up longer than the run never reaches it: the last epoch, with a warning
    with caplog.at_level("WARNING", logger="deepfactor.train"):
        rising = fit(small_config(**base, **{"train.kl_warmup_start": 0.1}), progress=False)
    assert rising.metrics["fit"]["best_epoch"] == 4
    assert "before the KL warm-up finished" in caplog.text


def test_a_warm_up_cannot_fall_to_its_weight():
    from deepfactor.config import ConfigError

    with pytest.raises(ConfigError, match="'train.kl_warmup_start' .0.5. is above "
                                          "'train.kl_weight' .0.3."):
        small_config(**{"train.kl_warmup_epochs": 2, "train.kl_warmup_start": 0.5,
                        "train.kl_weight": 0.3})
    # an override that breaks it is blamed on --set, naming the file it was set on
    from deepfactor.config import load_config

    with pytest.raises(ConfigError, match=r"^--set \(on \S*quasipoisson\.toml\): "
                                          r"'train.kl_warmup_start' .*"
                                          r"set train.kl_warmup_epochs = 0$"):
        load_config(REPO / "models" / "quasipoisson.toml", ["train.kl_weight=0.005"])


@pytest.mark.parametrize("batch_size, order, precision, compiled", [
    (128, "random", "float32", False), (20, "blocks", "float32", False),
    (20, "blocks", "bfloat16", False),
    pytest.param(20, "blocks", "bfloat16", True, marks=pytest.mark.skipif(
        cxx_compiler() is None, reason="train.compile needs a C++ compiler"))])
def test_a_run_stopped_mid_epoch_and_resumed_ends_like_an_unstopped_one(
        batch_size, order, precision, compiled, tmp_path, monkeypatch):
    # compiled: the resumed fit builds its own trainer and compiled decoder
    config = small_config(**{"train.epochs": 5, "train.kl_warmup_epochs": 2,
                             "train.lr_final": 0.002, "train.batch_size": batch_size,
                             "train.precision": precision, "train.compile": compiled})
    straight = fit(config, progress=False)
    # 4 steps an epoch at 128 (random: small data); 22 at 20, in blocks
    assert straight.metrics["fit"]["batch_order"] == order

    step = SVITrainer._step

    def signal_at_step_6(self, batch):  # inside epoch 2 at 128, inside epoch 1 at 20
        if self.step == 5:
            signal.raise_signal(signal.SIGINT)
        return step(self, batch)

    monkeypatch.setattr(SVITrainer, "_step", signal_at_step_6)
    path = tmp_path / "training.pt"
    with pytest.raises(TrainingInterrupted, match="SIGINT at step 6"):
        fit(config, progress=False, checkpoint_path=path)
    monkeypatch.setattr(SVITrainer, "_step", step)

    saved_config, state = read_training_checkpoint(path)
    assert dict(saved_config) == dict(config) and state["position"] > 0
    resumed = fit(saved_config, progress=False, checkpoint_path=path, resume=state)

    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    for key, value in straight.guide.state_dict().items():
        torch.testing.assert_close(resumed.guide.state_dict()[key], value, rtol=0, atol=0)
    assert resumed.metrics["test"] == straight.metrics["test"]
    untimed = [{k: v for k, v in r.items() if k != "seconds"} for r in straight.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == untimed


def test_checkpoints_are_written_every_n_epochs(tmp_path, monkeypatch):
    written = []
    original = SVITrainer._end_epoch

    def spy(self, bar):
        original(self, bar)
        if (tmp_path / "training.pt").exists():
            written.append(self.epoch)
            (tmp_path / "training.pt").unlink()

    monkeypatch.setattr(SVITrainer, "_end_epoch", spy)
    fit(small_config(**{"train.epochs": 5, "train.checkpoint_every": 2}), progress=False,
        checkpoint_path=tmp_path / "training.pt")
    assert written == [2, 4, 5]  # every 2 epochs, and at the end


@pytest.mark.slow
def test_cli_sigint_saves_and_resume_matches_an_uninterrupted_run(tmp_path):
    args = ["--set", "data.dataset=synthetic", "--set", "data.split=random",
            "--set", "data.synthetic_ratings=3000", "--set", "data.synthetic_movies=100",
            "--set", "data.synthetic_users=80", "--set", "train.epochs=40",
            "--set", "train.batch_size=200", "--set", "train.checkpoint_every=1",
            "--set", "eval.num_samples=10", "--quiet"]
    gaussian = str(REPO / "models" / "gaussian.toml")
    base = [sys.executable, "-m", "deepfactor", "fit", gaussian]
    straight = subprocess.run(base + ["--out", str(tmp_path / "a"), *args], capture_output=True,
                              text=True)
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "b"
    proc = subprocess.Popen(base + ["--out", str(run), *args], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "training.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "deepfactor fit --resume" in stderr and "Traceback" not in stderr
    assert not (run / "model.pt").exists()

    resumed = subprocess.run([sys.executable, "-m", "deepfactor", "fit", "--resume", str(run),
                              "--quiet"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    assert b["test"] == a["test"] and b["fit"]["epochs"] == a["fit"]["epochs"]


def test_the_epoch_loss_weighs_each_step_by_its_batch_size(monkeypatch):
    """A short last batch counts for its ratings, not as much as a full one."""
    steps = []
    original = SVITrainer._step

    def spy(self, batch):
        loss = original(self, batch)
        steps.append((self.epoch, loss, len(batch)))
        return loss

    monkeypatch.setattr(SVITrainer, "_step", spy)
    fitted = fit(small_config(**{"train.epochs": 2, "train.batch_size": 100}), progress=False)
    for row in fitted.history:
        mine = [(loss, size) for epoch, loss, size in steps if epoch == row["epoch"] - 1]
        losses, sizes = zip(*mine)
        assert len(set(sizes)) == 2  # full batches of 100 and a shorter last one
        assert row["loss"] == pytest.approx(np.average(losses, weights=sizes), rel=1e-12)
        assert row["loss"] != pytest.approx(np.mean(losses), rel=1e-6)
