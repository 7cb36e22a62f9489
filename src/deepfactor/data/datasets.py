"""Named datasets: where their files are looked for, and a checksum-verified download.

:func:`resolve_dataset` returns the folder that holds a dataset's files. It looks,
in order, in an explicit path, in ``$DEEPFACTOR_DATA/<name>`` and in a per-user
cache folder, and only then downloads the official archive into the cache. The
download is written atomically, checked against the SHA-256 and MD5 sums in
:data:`DATASETS`, and unpacked without trusting the archive's member names.

MovieLens may not be redistributed, so deepfactor ships no data; the built-in
``synthetic`` dataset needs no files and runs offline.

Notes
-----
Member names are checked before anything is unpacked (no absolute paths, no
``..``, no symbolic links), but the unpacked size is not bounded: an archive whose
checksum is known is trusted not to be a zip bomb.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import platformdirs
from tqdm import tqdm

__all__ = [
    "DATASETS",
    "DATA_ENV_VAR",
    "DatasetIntegrityError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "default_cache_dir",
    "resolve_dataset",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Environment variable naming a folder that holds ``<name>/`` dataset folders.
DATA_ENV_VAR = "DEEPFACTOR_DATA"

#: How messages name the folder passed to :func:`resolve_dataset`.
_GIVEN_PATH = "the given path"

#: Bytes read from the network per chunk.
_CHUNK_BYTES = 1 << 16


class DatasetNotFoundError(FileNotFoundError):
    """No folder holds the dataset and it could not be downloaded."""


class DatasetIntegrityError(ValueError):
    """A downloaded archive has the wrong checksum or an unsafe member."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how to recognise its files.

    Attributes
    ----------
    name : str
        Folder name of the unpacked dataset, e.g. ``"ml-100k"``.
    url : str
        The archive to download.
    sha256, md5 : str or None
        Expected hex digests of the archive; each one given is checked.
    marker : str
        A file whose presence marks a folder as holding the dataset.
    folder : str or None
        The archive's top folder when it is not ``name`` (ML-10M unpacks to
        ``ml-10M100K/``); a folder of that name is also found where ``name`` is looked for.
    """

    name: str
    url: str
    sha256: str | None
    md5: str | None
    marker: str
    folder: str | None = None

    @property
    def archive_name(self) -> str:
        return PurePosixPath(self.url).name or f"{self.name}.zip"


#: Datasets that :func:`resolve_dataset` knows how to find and download.
#: Each MD5 is the one GroupLens publishes beside the archive (``<archive>.md5``), as
#: quoted by several independent public sources; none could be re-fetched from
#: grouplens.org when this was written (no network). The SHA-256 of ML-100K was taken
#: from public material and could not be re-checked offline either. ml-latest-small
#: has no checksum: GroupLens regenerates "latest" archives, and no published MD5 of
#: the current one was found, so its download is unverified (a warning says so).
_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
DATASETS: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(
        name="ml-100k",
        url=f"{_GROUPLENS}/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        md5="0e33842e24a9c977be4e0107933c0723",
        marker="u.data",
    ),
    "ml-1m": DatasetSpec("ml-1m", f"{_GROUPLENS}/ml-1m.zip", None,
                         "c4d9eecfca2ab87c1945afe126590906", "ratings.dat"),
    "ml-10m": DatasetSpec("ml-10m", f"{_GROUPLENS}/ml-10m.zip", None,
                          "ce571fd55effeba0271552578f2648bd", "ratings.dat",
                          folder="ml-10M100K"),
    "ml-20m": DatasetSpec("ml-20m", f"{_GROUPLENS}/ml-20m.zip", None,
                          "cd245b17a1ae2cc31bb14903e1204af3", "ratings.csv"),
    "ml-25m": DatasetSpec("ml-25m", f"{_GROUPLENS}/ml-25m.zip", None,
                          "6b51fb2759a8657d3bfcbfc42b592ada", "ratings.csv"),
    "ml-latest-small": DatasetSpec("ml-latest-small", f"{_GROUPLENS}/ml-latest-small.zip",
                                   None, None, "ratings.csv"),
}


def default_cache_dir() -> Path:
    """The per-user cache folder, e.g. ``~/.cache/deepfactor`` on Linux."""
    return Path(platformdirs.user_cache_dir("deepfactor"))


# ---------------------------------------------------------------------- looking


def _holding_folder(folder: Path, spec: DatasetSpec) -> Path | None:
    """``folder``, ``folder/<name>`` or ``folder/<spec.folder>`` holding the marker file."""
    names = (spec.name, spec.folder) if spec.folder else (spec.name,)
    for candidate in (folder, *(folder / name for name in names)):
        if (candidate / spec.marker).is_file():
            return candidate
    return None


def _candidates(
    spec: DatasetSpec, path: PathLike | None, cache_dir: Path
) -> list[tuple[str, Path]]:
    """The places to look, in order, each with how to name it in messages."""
    places = []
    if path is not None:
        places.append((_GIVEN_PATH, Path(path)))
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        places.append((f"${DATA_ENV_VAR}", Path(env) / spec.name))
        if spec.folder:  # the archive unpacked there as it comes
            places.append((f"${DATA_ENV_VAR}", Path(env) / spec.folder))
    places.append(("the cache", cache_dir / spec.name))
    return places


def _found(spec: DatasetSpec, places: list[tuple[str, Path]]) -> Path | None:
    for label, place in places:
        folder = _holding_folder(place, spec)
        if folder is not None:
            logger.debug("dataset %s found in %s: %s", spec.name, label, folder)
            return folder
    return None


# ------------------------------------------------------------------ downloading


def _download(url: str, target: Path, *, progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``target`` atomically (a temp file, then ``os.replace``)."""
    handle, part = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    try:
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(url, timeout=timeout) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, disable=not progress)
            with bar:
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(part, target)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise


