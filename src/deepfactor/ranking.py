"""Ranking evaluation: Precision@k, Recall@k, nDCG@k and MAP, and the benchmark's split.

The metrics follow the definitions of Microsoft Recommenders
(``recommenders/evaluation/python_evaluation.py``), so our numbers sit beside the
numbers of its MovieLens benchmark. For user ``u`` with relevant test items ``R_u``
and top-``k`` list ``L_u`` (training items excluded), ``hit_u(r) = 1`` if the item at
rank ``r`` is in ``R_u``:

.. math::

    P@k = \\frac{|L_u \\cap R_u|}{k}, \\qquad
    R@k = \\frac{|L_u \\cap R_u|}{|R_u|}, \\qquad
    nDCG@k = \\frac{\\sum_{r \\le k} hit_u(r) / \\log(1 + r)}
                   {\\sum_{r \\le \\min(k, |R_u|)} 1 / \\log(1 + r)},

    AP_u = \\frac{1}{|R_u|} \\sum_{r \\le k} hit_u(r)\\, P@r \\quad (\\text{``map``}),
    \\qquad
    AP@k_u = \\frac{1}{\\min(k, |R_u|)} \\sum_{r \\le k} hit_u(r)\\, P@r
    \\quad (\\text{``map_at_k``}),

each averaged over the users that have at least one relevant test item (and a list).
``map`` is Recommenders' ``map`` (and the ``map_at_k`` of its older releases);
``map_at_k`` is its current ``map_at_k``.

Relevance: by default a test rating of at least 4 stars (``threshold=4``), the
convention of the issue and of Cornac's BiVAE comparison on ``u1``. The Recommenders
benchmark itself counts *every* test item of a user as relevant: ``threshold=None``.

:func:`stratified_split` is that benchmark's split, ``python_stratified_split(data,
ratio=0.75, seed=42)``: the same rows for ``u.data`` read in file order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .data.ratings import Ratings

if TYPE_CHECKING:
    from .fitted import FittedModel

__all__ = ["RANKING_KEYS", "evaluate_ranking", "evaluate_rankings", "ranking_metrics",
           "stratified_split"]

log = logging.getLogger(__name__)

#: Keys of :func:`ranking_metrics` (besides ``k``, ``threshold`` and ``num_users``).
RANKING_KEYS = ("precision_at_k", "recall_at_k", "ndcg_at_k", "map", "map_at_k")


def ranking_metrics(recommended: Mapping[object, Sequence[object]],
                    relevant: Mapping[object, Collection[object]],
                    k: int = 10) -> dict[str, float | int]:
    """Precision@k, Recall@k, nDCG@k and MAP of top-k lists against relevant items.

    Parameters
    ----------
    recommended : mapping of user to sequence of items
        Each user's list, best first (only its first ``k`` items count).
    relevant : mapping of user to collection of items
        Each user's relevant held-out items.
    k : int

    Returns
    -------
    dict
        ``k``, ``num_users`` (users with a list and at least one relevant item, over
        whom every metric is averaged) and the :data:`RANKING_KEYS`; the metrics
        are None when ``num_users`` is 0.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    discount = 1.0 / np.log1p(np.arange(1, k + 1))  # (k,): 1 / log(1 + rank)
    totals = dict.fromkeys(RANKING_KEYS, 0.0)
    num_users = 0
    for user, items in relevant.items():
        truth = set(items)
        if not truth or user not in recommended:
            continue
        num_users += 1
        hit = np.array([item in truth for item in list(recommended[user])[:k]], dtype=bool)
        hits = int(hit.sum())
        precision_at = np.cumsum(hit) / np.arange(1, len(hit) + 1)  # P@r for r = 1..len
        totals["precision_at_k"] += hits / k
        totals["recall_at_k"] += hits / len(truth)
        totals["ndcg_at_k"] += (discount[:len(hit)][hit].sum()
                                / discount[:min(k, len(truth))].sum())
        totals["map"] += precision_at[hit].sum() / len(truth)
        totals["map_at_k"] += precision_at[hit].sum() / min(k, len(truth))
    out: dict = {"k": k, "num_users": num_users}
    out.update({key: (float(value) / num_users if num_users else None)
                for key, value in totals.items()})
    return out


