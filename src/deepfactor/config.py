"""The experiment configuration: one table of keys, each with its default and its check.

A configuration is a TOML file with the sections ``[data]``, ``[model]``,
``[guide]``, ``[train]`` and ``[eval]``; any key left out takes the default in
:data:`KEYS`. ``--set section.key=value`` on the command line overrides one key, the
value read as TOML (``--set model.latent_dim=50``, ``--set data.split='"u2"'``; a bare
word that is not valid TOML is taken as a string). Every problem is a
:class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .order import BATCH_ORDERS

import tomli_w

__all__ = ["Config", "ConfigError", "KEYS", "check_value", "load_config"]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says where and why."""


@dataclass(frozen=True)
class Key:
    default: Any
    kind: type | tuple[type, ...]
    check: Callable[[Any], bool] | None
    doc: str
    expect: str = ""  # the check in words, for the error message


def _choice(*options):
    return lambda v: v in options, "one of " + ", ".join(repr(o) for o in options)


def _positive_ints(v):
    return all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)


def _key(default, kind, doc, check=None, expect=""):
    if isinstance(check, tuple):
        check, expect = check
    return Key(default, kind, check, doc, expect)


_pos = (lambda v: v > 0, "> 0")
_nonneg = (lambda v: v >= 0, ">= 0")
_fraction = (lambda v: 0 <= v < 1, "in [0, 1)")

