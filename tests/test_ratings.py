import numpy as np
import pytest

from deepfactor.data.ratings import IdIndex, Ratings


def test_ids_compare_as_file_strings():
    ids = IdIndex(["196", "007", "7"])
    assert list(ids.index_of([196, "196", "007", "7"])) == [0, 0, 1, 2]
    assert "7" in ids and 7 in ids and "07" not in ids
    with pytest.raises(KeyError, match="unknown user ids: '8', '9'"):
        ids.index_of(["8", "9", "196"], what="user id")


def test_extension_keeps_existing_indices():
    ids = IdIndex(["a", "b"])
    bigger = ids.extended(["c", "a", "d", "c"])
    assert bigger.raw == ["a", "b", "c", "d"]
    assert ids.extended(["b"]) is ids


def test_csr_rows_and_gather_match_the_dense_matrix(rng):
    m, u = rng.integers(0, 7, 60), rng.integers(0, 5, 60)
    keep = np.unique(m * 5 + u, return_index=True)[1]
    r = Ratings(m[keep], u[keep], rng.normal(size=len(keep)), IdIndex(range(7)), IdIndex(range(5)))
    dense = np.zeros((7, 5))
    dense[r.movie, r.user] = r.rating
    rows = r.by_movie()
    assert list(rows.counts) == list(np.bincount(r.movie, minlength=7))
    selected = np.array([4, 0, 6, 0])  # repeats and any order
    indices, values, offsets = rows.gather(selected)
    ends = list(offsets[1:]) + [len(indices)]
    for k, row in enumerate(selected):
        rebuilt = np.zeros(5)
        rebuilt[indices[offsets[k]:ends[k]]] = values[offsets[k]:ends[k]]
        np.testing.assert_array_equal(rebuilt, dense[row])
    assert r.by_user().num_rows == 5


def test_entities_without_ratings_have_empty_rows():
    r = Ratings.from_raw(["m1"], ["u1"], [4.0], movie_ids=IdIndex(["m0", "m1"]))
    assert list(r.movie_counts()) == [0, 1]
    indices, values, offsets = r.by_movie().gather(np.array([0, 1]))
    assert list(offsets) == [0, 0] and list(values) == [4.0]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="Ratings.movie has 2 entries, expected 1"):
        Ratings(np.array([0, 1]), np.array([0]), np.array([1.0]), IdIndex("ab"), IdIndex("a"))
