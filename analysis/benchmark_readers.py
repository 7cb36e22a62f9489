"""How fast, and in how much memory, are MovieLens-sized rating files read?

Question
    ML-25M's ``ratings.csv`` is 25 million lines (about 650 MB). Does
    :func:`deepfactor.data.tables.read_rating_table` read such a file at the speed of
    a plain ``pandas.read_csv``, and in how much memory, with the checks it adds
    (fixed dtypes, id remapping, line numbers, the duplicate-pair check)?
Data
    A synthetic ``ratings.csv`` in ML-20M/25M's layout (header, ``userId,movieId,
    rating,timestamp``, half stars), 5 million lines by default, with popular movies
    drawn from a power law and no repeated (user, movie) pair; the same rows as a
    ``ratings.dat`` with ``::`` (ML-1M/10M layout). Written to a temporary folder
    (``--work``, default under the system temp dir), never into the repository.
Model
    None: reading only.
Simplified
    Each reader runs in a fresh process, ``--repeats`` times; the table shows the
    fastest time and the largest peak resident memory (``VmHWM``, which includes
    the interpreter and imported libraries: the ``imports`` row is that baseline).
    The reference is ``pandas.read_csv(path)`` with inferred dtypes and nothing else,
    on the same file in the same run, so the ratio is the cost of deepfactor's checks.
    Timings depend on what else the machine is running.
References
    pandas ``read_csv`` (C parser); GroupLens, MovieLens 25M README (file layout).

Run: ``python analysis/benchmark_readers.py [--lines N] [--repeats R] [--out DIR]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: a small file, one repeat, in seconds.
QUICK_ARGS = ["--lines", "20000", "--repeats", "1"]

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_CHILD = r"""
import json, sys, time
which, path = sys.argv[1], sys.argv[2]
import pandas as pd
from deepfactor.data.tables import read_rating_table
def high_water_mib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
base = high_water_mib()
start = time.perf_counter()
if which == "pandas":
    rows = len(pd.read_csv(path))
elif which == "imports":
    rows = 0
else:
    sep, header = ("::", False) if which == "dat" else (",", True)
    rows = len(read_rating_table(path, sep=sep, header=header))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mib": high_water_mib(), "base_mib": base,
                  "rows": rows}))
"""

#: (row label, child mode, file) in table order; the first is the reference.
READERS = [
    ("pandas.read_csv (reference)", "pandas", "ratings.csv"),
    ("read_rating_table, ratings.csv", "csv", "ratings.csv"),
    ("read_rating_table, ratings.dat (::)", "dat", "ratings.dat"),
    ("imports only (baseline memory)", "imports", "ratings.csv"),
]


def synthetic_rows(num_lines: int, seed: int) -> dict[str, np.ndarray]:
    """Distinct (user, movie) pairs with power-law movie popularity, half stars."""
    rng = np.random.default_rng(seed)
    # ML-25M's proportions (162k users, 59k movies for 25M ratings), with room for
    # small runs: at least 25 times more possible pairs than lines
    num_users, num_movies = max(num_lines // 150, 1000), max(num_lines // 400, 500)
    keys = np.zeros(0, dtype=np.int64)
    while len(keys) < num_lines:
        need = int(1.3 * (num_lines - len(keys))) + 100
        movie = (rng.zipf(1.2, need) - 1) % num_movies  # popular movies get low ids
        user = rng.integers(0, num_users, need)
        keys = np.unique(np.concatenate([keys, movie * num_users + user]))
    keys = rng.permutation(keys)[:num_lines]
    return {"userId": keys % num_users + 1, "movieId": keys // num_users + 1,
            "rating": rng.integers(1, 11, num_lines) / 2,
            "timestamp": rng.integers(789_652_009, 1_574_327_703, num_lines)}


def write_files(folder: Path, num_lines: int, seed: int) -> None:
    import pandas as pd

    pd.DataFrame(synthetic_rows(num_lines, seed)).to_csv(folder / "ratings.csv", index=False)
    # the same rows in the ML-1M/10M layout: no header, "::" between fields
    with open(folder / "ratings.csv") as src, open(folder / "ratings.dat", "w") as dst:
        src.readline()
        for chunk in iter(lambda: src.read(1 << 24), ""):
            dst.write(chunk.replace(",", "::"))


def measure(mode: str, path: Path) -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="folder for the synthetic files "
                        "(default: a new temporary folder, removed afterwards)")
    parser.add_argument("--out", default="benchmark_readers_out",
                        help="folder for results.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.work) as work:
        folder = Path(work)
        write_files(folder, args.lines, args.seed)
        size_mb = (folder / "ratings.csv").stat().st_size / 1e6
        results = {}
        for _ in range(args.repeats):  # interleaved, so load changes hit every reader
            for label, mode, name in READERS:
                run = measure(mode, folder / name)
                best = results.setdefault(label, run)
                best["seconds"] = min(best["seconds"], run["seconds"])
                best["peak_mib"] = max(best["peak_mib"], run["peak_mib"])

    reference = results[READERS[0][0]]
    print(f"{args.lines:,} ratings, ratings.csv {size_mb:.0f} MB, best of {args.repeats} "
          f"fresh processes, {os.cpu_count()} CPUs")
    print(f"{'reader':40s} {'seconds':>8s} {'x ref':>6s} {'M lines/s':>9s} "
          f"{'peak MiB':>9s} {'rows':>10s}")
    for label, _, _ in READERS:
        r = results[label]
        rate = f"{args.lines / r['seconds'] / 1e6:9.2f}" if r["rows"] else f"{'':9s}"
        ratio = f"{r['seconds'] / reference['seconds']:6.2f}" if r["rows"] else f"{'':6s}"
        print(f"{label:40s} {r['seconds']:8.2f} {ratio} {rate} {r['peak_mib']:9.0f} "
              f"{r['rows']:10,d}")
        if r["rows"]:
            assert r["rows"] == args.lines, f"{label} read {r['rows']} rows"

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"lines": args.lines, "csv_megabytes": size_mb, "repeats": args.repeats,
               "results": results}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out / "results.json")  # atomic
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
