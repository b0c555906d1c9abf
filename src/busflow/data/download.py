"""Fetch a dataset archive, verify it and extract it safely (the real-data half of the ``download`` stage).

Everything here is standard library. Downloads stream to a temporary file beside the destination and are
renamed only once the size bound and the checksum hold; extraction goes member by member into a temporary
directory beside the target, after every member name, type, the member count and the declared sizes have
been checked, and while the bytes actually written are counted.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import stat
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from busflow import __version__
from busflow.errors import DatasetError
from busflow.io import atomic_dir, atomic_path

CHUNK_SIZE = 1 << 20
USER_AGENT = f"busflow/{__version__} (+python-urllib)"
SCHEMES = ("http", "https", "file")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DRIVE = re.compile(r"^[A-Za-z]:")
# What a corrupt or unusual archive raises while being read. zipfile raises RuntimeError for an encrypted
# member, and its own error type (listed below) for a compression method it cannot decode.
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError,
                   RuntimeError, NotImplementedError, OSError)

Progress = Callable[[int, "int | None"], None]


class DownloadError(DatasetError):
    """A dataset archive could not be downloaded, verified or safely extracted."""


class TransferError(DownloadError):
    """The server could not be reached, answered with an HTTP error, or the transfer broke off."""


# --------------------------------------------------------------------------------------------- download


def sha256_of(path: Path, chunk_size: int = CHUNK_SIZE) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _normalize_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = str(sha256).strip().lower()
    if not _SHA256.match(value):
        raise DownloadError(f"sha256 {sha256!r} is not a 64-digit hexadecimal digest")
    return value


def _check_scheme(url: str) -> None:
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in SCHEMES:
        raise DownloadError(f"{url}: unsupported URL scheme '{scheme}' (use one of {', '.join(SCHEMES)})")


def _content_length(response: Any) -> int | None:
    try:
        length = int(response.headers.get("Content-Length", ""))
    except (TypeError, ValueError):
        return None
    return length if length >= 0 else None


def _stream(response: Any, sink: IO[bytes], *, url: str, max_bytes: int, progress: Progress | None) -> str:
    """Copy the response body to ``sink``; return its sha256. Enforces max_bytes and Content-Length."""
    total = _content_length(response)
    if total is not None and total > max_bytes:
        raise DownloadError(f"{url}: archive is {total} bytes, above the limit of {max_bytes} bytes")
    digest, done = hashlib.sha256(), 0
    while chunk := response.read(CHUNK_SIZE):
        done += len(chunk)
        if done > max_bytes:
            raise DownloadError(f"{url}: body exceeds the limit of {max_bytes} bytes; download refused")
        digest.update(chunk)
        sink.write(chunk)
        if progress is not None:
            progress(done, total)
    if total is not None and done < total:
        raise TransferError(f"{url}: transfer interrupted after {done} of {total} bytes")
    return digest.hexdigest()


def _fetch_to(url: str, path: Path, *, max_bytes: int, timeout_s: float, progress: Progress | None) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response, path.open("wb") as sink:
            return _stream(response, sink, url=url, max_bytes=max_bytes, progress=progress)
    except urllib.error.HTTPError as error:
        error.close()
        raise TransferError(f"{url}: HTTP error {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise TransferError(f"{url}: cannot reach the server ({error.reason})") from error
    except (OSError, http.client.HTTPException) as error:
        raise TransferError(f"{url}: transfer failed ({type(error).__name__}: {error})") from error


def download_file(url: str, destination: Path, *, sha256: str | None, max_bytes: int, timeout_s: float = 60.0,
                  progress: Progress | None = None) -> str:
    """Stream ``url`` to a temporary file beside ``destination``, verify it, then rename; return its sha256.

    A destination that already holds the expected sha256 is reused without downloading; any other file there
    is discarded. On any failure (checksum, truncation, size bound, HTTP error, unreachable host) a
    DownloadError is raised and neither ``destination`` nor a temporary file is left behind.
    """
    expected = _normalize_sha256(sha256)
    destination = Path(destination)
    _check_scheme(url)
    if expected is not None and destination.is_file() and sha256_of(destination) == expected:
        return expected
    destination.unlink(missing_ok=True)
    with atomic_path(destination) as tmp:
        actual = _fetch_to(url, tmp, max_bytes=max_bytes, timeout_s=timeout_s, progress=progress)
        if expected is not None and actual != expected:
            raise DownloadError(f"{url}: checksum mismatch: expected sha256 {expected}, got {actual}")
    return actual


class StderrProgress:
    """Progress callback printing a plain stderr line every 10 % (or every 16 MiB when the size is unknown)."""

    def __init__(self, label: str, unknown_step_bytes: int = 16 << 20) -> None:
        self.label, self.step = label, unknown_step_bytes
        self.next_percent, self.next_bytes = 10, unknown_step_bytes

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            percent = done * 100 // total
            if percent >= self.next_percent:
                self._print(f"{percent}% ({done / 2**20:.1f} of {total / 2**20:.1f} MiB)")
                self.next_percent = percent // 10 * 10 + 10
        elif done >= self.next_bytes:
            self._print(f"{done / 2**20:.1f} MiB")
            self.next_bytes = (done // self.step + 1) * self.step

    def _print(self, text: str) -> None:
        print(f"{self.label}: {text}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class _Member:
    """One archive member that passed the name and type checks."""

    name: str
    parts: tuple[str, ...]
    is_dir: bool
    size: int
    open: Callable[[], IO[bytes]]


def _refuse(archive: Path, name: str, reason: str) -> DownloadError:
    return DownloadError(f"{archive}: refusing member {name!r}: {reason}")


def _safe_parts(archive: Path, name: str) -> tuple[str, ...]:
    """Relative path components of a member name; refuse absolute, drive-letter and '..' names."""
    unified = name.replace("\\", "/")
    if "\x00" in unified:
        raise _refuse(archive, name, "NUL byte in the name")
    if unified.startswith("/"):
        raise _refuse(archive, name, "absolute path")
    if _DRIVE.match(unified):
        raise _refuse(archive, name, "drive letter in the path")
    parts = tuple(part for part in unified.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _refuse(archive, name, "'..' component escapes the target")
    return parts


def _declared_size(member: _Member) -> int:
    return 0 if member.is_dir else member.size


def _tar_kind(info: tarfile.TarInfo) -> str | None:
    """None for a regular file or directory, else why the member type is refused."""
    if info.isreg() or info.isdir():
        return None
    if info.issym():
        return f"symlink to {info.linkname!r}"
    if info.islnk():
        return f"hardlink to {info.linkname!r}"
    if info.ischr() or info.isblk():
        return "device file"
    if info.isfifo():
        return "fifo"
    return f"unsupported member type {info.type!r}"


def _tar_members(archive: Path, tar: tarfile.TarFile, max_members: int) -> Iterator[_Member]:
    for count, info in enumerate(tar, start=1):
        if count > max_members:
            raise _refuse(archive, info.name, f"more than {max_members} members")
        if (reason := _tar_kind(info)) is not None:
            raise _refuse(archive, info.name, reason)
        parts = _safe_parts(archive, info.name)
        yield _Member(info.name, parts, info.isdir(), info.size, lambda info=info: tar.extractfile(info))


def _zip_kind(info: zipfile.ZipInfo) -> str | None:
    """None for a regular file or directory, else why the member type (from the unix mode) is refused."""
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind in (0, stat.S_IFREG, stat.S_IFDIR):
        return None
    return "symlink" if kind == stat.S_IFLNK else f"special file (mode {oct(kind)})"


def _zip_members(archive: Path, zf: zipfile.ZipFile, max_members: int) -> Iterator[_Member]:
    for count, info in enumerate(zf.infolist(), start=1):
        if count > max_members:
            raise _refuse(archive, info.filename, f"more than {max_members} members")
        if (reason := _zip_kind(info)) is not None:
            raise _refuse(archive, info.filename, reason)
        parts = _safe_parts(archive, info.filename)
        is_dir = info.is_dir() or stat.S_ISDIR(info.external_attr >> 16)
        yield _Member(info.filename, parts, is_dir, info.file_size, lambda info=info: zf.open(info))


def _plan(archive: Path, members: Iterator[_Member], max_total_bytes: int) -> list[_Member]:
    """Check every member and the declared total size before anything is written."""
    planned, total = [], 0
    for member in members:
        total += _declared_size(member)
        if total > max_total_bytes:
            raise _refuse(archive, member.name, f"declared sizes exceed the limit of {max_total_bytes} bytes")
        if not member.parts and not member.is_dir:
            raise _refuse(archive, member.name, "empty file name")
        planned.append(member)
    return planned


def _copy_counted(archive: Path, member: _Member, path: Path, budget: int) -> int:
    """Write one file member, counting actual bytes against ``budget``; return the bytes written."""
    written = 0
    with member.open() as source, path.open("wb") as sink:
        while chunk := source.read(CHUNK_SIZE):
            written += len(chunk)
            if written > budget:
                raise _refuse(archive, member.name, "extracted bytes exceed max_total_bytes (header lied)")
            sink.write(chunk)
    return written


def _extract_into(archive: Path, members: list[_Member], root: Path, max_total_bytes: int) -> None:
    budget = max_total_bytes
    for member in members:
        path = root.joinpath(*member.parts)
        try:
            if member.is_dir:
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            budget -= _copy_counted(archive, member, path, budget)
        except _ARCHIVE_ERRORS as error:
            raise _refuse(archive, member.name, f"cannot extract ({type(error).__name__}: {error})") from error


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise DownloadError(f"{archive}: not a .zip or .tar(.gz) archive")


def safe_extract(archive: Path, target: Path, *, max_total_bytes: int, max_members: int) -> None:
    """Extract a .zip or .tar/.tar.gz/.tgz into ``target`` atomically, refusing unsafe members.

    Refused (DownloadError naming the member): absolute paths, drive letters, '..' components, symlinks,
    hardlinks, devices and fifos, more than ``max_members`` members, declared or actual sizes above
    ``max_total_bytes``. On failure nothing is written outside a temporary directory beside ``target``,
    which is removed; an existing ``target`` is replaced only on success.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DownloadError(f"{archive}: archive not found")
    kind = _archive_kind(archive)
    try:
        with _open_archive(archive, kind) as handle:
            members = _plan(archive, _list_members(archive, handle, max_members), max_total_bytes)
            with atomic_dir(target) as tmp:
                _extract_into(archive, members, tmp, max_total_bytes)
    except _ARCHIVE_ERRORS as error:
        raise DownloadError(f"{archive}: cannot extract into {target} ({type(error).__name__}: {error})") from error