def _digests(path: Path) -> dict[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            sha256.update(chunk)
            md5.update(chunk)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def _verify(archive: Path, spec: DatasetSpec) -> None:
    """Raise :class:`DatasetIntegrityError` unless every known digest matches."""
    actual = _digests(archive)
    for kind, expected in (("sha256", spec.sha256), ("md5", spec.md5)):
        if expected is not None and actual[kind] != expected.lower():
            raise DatasetIntegrityError(
                f"{archive}: {kind.upper()} is {actual[kind]}, expected {expected}; "
                f"the download from {spec.url} is corrupt or not the official archive"
            )


# ------------------------------------------------------------------- extracting


def _unsafe_reason(member: zipfile.ZipInfo) -> str | None:
    """Why ``member`` may not be extracted, or None when it is safe."""
    name = member.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]):
        return "an absolute path"
    if ".." in parts:
        return "a '..' component"
    if stat.S_ISLNK(member.external_attr >> 16):
        return "a symbolic link"
    return None


def _check_members(archive: Path, members: list[zipfile.ZipInfo]) -> None:
    for member in members:
        reason = _unsafe_reason(member)
        if reason is not None:
            raise DatasetIntegrityError(
                f"{archive}: refusing to extract member {member.filename!r}, "
                f"which has {reason}"
            )


def _extract(archive: Path, spec: DatasetSpec, destination: Path) -> None:
    """Unpack ``archive``'s ``<name>/`` folder to ``destination``, all or nothing.

    The archive is unpacked into a temporary folder beside ``destination`` and
    renamed into place only once complete, so an interrupted run leaves no
    half-filled dataset folder.
    """
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{spec.name}."))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                _check_members(archive, zf.infolist())
                zf.extractall(staging)
        except zipfile.BadZipFile as err:
            message = f"{archive}: not a zip archive ({err})"
            raise DatasetIntegrityError(message) from None
        unpacked = _holding_folder(staging, spec)
        if unpacked is None:
            raise DatasetIntegrityError(
                f"{archive}: the archive holds no {spec.folder or spec.name}/{spec.marker}"
            )
        _replace_folder(unpacked, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_folder(source: Path, destination: Path) -> None:
    """Rename ``source`` to ``destination``, first moving aside a stale copy."""
    if destination.exists():
        stale = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".stale."))
        os.replace(destination, stale / destination.name)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(source, destination)


def _cached_archive_ok(archive: Path, spec: DatasetSpec) -> bool:
    """Whether a verified archive is already in the cache; a corrupt one is removed."""
    if not archive.is_file():
        return False
    try:
        _verify(archive, spec)
    except DatasetIntegrityError:
        logger.warning("cached %s fails its checksum; downloading again", archive)
        archive.unlink()
        return False
    return True


