"""The command line, run as a user would: in a subprocess, from the installed entry point."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

SMALL = ["--set", "data.dataset=synthetic", "--set", "data.split=random",
         "--set", "data.synthetic_movies=40", "--set", "data.synthetic_users=30",
         "--set", "data.synthetic_ratings=600", "--set", "model.latent_dim=3",
         "--set", "train.epochs=2", "--set", "train.batch_size=200",
         "--set", "eval.num_samples=10"]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "deepfactor", *args], capture_output=True,
                          text=True, cwd=cwd)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run("fit", str(REPO / "models" / "gaussian.toml"), "--out", str(out), "--quiet",
                 *SMALL)
    assert result.returncode == 0, result.stderr
    return out


def test_fit_writes_every_promised_file(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.toml", "model.pt", "metrics.json", "trace.csv", "environment.json"} <= names
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["num_ratings"] == 120 and "rmse" in metrics["test"]
    trace = pd.read_csv(run_dir / "trace.csv")
    assert list(trace["epoch"]) == [1, 2] and "val_lpd" in trace
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["seed"] == 0 and env["packages"]["torch"]


def test_predict_writes_one_row_per_pair_in_input_order(run_dir, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("3\t7\t5\t881250949\n1\t2\t3\t0\n3\t7\t1\t0\n")  # u1.test layout
    out = tmp_path / "pred.csv"
    result = run("predict", str(run_dir), "--pairs", str(pairs), "--out", str(out))
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out, dtype={"user": str, "movie": str})
    assert list(frame.columns) == ["user", "movie", "mean", "sd", "q05", "q95"]
    assert list(frame["user"]) == ["3", "1", "3"] and list(frame["movie"]) == ["7", "2", "7"]
    assert (frame["q05"] < frame["mean"]).all() and (frame["mean"] < frame["q95"]).all()


def test_evaluate_reproduces_the_fit_metrics(run_dir):
    result = run("evaluate", str(run_dir))
    assert result.returncode == 0, result.stderr
    fitted = json.loads((run_dir / "metrics.json").read_text())
    again = json.loads((run_dir / "evaluation-random.json").read_text())
    assert again["test"] == fitted["test"]


@pytest.mark.parametrize("args, message", [
    (["fit", "models/gaussian.toml", "--set", "model.latnet_dim=4"], "unknown key"),
    (["fit", "nope.toml"], "nope.toml: no such configuration file"),
    (["fit", "models/gaussian.toml", "--data", "/nonexistent/place"], "not found in the given"),
    (["predict", "/nonexistent/run", "--pairs", "x", "--out", "y"],
     "/nonexistent/run: no such run directory"),
])
def test_user_errors_are_one_line_exit_2(args, message):
    result = run(*args, cwd=REPO)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepfactor: error:") and message in lines[0]


def test_unknown_ids_in_predict_are_named(run_dir, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("user\tmovie\n3\t7\n99999\t7\n")
    result = run("predict", str(run_dir), "--pairs", str(pairs), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "unknown user id: '99999'" in result.stderr


def test_refuses_to_overwrite_a_run(run_dir):
    result = run("fit", str(REPO / "models" / "gaussian.toml"), "--out", str(run_dir), *SMALL)
    assert result.returncode == 2 and "already holds a run" in result.stderr


def test_cli_sets_the_openmp_wait_policy_before_torch_loads():
    code = ("import os; os.environ.pop('OMP_WAIT_POLICY', None)\n"
            "import sys, deepfactor.cli\n"
            "assert 'torch' not in sys.modules, 'torch imported too early'\n"
            "print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "PASSIVE"


def test_a_missing_pairs_file_is_one_line(run_dir, tmp_path):
    result = run("predict", str(run_dir), "--pairs", str(tmp_path / "nofile.txt"),
                 "--out", str(tmp_path / "p.csv"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"deepfactor: error: {tmp_path / 'nofile.txt'}: no such file"


def test_a_bad_relevance_is_one_line(run_dir):
    for args, message in ((["--ranking", "--relevant", "most"],
                           "--relevant: expected a rating or 'all', got 'most'"),
                          (["--relevant", "3.5"], "--relevant chooses the relevant items of "
                                                  "--ranking; add --ranking")):
        result = run("evaluate", str(run_dir), *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip() == f"deepfactor: error: {message}"


def test_an_unknown_split_names_the_option_not_the_checkpoint(run_dir):
    result = run("evaluate", str(run_dir), "--split", "u9")
    assert result.returncode == 2 and "model.pt" not in result.stderr
    assert result.stderr.startswith("deepfactor: error: --split 'u9': 'data.split' must be")


def test_recommend_shortlist_takes_a_count_auto_or_all(run_dir):
    every = run("recommend", str(run_dir), "--user", "3", "-k", "2", "--shortlist", "all")
    assert every.returncode == 0, every.stderr
    bad = run("recommend", str(run_dir), "--user", "3", "--shortlist", "most")
    assert bad.returncode == 2
    assert "--shortlist: expected a count, 'auto' or 'all', got 'most'" in bad.stderr


def test_quoted_pairs_are_read(run_dir, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text('"user","movie"\n"3","7"\n')
    result = run("predict", str(run_dir), "--pairs", str(pairs), "--out", "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("3,7,")


def test_unknown_users_and_movies_are_named_together(run_dir, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("9999\t7\n3\t8888\n")
    result = run("predict", str(run_dir), "--pairs", str(pairs), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "unknown user id: '9999'" in result.stderr
    assert "unknown movie id: '8888'" in result.stderr


def test_load_reads_the_run_metrics(run_dir):
    import deepfactor

    assert deepfactor.load(run_dir).metrics["test"]["num_ratings"] == 120


def test_resuming_a_finished_run_changes_nothing(run_dir):
    before = (run_dir / "model.pt").read_bytes()
    result = run("fit", "--resume", str(run_dir))
    assert result.returncode == 2 and "nothing to resume" in result.stderr
    assert (run_dir / "model.pt").read_bytes() == before


def test_a_relative_data_file_is_saved_absolute_and_found_from_elsewhere(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    rows = [f"u{u}\tm{m}\t{1 + (u * 7 + m) % 5}" for u in range(25) for m in range(12)
            if (u + m) % 3]
    (work / "ratings.tsv").write_text("\n".join(rows) + "\n")
    settings = ["--set", "data.dataset=file", "--set", "data.split=random",
                "--set", 'data.columns=["user", "movie", "rating"]',
                "--set", 'data.separator="\t"', "--set", "data.header=false",
                "--set", "model.latent_dim=2", "--set", "train.epochs=1",
                "--set", "train.batch_size=100", "--set", "eval.num_samples=5"]
    result = run("fit", str(REPO / "models" / "gaussian.toml"), "--out", "run", "--quiet",
                 "--data", "ratings.tsv", *settings, cwd=work)
    assert result.returncode == 0, result.stderr
    saved = (work / "run" / "config.toml").read_text()
    assert f'path = "{work / "ratings.tsv"}"' in saved
    again = run("evaluate", str(work / "run"), cwd=tmp_path)  # another working directory
    assert again.returncode == 0, again.stderr


def test_predict_to_standard_output(run_dir, tmp_path):
    import io

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("3\t7\n1\t2\n")
    result = run("predict", str(run_dir), "--pairs", str(pairs), "--out", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout), dtype={"user": str, "movie": str})
    assert list(frame["user"]) == ["3", "1"] and not (tmp_path / "-").exists()


def test_a_failed_overwrite_leaves_the_earlier_run_whole(tmp_path):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("".join(f"{u},{m},{1 + (u * m) % 5},0\n" for u in range(12)
                            for m in range(10)))
    bad.write_text("1,1,3,0\n2,2,x,0\n")
    out = tmp_path / "run"
    file_run = ["--set", "data.dataset=file", "--set", "data.split=random", "--set",
                "data.columns=['user', 'movie', 'rating', 'timestamp']", "--set",
                "train.epochs=1", "--set", "train.batch_size=50", "--quiet"]
    config = str(REPO / "models" / "gaussian.toml")
    assert run("fit", config, "--data", str(good), "--out", str(out), *file_run).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    failed = run("fit", config, "--data", str(bad), "--out", str(out), "--overwrite", *file_run)
    assert failed.returncode == 2 and "bad.csv:2" in failed.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (tmp_path / "never").exists()
    assert run("fit", config, "--data", str(bad), "--out", str(tmp_path / "never"),
               *file_run).returncode == 2
    assert not (tmp_path / "never").exists()  # no directory for a run that never started


def test_a_closed_pipe_ends_quietly(run_dir):
    """``deepfactor recommend ... | head``: the reader is gone before the table is written."""
    child = subprocess.Popen([sys.executable, "-m", "deepfactor", "recommend", str(run_dir),
                              "--user", "1", "-k", "5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.stdout.close()  # every write to stdout now fails with EPIPE
    with child.stderr:
        error = child.stderr.read()
    assert child.wait() == 0 and "Traceback" not in error, error


def test_an_implicit_run_fits_evaluates_and_recommends_from_the_command_line(tmp_path):
    out = tmp_path / "implicit"
    result = run("fit", str(REPO / "models" / "implicit.toml"), "--out", str(out), "--quiet",
                 *SMALL)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["num_ratings"] == 2 * 120  # held-out pairs and empty cells
    assert "auc" in metrics["test"] and "HeldOutOverlap" not in result.stderr

    # the synthetic values are 0/1 draws, not stars: every held-out item is relevant
    result = run("evaluate", str(out), "--ranking", "--relevant", "all")
    assert result.returncode == 0, result.stderr
    ranking = json.loads((out / "evaluation-random.json").read_text())["ranking"]
    assert ranking["threshold"] is None and ranking["num_users"] > 0
    assert 0 <= ranking["ndcg_at_k"] <= 1 and "relevant = every test item" in result.stdout

    result = run("recommend", str(out), "--user", "1", "-k", "3")
    assert result.returncode == 0, result.stderr
    assert "top 3 for user 1" in result.stdout


@pytest.mark.parametrize("command", ["predict", "recommend"])
def test_zero_or_negative_samples_are_refused(run_dir, tmp_path, command):
    # 0 once fell back to eval.num_samples silently
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("3\t7\n")
    target = (["--pairs", str(pairs), "--out", str(tmp_path / "p.csv")]
              if command == "predict" else ["--user", "3"])
    for samples in ("0", "-5"):
        result = run(command, str(run_dir), *target, "--samples", samples)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip() == (f"deepfactor: error: --samples must be at least 1, "
                                          f"got {samples}")


def test_the_library_refuses_zero_draws_too(run_dir):
    from deepfactor import load

    fitted = load(run_dir)
    with pytest.raises(ValueError, match="at least 1, got 0"):
        fitted.predict(["3"], ["7"], num_samples=0)
    with pytest.raises(ValueError, match="at least 1, got 0"):
        fitted.recommend("3", k=2, num_samples=0)
