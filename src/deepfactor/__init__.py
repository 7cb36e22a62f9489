"""deepfactor: Bayesian deep matrix factorization with Pyro.

Public API::

    from deepfactor import fit, load, load_config, Config, FittedModel

    config = load_config("models/gaussian.toml", ["model.latent_dim=50"])
    fitted = fit(config)                 # trains, then scores the held-out split
    fitted.metrics["test"]["rmse"]
    fitted.predict(users=[196], movies=[242])   # DataFrame: mean, sd, q05, q95

The names are imported on first use, so that ``import deepfactor.cli`` can set
torch's threading environment before torch itself is imported.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "fit": "deepfactor.fitting",
    "evaluate": "deepfactor.fitting",
    "load": "deepfactor.fitted",
    "FittedModel": "deepfactor.fitted",
    "Config": "deepfactor.config",
    "ConfigError": "deepfactor.config",
    "load_config": "deepfactor.config",
    "fold_in": "deepfactor.foldin",
    "FoldIn": "deepfactor.foldin",
    "complete": "deepfactor.recommend",
    "evaluate_ranking": "deepfactor.ranking",
    "evaluate_rankings": "deepfactor.ranking",
    "ranking_metrics": "deepfactor.ranking",
    "stratified_split": "deepfactor.ranking",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'deepfactor' has no attribute {name!r}")


def __dir__():
    return __all__