#: Every configuration key: default, type, check and meaning.
KEYS: dict[str, Key] = {
    # data
    "data.dataset": _key("ml-100k", str, "named dataset, 'file' (data.path is a rating "
                         "file read with data.columns) or 'synthetic'",
                         _choice("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m",
                                 "ml-latest-small", "file", "synthetic")),
    "data.path": _key("", str, "folder with the dataset's files ('' = search; see README); "
                      "for dataset 'file', the rating file"),
    "data.columns": _key(["user", "movie", "rating", "timestamp"], list,
                         "dataset 'file': role of each field in file order (user, movie, "
                         "rating once each, timestamp at most once, any other name is "
                         "skipped)",
                         (lambda v: all(isinstance(x, str) for x in v)
                          and all(v.count(r) == 1 for r in ("user", "movie", "rating"))
                          and v.count("timestamp") <= 1,
                          "a list of strings naming 'user', 'movie' and 'rating' once "
                          "each and 'timestamp' at most once")),
    "data.separator": _key(",", str, "dataset 'file': field separator (one character, "
                           "or one repeated, e.g. '::')",
                           (lambda v: bool(v) and len(set(v)) == 1 and "\n" not in v
                            and "\r" not in v,
                            "one character, or one character repeated")),
    "data.header": _key(True, bool, "dataset 'file': line 1 names the columns"),
    "data.encoding": _key("utf-8", str, "dataset 'file': text encoding"),
    "data.split": _key("u1", str, "u1..u5, ua, ub (MovieLens files) or 'random'",
                       _choice("u1", "u2", "u3", "u4", "u5", "ua", "ub", "random")),
    "data.test_fraction": _key(0.2, float, "test share of a 'random' split", _fraction),
    "data.validation_fraction": _key(0.05, float,
                                     "share of each user's training ratings carved out "
                                     "for early stopping", _fraction),
    "data.duplicates": _key("error", str, "a (user, movie) pair repeated in a file: "
                            "'error' (listing the lines) or 'latest' (keep the rating "
                            "with the largest timestamp)", _choice("error", "latest")),
    "data.rating_scale": _key([], list, "[min, max] every file rating must lie in "
                              "([] = no check; not applied to synthetic data)",
                              (lambda v: not v or (
                                  len(v) == 2 and all(
                                      isinstance(x, int | float)
                                      and not isinstance(x, bool) for x in v)
                                  and v[0] < v[1]),
                               "[] or [min, max] with numbers min < max")),
    "data.implicit": _key(False, bool, "fit which movies each user rated, not the "
                          "ratings: a 0/1 for every cell of rated movies x rated users "
                          "(deepfactor.implicit; needs model.likelihood = 'bernoulli' and "
                          "model.binary_ratings = true)"),
    "data.implicit_negatives": _key(0.0, float, "data.implicit: zeros drawn per positive "
                                    "(0 = every cell)", _nonneg),
    "data.synthetic_movies": _key(1682, int, "synthetic: number of movies", _pos),
    "data.synthetic_users": _key(943, int, "synthetic: number of users", _pos),
    "data.synthetic_ratings": _key(100_000, int, "synthetic: number of ratings", _pos),
    # model
    "model.likelihood": _key("normal", str, "observation family",
                             _choice("normal", "poisson", "bernoulli", "ordinal")),
    "model.like_threshold": _key(3.0, float, "bernoulli: a rating above this is a like"),
    "model.binary_ratings": _key(False, bool, "bernoulli: the file holds 0/1 values "
                                 "already (no threshold; any other value is an error)"),
    "model.ordinal_levels": _key([1, 2, 3, 4, 5], list, "ordinal: the rating values, "
                                 "in increasing order (every rating must be one of them)",
                                 (lambda v: len(v) >= 2 and all(
                                     isinstance(x, int | float) and not isinstance(x, bool)
                                     for x in v) and all(a < b for a, b in zip(v, v[1:])),
                                  "at least two strictly increasing numbers")),
    "model.latent_dim": _key(20, int, "D, dimension of z_movie and z_user", _pos),
    "model.decoder_hidden": _key([40], list, "hidden widths of the decoder",
                                 (_positive_ints, "a list of positive integers")),
    "model.decoder_activation": _key("tanh", str, "decoder nonlinearity",
                                     _choice("tanh", "relu", "elu")),
    "model.decoder_inputs": _key("product", str, "what the decoder reads",
                                 _choice("product", "product+latents")),
    "model.bias_latent": _key(False, bool, "one extra latent coordinate added to eta"),
    "model.pair_scale": _key(False, bool, "normal, ordinal: the decoder also gives each "
                             "pair a factor on the likelihood's spread (sigma, or the "
                             "cut points' logistic scale)"),
    # guide
    "guide.encoder_hidden": _key([128], list, "hidden widths of each encoder",
                                 (lambda v: len(v) > 0 and _positive_ints(v),
                                  "a non-empty list of positive integers")),
    "guide.max_inputs": _key(100, int, "K: in training, an entity with more ratings is "
                             "encoded from K random ones (rescaled; 0 = all)", _nonneg),
    "guide.inputs": _key("sketch", str, "what an encoder reads: 'sketch' (its rating "
                         "row projected once onto a fixed basis of sketch_dim directions) "
                         "or 'sparse' (the row itself, through a learned weight per "
                         "column)", _choice("sketch", "sparse")),
    "guide.sketch_dim": _key(64, int, "d, directions of the sketch basis "
                             "(guide.inputs = 'sketch')", _pos),
    # train
    "train.elbo": _key("trace", str, "'trace' (Trace_ELBO) or 'meanfield' "
                       "(TraceMeanField_ELBO, analytic KL)", _choice("trace", "meanfield")),
    "train.lr": _key(0.01, float, "Adam learning rate at the first epoch", _pos),
    "train.lr_final": _key(0.0, float, "learning rate reached at the last epoch, decaying "
                           "geometrically (0 = constant)", _nonneg),
    "train.batch_size": _key(20_000, int, "ratings per minibatch", _pos),
    "train.batch_order": _key("blocks", str, "which ratings share a batch: 'blocks' (a "
                              "group of movies x a run of shuffled users: fewer entities "
                              "to encode per step) or 'random'; a dataset of at most 16 "
                              "batches is always random (deepfactor.order)",
                              _choice(*BATCH_ORDERS)),
    "train.movie_groups": _key(0, int, "batch_order = 'blocks': groups the movies are "
                               "dealt into (0 = the number whose batches touch the fewest "
                               "entities, measured; more groups than movies are capped at "
                               "the movies)",
                               (lambda v: 0 <= v <= 2**16, "between 0 and 65536")),
    "train.epochs": _key(200, int, "maximum number of epochs", _pos),
    "train.kl_warmup_epochs": _key(0, int, "epochs over which the KL weight rises to "
                                   "train.kl_weight",
                                   _nonneg),
    "train.kl_warmup_start": _key(0.1, float, "KL weight at the first epoch",
                                  (lambda v: 0 < v <= 1, "in (0, 1]")),
    "train.kl_weight": _key(1.0, float, "KL weight after the warm-up: 1 trains on the true "
                            "ELBO; below 1 on a tempered bound (a change of objective)",
                            (lambda v: 0 < v <= 1, "in (0, 1]")),
    "train.patience": _key(20, int, "epochs without validation gain before stopping "
                           "(0 = never stop early)", _nonneg),
    "train.monitor": _key("lpd", str, "validation score for early stopping",
                          _choice("lpd", "rmse")),
    "train.time_limit": _key(0.0, float, "stop after this many seconds (0 = no limit)",
                             _nonneg),
    "train.checkpoint_every": _key(0, int, "write a resumable checkpoint every this many "
                                   "epochs (0 = only at the end and on SIGINT/SIGTERM)",
                                   _nonneg),
    "train.precision": _key("float32", str, "arithmetic of the training steps' hidden "
                            "layers: 'float32', or 'bfloat16' (mixed precision under "
                            "torch.autocast; parameters, likelihood, KL and every "
                            "evaluation stay float32; faster only on CPUs with native "
                            "bfloat16)", _choice("float32", "bfloat16")),
    "train.compile": _key(False, bool, "compile the decoder of the training steps with "
                          "torch.compile (needs a working C++ compiler; compiled once "
                          "before training; pays most with bfloat16 at large batches)"),
    "train.seed": _key(0, int, "seed of every random draw"),
    "train.num_threads": _key(0, int, "torch threads (0 = torch's default)", _nonneg),
    # eval
    "eval.num_samples": _key(100, int, "posterior draws for predictions and metrics", _pos),
}

