"""What the teaching scripts share: arguments, the quick setting, fitting, writing outputs.

Not a script (tests/test_analysis.py skips modules whose name starts with ``_``). Each
script adds its own arguments to :func:`parser` and calls :func:`config_for`,
:func:`fit_quietly`, :func:`save_figure` and :func:`save_table`.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from deepfactor.checkpoint import atomic_write, write_text  # noqa: E402
from deepfactor.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LIKELIHOODS = ("normal", "poisson", "bernoulli")
CONFIG_OF = {"normal": "gaussian", "poisson": "poisson", "bernoulli": "bernoulli",
             "ordinal": "ordinal", "implicit": "implicit"}

#: A synthetic problem fitted in about a second: 100 movies x 80 users, so that the
#: 2017 block (movies 4-20 x users 6-16) exists.
QUICK = ["data.dataset=synthetic", "data.split=random", "data.synthetic_movies=100",
         "data.synthetic_users=80", "data.synthetic_ratings=3000", "data.test_fraction=0.2",
         "model.latent_dim=4", "model.decoder_hidden=[16]", "guide.encoder_hidden=[32]",
         "train.batch_size=500", "train.epochs=6", "train.kl_warmup_epochs=3",
         "eval.num_samples=20"]


def parser(doc: str, default_out: str) -> argparse.ArgumentParser:
    """The arguments every teaching script takes; the script adds its own."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny synthetic data, seconds (what the test runs)")
    p.add_argument("--out", default=default_out, help="folder for figures and tables")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the config's; 6 with --quick)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any further config override, as for `deepfactor fit`")
    return p


def config_for(likelihood: str, args, extra: list[str] = ()):
    """The shipped config of ``likelihood`` with the script's overrides applied."""
    overrides = [f"train.seed={args.seed}", f"train.num_threads={args.threads}"]
    if args.quick:
        overrides += QUICK
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    return load_config(REPO / "models" / f"{CONFIG_OF[likelihood]}.toml",
                       [*overrides, *extra, *args.set])


def fit_quietly(config, **options):
    """``deepfactor.fit`` without a progress bar; returns (fitted, seconds)."""
    from deepfactor.fitting import fit

    start = time.perf_counter()
    with warnings.catch_warnings():
        # the collapse warning is what several scripts measure, not a problem
        warnings.simplefilter("ignore", UserWarning)
        fitted = fit(config, progress=False, **options)
    return fitted, time.perf_counter() - start


def fit_on_split(args, likelihood: str = "normal"):
    """Config, data and a quiet fit on ``--split`` (synthetic data with ``--quick``).

    Returns (config, data, fitted, seconds).
    """
    from deepfactor.fitting import load_data

    config = config_for(likelihood, args, [] if args.quick else [f"data.split={args.split}"])
    data = load_data(config)
    fitted, seconds = fit_quietly(config, data=data)
    return config, data, fitted, seconds


def out_dir(args) -> Path:
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig, folder: Path, name: str) -> Path:
    """Write ``fig`` as PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    path = folder / name
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    print(f"wrote {path}")
    return path


def save_table(frame: pd.DataFrame, folder: Path, stem: str, show: bool = True) -> None:
    """Write ``frame`` as ``stem.csv`` and ``stem.md``; print the markdown if ``show``."""
    write_text(folder / f"{stem}.csv", frame.to_csv(index=False))
    markdown = markdown_table(frame)
    write_text(folder / f"{stem}.md", markdown + "\n")
    print(markdown if show else f"wrote {folder / stem}.csv")


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table of ``frame`` (floats to 4 decimals), no extra package."""
    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "" if np.isnan(value) else f"{value:.4f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING)


def active_dimensions(fitted, at_least: int = 1) -> np.ndarray:
    """Latent dimensions active for both movies and users (mean KL above 0.05 nats).

    Topped up with the dimensions of largest movie KL to ``at_least`` when fewer are
    active (a projection needs two).
    """
    from deepfactor.check_report import latent_collapse

    train = fitted.encoder_ratings
    d = fitted.config["model.latent_dim"]
    c = latent_collapse(fitted.posterior, train.movie_counts(), train.user_counts(), d,
                        warn=False)
    kl_movie, kl_user = np.asarray(c["kl_movie"][:d]), np.asarray(c["kl_user"][:d])
    on = list(np.flatnonzero((kl_movie > c["threshold_nats"]) & (kl_user > c["threshold_nats"])))
    for k in np.argsort(-kl_movie):
        if len(on) >= at_least:
            break
        if k not in on:
            on.append(int(k))
    return np.sort(np.asarray(on, dtype=int))


def binned_medians(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> pd.DataFrame:
    """Median and count of ``y`` in bins of ``x``: ``[edges[k], edges[k+1])``."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (x >= lo) & (x < hi)
        if inside.any():
            rows.append({"from": lo, "to": hi, "count": int(inside.sum()),
                         "median": float(np.median(y[inside]))})
    return pd.DataFrame(rows)
