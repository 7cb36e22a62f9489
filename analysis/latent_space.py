"""The latent space of movies: does a 2-D projection of their posteriors sort them by genre?

Question
    The model never sees a genre. If its movie latents capture taste, movies of one
    genre should sit together. We project the posterior means of the movies' *active*
    latent dimensions (those that have not collapsed to the prior) onto their first two
    principal components and colour each movie by its genre from ``u.item``.
Data and split
    MovieLens 100K u1.base (``--split``), genres from ``u.item`` and ``u.genre``
    (:func:`deepfactor.data.readers.read_movie_genres`); movies with at least
    ``--min-ratings`` training ratings. ``--quick``: the built-in synthetic data, where
    the "genre" is the sign of the true first latent coordinate (the simulation keeps
    the truth), seconds.
Model
    ``models/gaussian.toml`` fitted by :func:`deepfactor.fit`; the posterior mean of
    ``z_movie`` from the movie encoder reading u1.base.
Outputs (under ``--out``)
    ``latent_space.png`` and ``genres.csv``/``.md``: per genre, its number of movies,
    its mean on each component and the standardized difference
    ``(mean in genre - mean outside) / pooled sd`` on each.
Simplified
    A movie with several genres is coloured by the first of :data:`SHOWN` it has (the
    table uses every flag). PCA is linear and ignores the posterior sds. With fewer than
    two active dimensions the projection is topped up with the dimensions of largest KL.
References
    Koren, Bell & Volinsky (2009), fig. 3 (movies in a 2-D factor space);
    the MovieLens 100K README for the genre fields.

Run: ``python analysis/latent_space.py [--quick] [--out runs/latent_space]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick", "--out", "out"]

import _common  # noqa: E402  (sets the Agg backend and OMP policy first)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from deepfactor.data.datasets import resolve_dataset  # noqa: E402
from deepfactor.data.readers import read_movie_genres  # noqa: E402

#: Genres given a colour, most distinctive first (a movie takes the first it has).
SHOWN = ("Documentary", "Horror", "Children's", "Film-Noir", "Sci-Fi", "Romance",
         "Action", "Comedy", "Drama")


def principal_components(x: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Scores on the first ``k`` components of centred ``x`` (shape (n, d)), and their
    share of the variance."""
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:k].T, (s[:k] ** 2) / np.sum(s**2)  # (n, k), (k,)


def genre_flags(config, data, fitted) -> tuple[list[str], np.ndarray]:
    """Genre names and flags aligned with ``fitted.movie_ids``: (G,), (num_movies, G)."""
    if data.truth is not None:  # synthetic: the sign of the true first coordinate
        z0 = data.truth.z_movie[:, 0].numpy()
        return ["true z_0 > 0", "true z_0 <= 0"], np.stack([z0 > 0, z0 <= 0], 1).astype(int)
    folder = resolve_dataset(config["data.dataset"], config["data.path"] or None)
    ids, genres, flags = read_movie_genres(folder / "u.item")
    row = {raw: k for k, raw in enumerate(ids)}
    aligned = np.zeros((len(fitted.movie_ids), len(genres)), dtype=int)
    for index, raw in enumerate(fitted.movie_ids.raw):
        if raw in row:
            aligned[index] = flags[row[raw]]
    return genres, aligned


def genre_table(scores: np.ndarray, genres: list[str], flags: np.ndarray) -> pd.DataFrame:
    rows = []
    for g, name in enumerate(genres):
        inside = flags[:, g] == 1
        if inside.sum() < 2 or (~inside).sum() < 2:
            continue
        row = {"genre": name, "movies": int(inside.sum())}
        for c in range(scores.shape[1]):
            a, b = scores[inside, c], scores[~inside, c]
            pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2) or 1.0
            row[f"mean_pc{c + 1}"] = float(a.mean())
            row[f"std_diff_pc{c + 1}"] = float((a.mean() - b.mean()) / pooled)
        rows.append(row)
    return pd.DataFrame(rows)


def colour_of(genres: list[str], flags: np.ndarray) -> np.ndarray:
    """The shown genre of each movie (its first in SHOWN, else 'other'); shape (n,)."""
    shown = [g for g in SHOWN if g in genres] or genres
    label = np.full(len(flags), "other", dtype=object)
    for g in reversed(shown):  # earlier entries of SHOWN win
        label[flags[:, genres.index(g)] == 1] = g
    return label


def main() -> None:
    p = _common.parser(__doc__, "runs/latent_space")
    p.add_argument("--split", default="u1")
    p.add_argument("--min-ratings", type=int, default=20)
    args = p.parse_args()
    _common.quiet_logs()
    out = _common.out_dir(args)
    config, data, fitted, seconds = _common.fit_on_split(args)
    genres, flags = genre_flags(config, data, fitted)
    keep = fitted.encoder_ratings.movie_counts() >= (1 if args.quick else args.min_ratings)
    dims = _common.active_dimensions(fitted, at_least=2)
    scores, share = principal_components(fitted.posterior.z_movie_loc.numpy()[keep][:, dims])
    flags = flags[keep]

    import matplotlib.pyplot as plt

    labels = colour_of(genres, flags)
    fig, ax = plt.subplots(figsize=(7, 6))
    for name in ["other", *[g for g in (*SHOWN, *genres) if g in set(labels)]]:
        if name not in set(labels):
            continue
        at = labels == name
        ax.scatter(scores[at, 0], scores[at, 1], s=10, alpha=0.3 if name == "other" else 0.8,
                   color="lightgray" if name == "other" else None, label=f"{name} ({at.sum()})")
        labels[at] = ""  # each movie plotted once
    ax.set(xlabel=f"PC1 ({share[0]:.0%} of variance)", ylabel=f"PC2 ({share[1]:.0%})",
           title=f"Movie posterior means, {len(dims)} dimensions projected "
                 f"({keep.sum()} movies)")
    ax.legend(fontsize=7, markerscale=2)
    _common.save_figure(fig, out, "latent_space.png")
    table = genre_table(scores, genres, flags)
    _common.save_table(table, out, "genres")
    print(f"fit {seconds:.1f} s; dimensions {dims.tolist()}; PC shares {np.round(share, 3)}")


if __name__ == "__main__":
    main()