def _open_archive(archive: Path, kind: str) -> zipfile.ZipFile | tarfile.TarFile:
    return zipfile.ZipFile(archive) if kind == "zip" else tarfile.open(archive, "r:*")


def _list_members(archive: Path, handle: zipfile.ZipFile | tarfile.TarFile, max_members: int) -> Iterator[_Member]:
    if isinstance(handle, zipfile.ZipFile):
        return _zip_members(archive, handle, max_members)
    return _tar_members(archive, handle, max_members)


# ------------------------------------------------------------------------------------------------ fetch


def archive_path(cache_dir: Path, name: str, url: str) -> Path:
    """Where the archive of dataset ``name`` is cached: ``cache_dir/<name>/<file name from the URL>``."""
    filename = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if filename in ("", ".", ".."):
        filename = f"{name}.archive"
    return Path(cache_dir) / name / filename


def manual_steps(name: str, url: str, sha256: str | None, cache_path: Path) -> str:
    """How to fetch the archive by hand when the automatic download fails."""
    check = (f"check that `sha256sum <archive>` prints {sha256}" if sha256 else
             f"run `sha256sum <archive>` and set data.{name}.sha256 to what it prints")
    return (f"Download it manually instead:\n"
            f"  1. download {url} in a browser;\n"
            f"  2. {check};\n"
            f"  3. extract it and set data.{name}.path: /path/to/the/extracted/folder in params.yaml,\n"
            f"     or place the archive at {cache_path} and re-run.")