def evaluate_ranking(fitted: FittedModel | Sequence[FittedModel], test: Ratings, *,
                     k: int = 10, threshold: float | None = 4.0,
                     seen: Ratings | None = None, num_samples: int | None = None,
                     seed: int | None = None) -> dict:
    """Ranking metrics of ``fitted``'s top-``k`` lists on held-out ``test`` ratings.

    Each test user with at least one training rating (a pair of the fit's ``seen``, or
    of ``seen`` when given) gets the top-``k`` movies by posterior predictive mean among
    the movies with training ratings, less its own training movies (or its ``seen``
    pairs; :func:`~deepfactor.recommend.top_k_movies`).

    Parameters
    ----------
    fitted : FittedModel, or a sequence of them
        A sequence ranks by the predictive mean of the fits' equal-weight mixture
        (:func:`~deepfactor.recommend.top_k_movies`).
    test : Ratings
        Raw test ratings (stars, not likelihood targets); ids known to ``fitted``.
    k : int
    threshold : float or None
        A test rating ``>= threshold`` is relevant; None makes every test item relevant
        (the Microsoft Recommenders benchmark).
    seen : Ratings, optional
        The training pairs left out of each user's list (default: the fit's ``seen``,
        the ratings the encoders read, or for an implicit fit its positive cells).
    num_samples, seed : int, optional
        Posterior draws for the means, and their seed.

    Returns
    -------
    dict
        :func:`ranking_metrics`'s keys plus ``threshold`` and ``num_cold_users`` (test
        users without training ratings, left out as the benchmark leaves them out).
    """
    return evaluate_rankings(fitted, test, k=k, thresholds=(threshold,), seen=seen,
                             num_samples=num_samples, seed=seed)[0]


def evaluate_rankings(fitted: FittedModel | Sequence[FittedModel], test: Ratings, *,
                      k: int = 10, thresholds: Sequence[float | None] = (4.0, None),
                      seen: Ratings | None = None, num_samples: int | None = None,
                      seed: int | None = None) -> list[dict]:
    """:func:`evaluate_ranking` under several relevance thresholds, ranking once.

    The top-``k`` lists do not depend on the threshold, only the relevant items do, so
    each user's list is computed once (the costly part: every candidate movie is
    scored from posterior draws) and scored against each threshold's relevant set.
    Every warm test user is ranked, so a threshold's metrics are the same whichever
    other thresholds are asked for.

    Returns
    -------
    list of dict
        One :func:`evaluate_ranking` result per threshold, in order.
    """
    from .recommend import _members, top_k_movies

    first = _members(fitted)[0]
    test = first.reindex(test)
    seen = None if seen is None else first.reindex(seen)
    warm = (first.seen if seen is None else seen).user_counts() > 0
    users = np.unique(test.user)
    cold = users[~warm[users]]
    users = users[warm[users]]
    relevant_by_threshold = []
    for threshold in thresholds:
        is_relevant = (np.ones(len(test), dtype=bool) if threshold is None
                       else test.rating >= threshold)
        relevant: dict[int, set[int]] = {}
        for movie, user in zip(test.movie[is_relevant], test.user[is_relevant]):
            relevant.setdefault(int(user), set()).add(int(movie))
        relevant_by_threshold.append(relevant)
    # Every warm test user gets a list, whatever the thresholds: the posterior draws of
    # a block of users depend on the users ranked before it, so ranking only the users
    # a threshold needs would make its metrics depend on the other thresholds asked.
    top = top_k_movies(fitted, users, k, seen=seen, num_samples=num_samples,
                       seed=seed)  # (n, k)
    lists = {int(u): [int(m) for m in row if m >= 0] for u, row in zip(users, top)}
    results = []
    for threshold, relevant in zip(thresholds, relevant_by_threshold):
        recommended = {u: lists[u] for u in lists if u in relevant}
        out = ranking_metrics(recommended, {u: relevant[u] for u in recommended}, k)
        out.update(threshold=threshold, num_cold_users=int(len(cold)))
        if out["num_users"] == 0:
            log.warning("no warm test user has a test rating >= %s: the ranking metrics are "
                        "empty (relevance is a rating threshold; None makes every test item "
                        "relevant)", threshold)
        log.info("ranking (threshold %s): %d users, nDCG@%d %.4f", threshold,
                 out["num_users"], k, out["ndcg_at_k"] or math.nan)
        results.append(out)
    return results


def stratified_split(ratings: Ratings, ratio: float = 0.75,
                     seed: int = 42) -> tuple[Ratings, Ratings]:
    """Per-user stratified random split, as Microsoft Recommenders' benchmark makes it.

    Every rating gets a uniform number from ``numpy.random.seed(seed); rand(N)`` in
    input order; within each user, ratings are ranked by it, and a rating is in
    training when ``rank / n_user <= ratio`` (so a user with 4 ratings gives 3 to
    training and 1 to test). This is ``python_stratified_split(data, ratio, seed=seed)``
    of ``recommenders.datasets.python_splitters`` with ``min_rating=1`` and
    ``filter_by="user"``, without pandas.

    Parameters
    ----------
    ratings : Ratings
        ``N`` ratings, in the order of the data file (``u.data`` for the benchmark).
    ratio : float
        Training share of each user's ratings, in (0, 1).
    seed : int

    Returns
    -------
    train, test : Ratings
        In input order, on ``ratings``' id maps.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio!r}")
    noise = np.random.RandomState(seed).rand(len(ratings))  # (N,), the legacy generator
    order = np.lexsort((noise, ratings.user))  # by user, then by noise
    counts = ratings.user_counts()
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(ratings), dtype=np.int64)
    rank[order] = np.arange(len(ratings)) - starts[ratings.user[order]] + 1  # 1-based
    in_train = rank / counts[ratings.user] <= ratio
    return ratings.subset(in_train), ratings.subset(~in_train)
