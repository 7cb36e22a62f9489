"""Tests of deepfactor.data.datasets: finding, downloading and unpacking datasets.

Downloads are served from a local ``http.server`` on 127.0.0.1; a guard makes any
other address fail the test, so nothing here reaches the internet.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import socket
import stat
import threading
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import platformdirs
import pytest

from deepfactor.data import datasets
from deepfactor.data.datasets import (
    DATASETS,
    DatasetIntegrityError,
    DatasetNotFoundError,
    DatasetSpec,
    default_cache_dir,
    resolve_dataset,
)

U_DATA = "1\t10\t4\t881250949\n2\t10\t3\t881250950\n"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """No proxy, no $DEEPFACTOR_DATA, and any non-loopback URL fails the test."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.delenv(datasets.DATA_ENV_VAR, raising=False)

    urlopen = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        host = urllib.parse.urlsplit(url).hostname
        assert host == "127.0.0.1", f"test tried to reach {url}"
        return urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server: ``(folder it serves, its base URL)``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL on which nothing listens, as when offline."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/ml-100k.zip"


def build_zip(
    path: Path, members: dict[str, str], symlinks: dict[str, str] | None = None
) -> Path:
    """A zip of text ``members`` and of symbolic links ``name -> target``."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def spec_for(archive: Path, url: str, **override) -> DatasetSpec:
    data = archive.read_bytes()
    fields = dict(
        name="ml-100k",
        url=url,
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),
        marker="u.data",
    )
    return DatasetSpec(**(fields | override))


@pytest.fixture
def published(server) -> DatasetSpec:
    """A good fake MovieLens archive on the local server, and its spec."""
    root, base_url = server
    archive = build_zip(
        root / "ml-100k.zip",
        {"ml-100k/u.data": U_DATA, "ml-100k/u1.base": U_DATA, "ml-100k/README": "hi"},
    )
    return spec_for(archive, f"{base_url}/ml-100k.zip")


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ----------------------------------------------------------------------- registry


def test_registry_knows_movielens_100k():
    spec = DATASETS["ml-100k"]
    assert spec.url == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    assert spec.md5 == "0e33842e24a9c977be4e0107933c0723"
    assert len(spec.sha256) == 64 and spec.marker == "u.data"
    assert spec.archive_name == "ml-100k.zip"


def test_default_cache_dir_is_per_user():
    assert default_cache_dir() == Path(platformdirs.user_cache_dir("deepfactor"))


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'ml-1b'.*synthetic"):
        resolve_dataset("ml-1b", cache_dir=tmp_path)


def test_errors_subclass_the_builtin_ones():
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert issubclass(DatasetIntegrityError, ValueError)


# ------------------------------------------------------------------------ looking


def make_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "u.data").write_text(U_DATA)
    return folder


def test_explicit_path_to_the_files_or_their_parent(tmp_path):
    files = make_dataset(tmp_path / "mine" / "ml-100k")
    cache = tmp_path / "cache"
    assert resolve_dataset("ml-100k", files, download=False, cache_dir=cache) == files
    parent = files.parent
    assert resolve_dataset("ml-100k", parent, download=False, cache_dir=cache) == files


def test_lookup_order_path_then_env_then_cache(tmp_path, monkeypatch):
    given = make_dataset(tmp_path / "given")
    env = make_dataset(tmp_path / "env" / "ml-100k")
    cache = make_dataset(tmp_path / "cache" / "ml-100k")
    monkeypatch.setenv("DEEPFACTOR_DATA", str(env.parent))
    resolve = functools.partial(
        resolve_dataset, "ml-100k", download=False, cache_dir=cache.parent
    )

    assert resolve(given) == given
    assert resolve() == env
    monkeypatch.delenv("DEEPFACTOR_DATA")
    assert resolve() == cache


def test_not_found_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFACTOR_DATA", str(tmp_path / "data"))
    with pytest.raises(DatasetNotFoundError) as info:
        resolve_dataset("ml-100k", download=False, cache_dir=tmp_path)

    message = str(info.value)
    assert "\n" not in message
    looked = [tmp_path / "data" / "ml-100k", tmp_path / "ml-100k"]
    for folder in looked:
        assert str(folder) in message
    assert "downloading is switched off" in message
    assert "$DEEPFACTOR_DATA/ml-100k/u.data" in message and "'synthetic'" in message


# -------------------------------------------------------------------- downloading


def test_download_verifies_and_extracts(published, tmp_path, capsys):
    cache = tmp_path / "cache"
    folder = resolve_dataset("ml-100k", spec=published, cache_dir=cache, progress=True)

    assert folder == cache / "ml-100k"
    assert (folder / "u.data").read_text() == U_DATA
    # only the verified archive and the unpacked folder: no temp files or folders
    assert files_under(cache) == [
        "ml-100k",
        "ml-100k.zip",
        "ml-100k/README",
        "ml-100k/u.data",
        "ml-100k/u1.base",
    ]
    assert capsys.readouterr().out == ""  # progress goes to stderr, nothing is printed


def test_registry_entry_can_be_overridden(published, tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "ml-100k", published)
    folder = resolve_dataset("ml-100k", cache_dir=tmp_path, progress=False)
    assert (folder / "u.data").is_file()


def test_cached_files_need_no_network(published, tmp_path, closed_port_url):
    resolve_dataset("ml-100k", spec=published, cache_dir=tmp_path, progress=False)
    offline = spec_for(tmp_path / "ml-100k.zip", closed_port_url)
    folder = resolve_dataset("ml-100k", spec=offline, cache_dir=tmp_path)
    assert folder == tmp_path / "ml-100k"


def test_cached_archive_is_unpacked_again_without_network(
    published, tmp_path, closed_port_url
):
    resolve_dataset("ml-100k", spec=published, cache_dir=tmp_path, progress=False)
    (tmp_path / "ml-100k" / "u.data").unlink()  # a damaged unpacked folder
    offline = spec_for(tmp_path / "ml-100k.zip", closed_port_url)

    folder = resolve_dataset("ml-100k", spec=offline, cache_dir=tmp_path)
    assert (folder / "u.data").read_text() == U_DATA
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.parametrize("wrong", ["sha256", "md5"])
def test_wrong_checksum_is_refused_and_leaves_nothing(published, tmp_path, wrong):
    zeros = "0" * len(getattr(published, wrong))
    bad = dataclasses.replace(published, **{wrong: zeros})
    cache = tmp_path / "cache"

    expected = f"{wrong.upper()} is [0-9a-f]+, expected 0+;"
    with pytest.raises(DatasetIntegrityError, match=expected):
        resolve_dataset("ml-100k", spec=bad, cache_dir=cache, progress=False)
    assert files_under(cache) == []


@pytest.mark.parametrize(
    ("members", "symlinks", "reason"),
    [
        ({"../evil": "x"}, {}, "a '..' component"),
        ({"ml-100k/../../evil": "x"}, {}, "a '..' component"),
        ({"{tmp}/evil": "x"}, {}, "an absolute path"),
        ({"C:/evil": "x"}, {}, "an absolute path"),
        ({}, {"ml-100k/link": "../../evil"}, "a symbolic link"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "drive", "symlink"],
)
def test_unsafe_archive_is_refused(server, tmp_path, members, symlinks, reason):
    root, base_url = server
    members = {name.format(tmp=tmp_path): text for name, text in members.items()}
    archive = build_zip(
        root / "ml-100k.zip", {"ml-100k/u.data": U_DATA, **members}, symlinks
    )
    spec = spec_for(archive, f"{base_url}/ml-100k.zip")
    cache = tmp_path / "deep" / "cache"
    before = files_under(tmp_path)

    with pytest.raises(DatasetIntegrityError, match=f"refusing .* which has {reason}"):
        resolve_dataset("ml-100k", spec=spec, cache_dir=cache, progress=False)
    assert files_under(cache) == []
    # nothing was written anywhere under tmp_path but the (empty) cache folder
    new = [p for p in files_under(tmp_path) if p not in before]
    assert new == ["deep", "deep/cache"]


def test_archive_without_the_dataset_is_refused(server, tmp_path):
    root, base_url = server
    archive = build_zip(root / "ml-100k.zip", {"other/u.data": U_DATA})
    spec = spec_for(archive, f"{base_url}/ml-100k.zip")
    cache = tmp_path / "cache"
    with pytest.raises(DatasetIntegrityError, match="holds no ml-100k/u.data"):
        resolve_dataset("ml-100k", spec=spec, cache_dir=cache, progress=False)
    assert files_under(cache) == []


def test_stale_cache_folder_is_replaced(published, tmp_path):
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "half-written").write_text("")
    folder = resolve_dataset("ml-100k", spec=published, cache_dir=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["README", "u.data", "u1.base"]


# ------------------------------------------------------------------------ offline


def test_offline_error_is_one_clear_line(tmp_path, closed_port_url, monkeypatch):
    spec = DatasetSpec("ml-100k", closed_port_url, None, None, "u.data")
    with pytest.raises(DatasetNotFoundError) as info:
        resolve_dataset("ml-100k", spec=spec, cache_dir=tmp_path, progress=False)

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("dataset 'ml-100k' not found: looked in ")
    assert str(tmp_path / "ml-100k") in message
    assert "$DEEPFACTOR_DATA is not set" in message
    assert f"fetching {closed_port_url}" in message and "failed (" in message
    assert "$DEEPFACTOR_DATA/ml-100k/u.data" in message
    assert "the built-in 'synthetic' dataset runs offline" in message
    assert files_under(tmp_path) == []


def test_http_error_is_a_not_found_error(server, tmp_path):
    _, base_url = server
    spec = DatasetSpec("ml-100k", f"{base_url}/missing.zip", None, None, "u.data")
    cache = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError, match=r"failed \(HTTP 404 "):
        resolve_dataset("ml-100k", spec=spec, cache_dir=cache, progress=False)
    assert files_under(cache) == []


def test_explicit_path_without_the_files_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    # $DEEPFACTOR_DATA holds a valid copy, but the user named another folder: a typo
    # must not silently fit other files.
    good = tmp_path / "good" / "ml-100k"
    good.mkdir(parents=True)
    (good / "u.data").write_text("1\t1\t5\t0\n")
    monkeypatch.setenv("DEEPFACTOR_DATA", str(tmp_path / "good"))
    with pytest.raises(DatasetNotFoundError, match="given path"):
        resolve_dataset("ml-100k", tmp_path / "typo", download=False)


# ------------------------------------------------------- the larger MovieLens releases

#: The MD5 sums GroupLens publishes beside each archive, as the registry must hold them.
PUBLISHED_MD5 = {
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
}


@pytest.mark.parametrize("name, marker", [
    ("ml-1m", "ratings.dat"), ("ml-10m", "ratings.dat"), ("ml-20m", "ratings.csv"),
    ("ml-25m", "ratings.csv"), ("ml-latest-small", "ratings.csv"),
])
def test_registry_knows_the_larger_releases(name, marker):
    spec = DATASETS[name]
    assert spec.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
    assert spec.marker == marker and spec.md5 == PUBLISHED_MD5.get(name)


def ml10m_zip(root: Path) -> Path:
    ratings = "1::122::5::838985046\n1::185::4.5::838983525\n"
    return build_zip(root / "ml-10m.zip", {"ml-10M100K/ratings.dat": ratings,
                                           "ml-10M100K/movies.dat": "122::Boomerang::Comedy\n"})


def test_ml10m_archive_unpacks_from_its_own_folder_name(server, tmp_path):
    root, base_url = server
    spec = dataclasses.replace(spec_for(ml10m_zip(root), f"{base_url}/ml-10m.zip"),
                               name="ml-10m", marker="ratings.dat", folder="ml-10M100K")
    cache = tmp_path / "cache"
    folder = resolve_dataset("ml-10m", spec=spec, cache_dir=cache, progress=False)

    assert folder == cache / "ml-10m"
    assert sorted(p.name for p in folder.iterdir()) == ["movies.dat", "ratings.dat"]


def test_ml10m_found_under_its_archive_folder_name(tmp_path, monkeypatch):
    unpacked = tmp_path / "data" / "ml-10M100K"
    unpacked.mkdir(parents=True)
    (unpacked / "ratings.dat").write_text("1::2::3::4\n")
    monkeypatch.setenv("DEEPFACTOR_DATA", str(tmp_path / "data"))
    cache = tmp_path / "cache"

    assert resolve_dataset("ml-10m", download=False, cache_dir=cache) == unpacked
    assert resolve_dataset("ml-10m", tmp_path / "data", download=False,
                           cache_dir=cache) == unpacked
