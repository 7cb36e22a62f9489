"""Every plot function returns a Figure with the expected axes and artists (not pixels)."""

import io

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot; the plots never need a display

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from deepfactor import plots  # noqa: E402


def _bars(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def _renders(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def replicated(rng):
    return rng.dirichlet(np.ones(7), size=30)  # (S, K) shares


def test_value_distribution_has_one_bar_and_one_interval_per_value(rng, replicated):
    labels = ["1", "2", "3", "4", "5", "<1", ">5"]
    fig = plots.plot_value_distribution(labels, replicated[0], replicated)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(_bars(ax)) == 7
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert len(ax.containers) == 2  # the bars, and the replicated error bars
    np.testing.assert_allclose([b.get_height() for b in _bars(ax)], replicated[0])
    assert _renders(fig)


def test_binned_ppc_draws_bars_band_and_median(replicated):
    edges = np.linspace(0, 1, 8)
    fig = plots.plot_binned_ppc(edges, replicated[0], replicated, xlabel="x", title="t")
    ax = fig.axes[0]
    assert len(_bars(ax)) == 7 and len(ax.lines) == 1 and len(ax.collections) == 1
    assert ax.get_title() == "t" and ax.get_xlabel() == "x"


def test_movie_variance_is_a_log_x_scatter_of_both(rng):
    counts = rng.integers(2, 300, 50)
    fig = plots.plot_movie_variance(counts, rng.uniform(size=50), rng.uniform(size=(20, 50)))
    ax = fig.axes[0]
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == 2 and all(len(s.get_offsets()) == 50 for s in scatters)
    assert ax.get_xscale() == "log"


def test_test_statistics_has_one_panel_per_statistic(rng):
    fig = plots.plot_test_statistics(["mean", "sd", "user_mean_sd"], [1.0, 2.0, 3.0],
                                     [rng.normal(size=40)] * 3, [0.1, 0.5, 0.99])
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["mean  (p = 0.10)", "sd  (p = 0.50)",
                                                   "user_mean_sd  (p = 0.99)"]
    assert all(len(ax.lines) == 1 for ax in fig.axes)  # the observed value


def test_coverage_plots_the_given_points_against_the_diagonal():
    levels, coverage = [0.5, 0.8, 0.9, 0.95], [0.45, 0.78, 0.9, 0.96]
    fig = plots.plot_coverage(levels, coverage, [0.01] * 4)
    ax = fig.axes[0]
    diagonal, points = ax.lines
    np.testing.assert_allclose(points.get_xdata(), levels)
    np.testing.assert_allclose(points.get_ydata(), coverage)
    np.testing.assert_allclose(diagonal.get_xdata(), [0, 1])


def test_pit_histogram_has_one_bar_per_bin(rng):
    counts, edges = np.histogram(rng.uniform(size=500), bins=20, range=(0, 1))
    fig = plots.plot_pit(edges, counts, (20.0, 30.0))
    ax = fig.axes[0]
    (bars,) = ax.containers
    assert [b.get_height() for b in bars] == list(counts) and ax.get_xlim() == (0, 1)


def test_reliability_has_the_diagram_and_the_counts():
    mean_prob = np.array([0.05, np.nan, 0.5, 0.9])
    frequency = np.array([0.1, np.nan, 0.4, 0.95])
    fig = plots.plot_reliability(mean_prob, frequency, np.array([10, 0, 5, 20]))
    diagram, counts = fig.axes
    np.testing.assert_allclose(diagram.lines[1].get_xdata(), [0.05, 0.5, 0.9])  # empty bin gone
    assert len(_bars(counts)) == 4


def test_kl_has_two_bars_per_dimension_and_the_threshold():
    fig = plots.plot_kl(np.array([1.0, 0.0, 0.2]), np.array([0.5, 0.001, 0.3]), 0.01)
    ax = fig.axes[0]
    assert len(_bars(ax)) == 6 and ax.get_yscale() == "log"
    assert any(np.allclose(line.get_ydata(), 0.01) for line in ax.lines)


def test_pareto_k_marks_the_three_thresholds(rng):
    fig = plots.plot_pareto_k(rng.uniform(0, 1.2, 100), good_k=0.5)
    ax = fig.axes[0]
    assert sorted(line.get_ydata()[0] for line in ax.lines) == [0.5, 0.7, 1.0]
    assert len(ax.collections[0].get_offsets()) == 100


def test_completion_has_three_panels_with_colour_bars(rng):
    observed = rng.integers(1, 6, (17, 11)).astype(float)
    observed[rng.uniform(size=observed.shape) < 0.7] = np.nan
    heldout = np.zeros(observed.shape, bool)
    heldout[0, 0] = True
    fig = plots.plot_completion(observed, rng.uniform(1, 5, (17, 11)),
                                rng.uniform(0.5, 1, (17, 11)),
                                [str(i) for i in range(4, 21)], [str(j) for j in range(6, 17)],
                                heldout=heldout, title="block")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3 and len(fig.axes) == 6  # three panels, three colour bars
    assert [ax.get_title() for ax in panels] == ["observed", "posterior predictive mean",
                                                 "posterior predictive sd"]
    image = panels[0].images[0]
    assert isinstance(image, AxesImage) and image.get_array().shape == (17, 11)
    assert int(np.ma.count_masked(image.get_array())) == int(np.isnan(observed).sum())
    assert [t.get_text() for t in panels[0].get_yticklabels()][:2] == ["4", "5"]
    assert len(panels[0].collections) == 1  # the held-out marker
    assert _renders(fig)
