"""Every analysis script runs in its quick mode, and none is left without a test.

Each script declares the arguments of its quick run at module level::

    QUICK_ARGS = ["--quick"]

so that a new script brings its own test entry, and a script without one fails here.
Modules whose name starts with ``_`` (``analysis/_common.py``) are helpers the scripts
import, not scripts.
"""

import ast
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPTS = sorted(p for p in (REPO / "analysis").glob("*.py") if not p.name.startswith("_"))


def quick_args(path):
    """The literal ``QUICK_ARGS`` list of a script, or None if it declares none."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "QUICK_ARGS" for t in node.targets):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list) and all(isinstance(a, str) for a in value), path
            return value
    return None


def test_every_analysis_script_declares_a_quick_run():
    missing = [p.name for p in SCRIPTS if quick_args(p) is None]
    assert not missing, f"scripts without QUICK_ARGS (so no test runs them): {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_runs_in_quick_mode(script, tmp_path):
    result = subprocess.run([sys.executable, str(script), *(quick_args(script) or [])],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip(), "a script prints its results"
    # scripts write only under their --out folder, which the quick runs put in tmp_path
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    if "--out" in (quick_args(script) or []):
        out = tmp_path / quick_args(script)[quick_args(script).index("--out") + 1]
        # --out names a folder (or, for the benchmarks' JSON, the one file written)
        assert written and all(p == out or out in p.parents for p in written), written