def _fetch_into_cache(
    spec: DatasetSpec, cache_dir: Path, *, progress: bool, timeout: float
) -> Path:
    """Download (unless a verified archive is cached), verify and unpack ``spec``.

    An archive that fails its checksum or holds an unsafe member is deleted, so
    that the cache holds only archives that can be trusted.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / spec.archive_name
    destination = cache_dir / spec.name
    try:
        if not _cached_archive_ok(archive, spec):
            logger.info("downloading %s to %s", spec.url, archive)
            _download(spec.url, archive, progress=progress, timeout=timeout)
            if spec.sha256 is None and spec.md5 is None:
                logger.warning("%s has no known checksum; its download is not verified",
                               spec.name)
            _verify(archive, spec)
        _extract(archive, spec, destination)
    except DatasetIntegrityError:
        archive.unlink(missing_ok=True)
        raise
    logger.info("dataset %s is ready in %s", spec.name, destination)
    return destination


# ---------------------------------------------------------------------- public API


def _not_found(
    spec: DatasetSpec, places: list[tuple[str, Path]], why: str
) -> DatasetNotFoundError:
    looked = ", ".join(f"{place} ({label})" for label, place in places)
    if not os.environ.get(DATA_ENV_VAR):
        looked += f"; ${DATA_ENV_VAR} is not set"
    return DatasetNotFoundError(
        f"dataset {spec.name!r} not found: looked in {looked}; {why}. "
        f"Put the files at ${DATA_ENV_VAR}/{spec.name}/{spec.marker} or set the "
        "data path in the config; the built-in 'synthetic' dataset runs offline."
    )


def _one_line(error: BaseException) -> str:
    """A short, single-line reason for a failed fetch."""
    if isinstance(error, urllib.error.HTTPError):
        text = f"HTTP {error.code} {error.reason}"
    elif isinstance(error, urllib.error.URLError):
        text = str(error.reason)  # str(URLError) wraps it in "<urlopen error ...>"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def resolve_dataset(
    name: str,
    path: PathLike | None = None,
    *,
    download: bool = True,
    spec: DatasetSpec | None = None,
    cache_dir: PathLike | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """The folder that holds the files of dataset ``name``, downloading if needed.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`, e.g. ``"ml-100k"``.
    path : str or os.PathLike, optional
        A folder that holds the files, or that holds ``<name>/``. Looked in first.
    download : bool, default True
        Download into the cache when no folder has the files.
    spec : DatasetSpec, optional
        Overrides ``DATASETS[name]`` (URL, checksums), e.g. for a mirror.
    cache_dir : str or os.PathLike, optional
        Overrides :func:`default_cache_dir`.
    progress : bool, default True
        Show a tqdm bar while downloading.
    timeout : float, default 60.0
        Seconds to wait on the network before giving up.

    Returns
    -------
    pathlib.Path
        ``path`` (or ``path/<name>``) when ``path`` is given; otherwise the first of
        ``$DEEPFACTOR_DATA/<name>`` and ``<cache_dir>/<name>`` that holds the marker
        file (``u.data``, ``ratings.dat``, ``ratings.csv``), else ``<cache_dir>/<name>``
        after a successful download. For ML-10M, ``ml-10M100K`` (the archive's own
        folder name) is accepted wherever ``ml-10m`` is.

    Raises
    ------
    DatasetNotFoundError
        When an explicit ``path`` lacks the files, or when no folder holds them and
        downloading is off or fails; the one-line message says where it looked and
        where to put the files.
    DatasetIntegrityError
        When the downloaded archive fails its checksum (it is deleted) or holds
        an unsafe member (absolute path, ``..``, symbolic link).
    ValueError
        When ``name`` is unknown.
    """
    if spec is None:
        if name not in DATASETS:
            known = ", ".join(sorted(DATASETS))
            raise ValueError(
                f"unknown dataset {name!r}; known datasets: {known} "
                "(and 'synthetic', which is simulated and has no files)"
            )
        spec = DATASETS[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    places = _candidates(spec, path, cache)
    if path is not None and _holding_folder(Path(path), spec) is None:
        # An explicit path is what the user meant: falling back to other data on a
        # typo would silently fit the wrong files.
        raise DatasetNotFoundError(
            f"dataset {spec.name!r} not found in the given path {path}: it holds neither "
            f"{spec.marker} nor {spec.name}/{spec.marker}"
        )

    found = _found(spec, places)
    if found is not None:
        return found
    if not download:
        raise _not_found(spec, places, "downloading is switched off")
    try:
        return _fetch_into_cache(spec, cache, progress=progress, timeout=timeout)
    except OSError as err:  # urllib's URLError and socket timeouts are OSErrors
        why = f"fetching {spec.url} into {cache} failed ({_one_line(err)})"
        raise _not_found(spec, places, why) from err