SECTIONS = sorted({k.split(".")[0] for k in KEYS})


#: Keys whose default changed, with the value runs saved before the key existed had:
#: ``guide.inputs`` arrived with sketched inputs as its default (earlier runs read
#: sparse rows), ``train.batch_order`` with blocked batches (earlier runs, on more
#: than 16 batches of ratings, took random ones).
EARLIER_DEFAULTS = {"guide.inputs": "sparse", "train.batch_order": "random"}


class Config(Mapping):
    """A validated configuration: a read-only mapping from dotted key to value.

    Build it with :func:`load_config` or :meth:`Config.from_dict`; attribute access by
    section works too (``config["model.latent_dim"]``).
    """

    def __init__(self, values: Mapping[str, Any], source: str = "<config>"):
        self._values = dict(values)
        self.source = source

    @classmethod
    def from_dict(cls, nested: Mapping[str, Any] | None = None, *, source: str = "<config>",
                  overrides: Iterable[str] = ()) -> Config:
        """Validate a nested ``{section: {key: value}}`` table plus ``key=value`` overrides."""
        values = {name: key.default for name, key in KEYS.items()}
        values.update(_flatten(nested or {}, source))
        overridden = set()
        for item in overrides:
            name, value = _parse_override(item)
            _check_name(name, "--set")
            values[name] = value
            overridden.add(name)
        for name, value in values.items():
            values[name] = _validate(name, value, "--set" if name in overridden else source)
        _check_together(values, source, overridden)
        return cls(values, source)

    @classmethod
    def from_saved(cls, nested: Mapping[str, Any], *, source: str) -> Config:
        """A configuration saved with a run: a key it lacks whose default has changed
        since takes the value it had when the run was made (:data:`EARLIER_DEFAULTS`)."""
        completed = {section: dict(table) if isinstance(table, Mapping) else table
                     for section, table in nested.items()}
        for name, old in EARLIER_DEFAULTS.items():
            section, key = name.split(".", 1)
            table = completed.setdefault(section, {})
            if isinstance(table, dict):
                table.setdefault(key, old)
        return cls.from_dict(completed, source=source)

    def replace(self, **dotted: Any) -> Config:
        """A copy with keys replaced; pass dotted names via ``**{"train.seed": 3}``."""
        nested: dict[str, dict[str, Any]] = {}
        for name, value in {**self._values, **dotted}.items():
            section, key = name.split(".", 1)
            nested.setdefault(section, {})[key] = value
        return Config.from_dict(nested, source=self.source)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Config({self.source!r}, {len(self)} keys)"

    def nested(self) -> dict[str, dict[str, Any]]:
        """The configuration as ``{section: {key: value}}``, as written to TOML."""
        out: dict[str, dict[str, Any]] = {}
        for name, value in self._values.items():
            section, key = name.split(".", 1)
            out.setdefault(section, {})[key] = value
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.nested())


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
    """Read and validate a TOML configuration file, then apply ``key=value`` overrides."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    try:
        nested = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return Config.from_dict(nested, source=str(path), overrides=overrides)


def _flatten(nested: Mapping[str, Any], source: str) -> dict[str, Any]:
    flat = {}
    for section, table in nested.items():
        if not isinstance(table, Mapping):
            _check_name(section, source)  # a bare top-level key: name it
            raise ConfigError(f"{source}: '{section}' must be a [section] table")
        for key, value in table.items():
            name = f"{section}.{key}"
            _check_name(name, source)
            flat[name] = value
    return flat


def _check_name(name: str, source: str) -> None:
    if name not in KEYS:
        close = difflib.get_close_matches(name, KEYS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{source}: unknown key '{name}'{hint}")


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set: expected key=value, got {item!r}")
    name, text = (s.strip() for s in item.split("=", 1))
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word such as u2 or poisson
    return name, value


def check_value(name: str, value: Any, source: str) -> Any:
    """``value`` as key ``name`` holds it (an int for a float key becomes a float).

    Raises
    ------
    ConfigError
        Naming ``source`` (the file, or the option that gave the value) and the key.
    """
    return _validate(name, value, source)


def _check_together(values: Mapping[str, Any], source: str,
                    overridden: Iterable[str] = ()) -> None:
    """Checks that involve more than one key; blamed on ``--set`` if it gave one of them."""
    def blame(*names: str) -> str:
        """Where the conflict comes from: the file, or ``--set`` on it."""
        return f"--set (on {source})" if set(names) & set(overridden) else source

    implicit = ("data.implicit", "model.likelihood", "model.binary_ratings")
    if values["data.implicit"] and (values["model.likelihood"] != "bernoulli"
                                    or not values["model.binary_ratings"]):
        raise ConfigError(f"{blame(*implicit)}: 'data.implicit' = true observes 0/1 cells: "
                          "it needs model.likelihood = 'bernoulli' and "
                          "model.binary_ratings = true")
    if values["data.implicit_negatives"] and not values["data.implicit"]:
        raise ConfigError(f"{blame('data.implicit_negatives', 'data.implicit')}: "
                          f"'data.implicit_negatives' = {values['data.implicit_negatives']:g} "
                          "draws zeros for an implicit fit, but 'data.implicit' is false; set "
                          "it to 0 or turn data.implicit on")
    if values["model.pair_scale"] and values["model.likelihood"] not in ("normal", "ordinal"):
        raise ConfigError(f"{blame('model.pair_scale', 'model.likelihood')}: "
                          f"'model.pair_scale' = true needs a likelihood with a spread to "
                          f"scale (normal or ordinal); {values['model.likelihood']!r} has "
                          "none")
    warm_up = ("train.kl_warmup_epochs", "train.kl_warmup_start", "train.kl_weight")
    if values["train.kl_warmup_epochs"] and \
            values["train.kl_warmup_start"] > values["train.kl_weight"]:
        raise ConfigError(f"{blame(*warm_up)}: 'train.kl_warmup_start' "
                          f"({values['train.kl_warmup_start']:g}) is above 'train.kl_weight' "
                          f"({values['train.kl_weight']:g}): a warm-up rises to the weight; "
                          "lower train.kl_warmup_start, or set train.kl_warmup_epochs = 0")


def _validate(name: str, value: Any, source: str) -> Any:
    key = KEYS[name]
    if key.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, key.kind) or (key.kind is int and isinstance(value, bool)):
        raise ConfigError(
            f"{source}: '{name}' must be {key.kind.__name__}, got {value!r} ({key.doc})"
        )
    if key.check is not None and not key.check(value):
        raise ConfigError(f"{source}: '{name}' must be {key.expect}, got {value!r}")
    return value
