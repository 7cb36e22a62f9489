"""Every analysis script runs in its quick mode, and none is left without a test."""

import subprocess
import sys

import pytest

from conftest import REPO

QUICK_RUNS = {
    "elbo_estimators.py": ["--quick", "--repeats", "5"],
    "benchmark_predictive.py": ["--quick", "--repeats", "1"],
    "benchmark_threads.py": ["--quick", "--repeats", "1"],
    "benchmark_foldin.py": ["--quick"],
}


def test_every_analysis_script_has_a_quick_run():
    scripts = {p.name for p in (REPO / "analysis").glob("*.py")}
    assert scripts == set(QUICK_RUNS), "add the new script to QUICK_RUNS"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(QUICK_RUNS))
def test_script_runs_in_quick_mode(script):
    result = subprocess.run([sys.executable, str(REPO / "analysis" / script),
                             *QUICK_RUNS[script]], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip(), "a script prints its results"
