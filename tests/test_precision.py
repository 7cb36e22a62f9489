"""train.precision = "bfloat16": mixed precision inside the training steps, nothing else."""

import contextlib

import pyro
import pytest
import torch

from deepfactor.config import ConfigError
from deepfactor.fitting import fit
from deepfactor.train import make_elbo, training_precision

from conftest import small_config, tiny_problem

#: bfloat16 keeps 8 significant bits: unit roundoff 2^-8 (float32: 2^-24).
U_BF16 = 2.0**-8


def _problem(inputs="sketch"):
    model, guide, (batch,) = tiny_problem(inputs)
    return model, guide, batch


def test_float32_adds_no_context_and_unknown_precisions_are_refused():
    assert isinstance(training_precision("float32"), contextlib.nullcontext)
    with pytest.raises(ValueError, match="'float32' or 'bfloat16', got 'float16'"):
        training_precision("float16")
    with pytest.raises(ConfigError, match="train.precision"):
        small_config(**{"train.precision": "half"})


@pytest.mark.parametrize("inputs", ["sketch", "sparse"])
def test_hidden_layers_run_in_bfloat16_and_every_output_is_float32(inputs):
    model, guide, batch = _problem(inputs)
    seen = {}
    hooks = [module.register_forward_hook(
        lambda m, args, out, name=name: seen.__setitem__(name, out.dtype))
        for name, module in [("decoder hidden", model.decoder.net[0]),
                             ("encoder hidden", guide.movie_encoder.body[0])]]
    with training_precision("bfloat16"):
        loc, scale = guide.movie_encoder(batch.movie_bag)
        z = torch.zeros(len(batch), model.total_dim)
        eta = model.decoder(z, z)
    for hook in hooks:
        hook.remove()
    assert seen == {"decoder hidden": torch.bfloat16, "encoder hidden": torch.bfloat16}
    assert loc.dtype == scale.dtype == eta.dtype == torch.float32


@pytest.mark.parametrize("inputs", ["sketch", "sparse"])
def test_a_bfloat16_loss_is_the_float32_loss_up_to_bfloat16_rounding(inputs):
    """Same parameters, same noise: the two losses differ by rounding alone.

    Each rating's term passes a few bfloat16 roundings (inputs, weights, products and
    the activation, each off by at most ``u = 2^-8`` relative), so it is off by a few
    ``u`` of its size at most. The log-likelihood terms, all of one sign, dominate the
    sum, and their rounding errors have both signs, so over the batch's 120 ratings
    they average down by about ``sqrt(120) ~ 11``: the sum should be off by well under
    ``u / 2`` (measured: 0.01-0.05 ``u``). A likelihood or KL computed in bfloat16 would
    be off by about ``u`` itself. It must not be zero either: that would mean the
    context changed nothing."""
    model, guide, batch = _problem(inputs)
    loss_fn = make_elbo("trace")(model, guide)
    losses = {}
    for precision in ("float32", "bfloat16"):
        pyro.set_rng_seed(7)
        with torch.no_grad(), training_precision(precision):
            losses[precision] = loss_fn(batch).item()
    relative = abs(losses["bfloat16"] - losses["float32"]) / abs(losses["float32"])
    assert 0 < relative < U_BF16 / 2


@pytest.mark.parametrize("inputs", ["sketch", "sparse"])
def test_every_sample_site_gradient_and_optimizer_state_stays_float32(inputs):
    from pyro import poutine

    from deepfactor.optim import RowSparseAdam

    model, guide, batch = _problem(inputs)
    with training_precision("bfloat16"):
        guide_trace = poutine.trace(guide).get_trace(batch)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
        for trace in (guide_trace, model_trace):
            for name in ("z_movie", "z_user", "rating"):
                site = trace.nodes.get(name)
                if site is not None:  # the guide has no rating site
                    assert site["value"].dtype == torch.float32, name
                    assert site["fn"].log_prob(site["value"]).dtype == torch.float32, name
        assert {"z_movie", "z_user", "rating"} <= set(model_trace.nodes)
        loss_fn = make_elbo("trace")(model, guide)
        optimizer = RowSparseAdam(loss_fn.parameters(), lr=0.01)
        loss = loss_fn(batch)
    assert loss.dtype == torch.float32
    loss.backward()
    optimizer.step()
    for parameter in loss_fn.parameters():
        assert parameter.grad.dtype == torch.float32
        state = optimizer.state[parameter]
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32


def test_a_bfloat16_fit_repeats_exactly_and_differs_from_float32():
    config = small_config(**{"train.precision": "bfloat16", "train.epochs": 3})
    first, second = fit(config, progress=False), fit(config, progress=False)
    assert first.metrics["fit"]["precision"] == "bfloat16"
    for key, value in first.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[key], value, rtol=0, atol=0)
    assert first.metrics["test"] == second.metrics["test"]
    # and it is a different computation from float32's, not a relabelled one
    plain = fit(config.replace(**{"train.precision": "float32"}), progress=False)
    assert plain.metrics["test"] != first.metrics["test"]


def test_bfloat16_without_native_support_is_warned_about(monkeypatch, caplog):
    import deepfactor.train as train

    config = small_config(**{"train.precision": "bfloat16", "train.epochs": 1})
    monkeypatch.setattr(train, "native_bfloat16", lambda: False)
    with caplog.at_level("WARNING", logger="deepfactor.train"):
        fit(config, progress=False)
    assert "without native bfloat16" in caplog.text
    caplog.clear()
    monkeypatch.setattr(train, "native_bfloat16", lambda: None)  # unknown: no warning
    with caplog.at_level("WARNING", logger="deepfactor.train"):
        fit(config, progress=False)
    assert "without native bfloat16" not in caplog.text