def _unpinned_warning(name: str, archive: Path, computed: str) -> str:
    return (f"busflow: warning: data.{name}.sha256 is not set, so {archive} was used unverified.\n"
            f"  Its sha256 is {computed}; pin it in params.yaml under data.{name}.sha256:\n"
            f"    data:\n      {name}:\n        sha256: {computed}")


def _obtain_archive(name: str, url: str, sha256: str | None, archive: Path, *, max_download_bytes: int,
                    timeout_s: float) -> str:
    """Reuse or download the archive; return its sha256. Network failures carry the manual steps."""
    if sha256 is None and archive.is_file() and archive.stat().st_size <= max_download_bytes:
        return sha256_of(archive)  # unpinned but complete (downloads land atomically), e.g. placed by hand
    try:
        return download_file(url, archive, sha256=sha256, max_bytes=max_download_bytes, timeout_s=timeout_s,
                             progress=StderrProgress(f"downloading {name}"))
    except TransferError as error:
        raise DownloadError(f"{name}: could not download {url}: {error}\n"
                            f"{manual_steps(name, url, sha256, archive)}") from error


def fetch_archive(*, name: str, url: str, sha256: str | None, cache_dir: Path, target: Path,
                  max_download_bytes: int, max_extract_bytes: int, max_members: int,
                  timeout_s: float = 60.0) -> dict[str, Any]:
    """Download (or reuse the verified cached archive in ``cache_dir``), verify, and extract into ``target``.

    Returns the provenance record {name, url, sha256, sha256_pinned, bytes, archive}. Without a pinned
    sha256 the archive is used, and stderr tells the user the computed digest to pin.
    """
    pinned = _normalize_sha256(sha256)
    archive = archive_path(cache_dir, name, url)
    computed = _obtain_archive(name, url, pinned, archive, max_download_bytes=max_download_bytes,
                               timeout_s=timeout_s)
    if pinned is None:
        print(_unpinned_warning(name, archive, computed), file=sys.stderr, flush=True)
    safe_extract(archive, target, max_total_bytes=max_extract_bytes, max_members=max_members)
    return {"name": name, "url": url, "sha256": computed, "sha256_pinned": pinned is not None,
            "bytes": archive.stat().st_size, "archive": str(archive)}
