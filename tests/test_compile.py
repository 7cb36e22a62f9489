"""train.compile = true: the training steps' decoder runs compiled, and computes the same."""

import os
import shutil
import subprocess
import sys

import pyro
import pytest
import torch

from deepfactor.config import ConfigError
from deepfactor.fitting import fit
from deepfactor.reproducibility import cxx_compiler
from deepfactor.train import _swapped_forward, compile_decoder, make_elbo, training_precision

from conftest import REPO, small_config, tiny_problem
from test_cli import SMALL, run

needs_compiler = pytest.mark.skipif(
    cxx_compiler() is None, reason="torch.compile needs a C++ compiler (g++ or $CXX), "
    "and none is on PATH")

#: float32's unit roundoff; bfloat16's is 2^-8.
U_FP32, U_BF16 = 2.0**-24, 2.0**-8


@needs_compiler
@pytest.mark.parametrize("precision, tolerance", [("float32", 64 * U_FP32),
                                                  ("bfloat16", U_BF16)])
def test_the_compiled_decoder_gives_the_eager_loss_and_gradients(precision, tolerance):
    """Fusion changes only the order of roundings. In float32 a rating's eta passes a few
    dozen roundings of at most ``u`` each; the loss and each gradient then agree to a
    few dozen ``u`` relative (``64 u`` allowed). Under bfloat16 both run the hidden
    layer in bfloat16, but the fused kernels round at other points (Inductor computes
    bfloat16 elementwise work in float32 and rounds once per kernel), so they differ by
    bfloat16 roundings: at most ``u_bf16``
    relative on the summed loss, an allowance, not a bound (measured: 0.008 ``u_bf16``;
    float32 gave equal losses). Gradients are compared relative to their largest entry,
    with 4 times the allowance (measured: 0.07 of it in float32, up to 1.8 ``u_bf16``
    in bfloat16). Same noise (seed) for both."""
    model, guide, batches = tiny_problem("sparse", sizes=(120, 77))  # 77: a short last batch
    loss_fn = make_elbo("trace")(model, guide)
    compiled = compile_decoder(model.decoder, precision)
    for batch in batches:
        results = []
        for forward in (None, compiled):
            loss_fn.zero_grad()
            pyro.set_rng_seed(3)
            with _swapped_forward(model.decoder, forward), training_precision(precision):
                loss = loss_fn(batch)
            loss.backward()
            results.append((loss.item(), {name: p.grad.clone() for name, p in
                                          model.decoder.named_parameters()}))
        (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
        assert compiled_loss == pytest.approx(eager_loss, rel=tolerance)
        for name, grad in eager_grads.items():
            scale = grad.abs().max().item()
            assert (compiled_grads[name] - grad).abs().max().item() <= tolerance * 4 * scale, name
        # and the generated kernels did run: their roundings show somewhere
        assert any(not torch.equal(compiled_grads[name], grad)
                   for name, grad in eager_grads.items())


@needs_compiler
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_training_steps_reuse_the_graph_compiled_before_training(precision):
    """compile_decoder compiles before the first step. Were its probe's graph one the
    steps cannot use (guarded on inputs that differ from theirs), the first step would
    compile again, late and counted as training time. With torch's caches emptied and a
    recompilation made an error, the fit passes only if every step, the shorter last
    batch included, runs the probe's graph."""
    torch._dynamo.reset()
    config = small_config(**{"train.compile": True, "train.epochs": 2,
                             "train.precision": precision})
    with torch._dynamo.config.patch(error_on_recompile=True):
        fitted = fit(config, progress=False)
    assert fitted.metrics["fit"]["num_fit_ratings"] % config["train.batch_size"] > 1


@needs_compiler
def test_a_compiled_fit_repeats_exactly_and_stays_near_the_eager_fit():
    config = small_config(**{"train.compile": True, "train.epochs": 3})
    first, second = fit(config, progress=False), fit(config, progress=False)
    assert first.metrics["fit"]["compiled"] is True
    for key, value in first.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[key], value, rtol=0, atol=0)
    assert first.metrics["test"] == second.metrics["test"]
    # after training the decoder is the plain module again: prediction ran eager
    assert "forward" not in first.model.decoder.__dict__
    eager = fit(config.replace(**{"train.compile": False}), progress=False)
    assert eager.metrics["fit"]["compiled"] is False
    # Roundings that differ in the last bits (float32, u = 6e-8) over three epochs of
    # steps move the trajectory a little, not bit for bit; measured: RMSE 1.3e-8
    # relative; 1e-5 leaves room for growth along another machine's trajectory.
    assert first.metrics["test"]["rmse"] == pytest.approx(eager.metrics["test"]["rmse"],
                                                          rel=1e-5)


def test_compile_without_a_compiler_is_a_clear_error(monkeypatch):
    import deepfactor.train as train

    monkeypatch.setattr(train, "cxx_compiler", lambda: None)
    config = small_config(**{"train.compile": True, "train.epochs": 1})
    with pytest.raises(ConfigError, match="train.compile = true needs a C\\+\\+ compiler"):
        fit(config, progress=False)


def test_an_empty_cxx_is_no_compiler(monkeypatch):
    # torch reads $CXX as set, so an empty one would fail inside Inductor: refuse it first
    monkeypatch.setenv("CXX", "")
    assert cxx_compiler() is None


@pytest.mark.skipif(shutil.which("false") is None, reason="needs the `false` program")
def test_a_broken_compiler_stops_the_cli_before_an_earlier_run_is_touched(tmp_path):
    """A compiler that exists but fails: one clean error line, exit 2, and the run that
    --overwrite would replace is left whole (the compilation precedes any write)."""
    out, config = tmp_path / "run", str(REPO / "models" / "gaussian.toml")
    assert run("fit", config, "--out", str(out), "--quiet", *SMALL).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    env = {**os.environ, "CXX": shutil.which("false"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # nothing cached
    failed = subprocess.run([sys.executable, "-m", "deepfactor", "fit", config, "--out",
                             str(out), "--overwrite", "--quiet", *SMALL, "--set",
                             "train.compile=true"], capture_output=True, text=True, env=env)
    assert failed.returncode == 2, failed.stderr
    assert "train.compile = true: torch.compile failed on the decoder" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
