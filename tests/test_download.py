"""Download, verification and safe extraction of dataset archives, all offline (archives served from 127.0.0.1)."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import stat
import struct
import tarfile
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from busflow.data import download
from busflow.data.download import DownloadError, download_file, fetch_archive, safe_extract, sha256_of
from busflow.errors import DatasetError

CONTENT = {"busi/benign/a.png": b"benign image " * 50, "busi/normal/b.png": b"normal image " * 40}
LIMITS = {"max_download_bytes": 1 << 20, "max_extract_bytes": 1 << 20, "max_members": 100}


# ------------------------------------------------------------------------------------------- helpers


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def tar_member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data)
    return info, io.BytesIO(data) if kind == tarfile.REGTYPE else None


def make_tar(path: Path, members: list[tuple]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, data)
    return path


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its content (None for directories)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------- server


class ArchiveHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` at /files/<name>; /truncated/<name> declares the full length then drops the
    connection halfway; /nolength/<name> sends no Content-Length; anything else is a 404."""

    files: dict[str, bytes] = {}
    hits: Counter = Counter()

    def do_GET(self) -> None:  # noqa: N802
        self.hits[self.path] += 1
        route, _, name = self.path.lstrip("/").partition("/")
        data = self.files.get(name)
        if data is None or route not in ("files", "truncated", "nolength"):
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        if route != "nolength":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if route == "truncated" else data)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[ArchiveHandler]]]:
    handler = type("Handler", (ArchiveHandler,), {"files": {}, "hits": Counter()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def busi_zip(tmp_path: Path, server: tuple[str, type[ArchiveHandler]]) -> tuple[str, str, bytes]:
    """URL, sha256 and bytes of a small dataset zip served at /files/Dataset_BUSI.zip."""
    base, handler = server
    data = make_zip(tmp_path / "built.zip", CONTENT).read_bytes()
    handler.files["Dataset_BUSI.zip"] = data
    return f"{base}/files/Dataset_BUSI.zip", digest(data), data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ------------------------------------------------------------------------------------------ download


def test_sha256_of_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 5000)
    assert sha256_of(path, chunk_size=1000) == digest(b"x" * 5000)


def test_errors_are_dataset_errors() -> None:
    assert issubclass(DownloadError, DatasetError) and issubclass(download.TransferError, DownloadError)


def test_download_verifies_and_reports_progress(tmp_path: Path, busi_zip) -> None:
    url, sha, data = busi_zip
    calls: list[tuple[int, int | None]] = []
    destination = tmp_path / "cache" / "busi.zip"
    got = download_file(url, destination, sha256=sha.upper(), max_bytes=1 << 20,
                        progress=lambda done, total: calls.append((done, total)))
    assert got == sha and destination.read_bytes() == data
    assert calls[-1] == (len(data), len(data))
    assert leftovers(destination.parent) == ["busi.zip"]


def test_download_reuses_verified_file_without_request(tmp_path: Path, busi_zip, server) -> None:
    url, sha, _ = busi_zip
    destination = tmp_path / "busi.zip"
    download_file(url, destination, sha256=sha, max_bytes=1 << 20)
    download_file(url, destination, sha256=sha, max_bytes=1 << 20)
    assert server[1].hits["/files/Dataset_BUSI.zip"] == 1


def test_download_replaces_stale_file(tmp_path: Path, busi_zip) -> None:
    url, sha, data = busi_zip
    destination = tmp_path / "busi.zip"
    destination.write_bytes(b"stale partial junk")
    assert download_file(url, destination, sha256=sha, max_bytes=1 << 20) == sha
    assert destination.read_bytes() == data


def test_checksum_mismatch_leaves_nothing(tmp_path: Path, busi_zip) -> None:
    url, sha, _ = busi_zip
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=f"checksum mismatch.*{wrong}.*{sha}"):
        download_file(url, tmp_path / "dl" / "busi.zip", sha256=wrong, max_bytes=1 << 20)
    assert leftovers(tmp_path / "dl") == []


def test_malformed_sha256_is_rejected(tmp_path: Path, busi_zip) -> None:
    with pytest.raises(DownloadError, match="64-digit"):
        download_file(busi_zip[0], tmp_path / "busi.zip", sha256="abc", max_bytes=1 << 20)


def test_interrupted_transfer_leaves_no_file(tmp_path: Path, busi_zip, server) -> None:
    url = busi_zip[0].replace("/files/", "/truncated/")
    with pytest.raises(download.TransferError, match="interrupted after"):
        download_file(url, tmp_path / "dl" / "busi.zip", sha256=None, max_bytes=1 << 20)
    assert server[1].hits["/truncated/Dataset_BUSI.zip"] == 1
    assert leftovers(tmp_path / "dl") == []


@pytest.mark.parametrize("route", ["files", "nolength"])
def test_body_over_max_bytes_is_refused(tmp_path: Path, busi_zip, route: str) -> None:
    url, _, data = busi_zip
    with pytest.raises(DownloadError, match="limit of 100 bytes"):
        download_file(url.replace("/files/", f"/{route}/"), tmp_path / "dl" / "b.zip", sha256=None, max_bytes=100)
    assert leftovers(tmp_path / "dl") == []
    # the same body within the limit is accepted on either route
    assert download_file(url.replace("/files/", f"/{route}/"), tmp_path / "ok.zip", sha256=None,
                         max_bytes=len(data)) == digest(data)


def test_http_404_is_an_error(tmp_path: Path, server) -> None:
    with pytest.raises(download.TransferError, match="HTTP error 404"):
        download_file(f"{server[0]}/files/missing.zip", tmp_path / "dl" / "m.zip", sha256=None, max_bytes=1000)
    assert leftovers(tmp_path / "dl") == []


def test_file_url_works(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "local.zip", CONTENT)
    got = download_file(source.as_uri(), tmp_path / "copy.zip", sha256=None, max_bytes=1 << 20)
    assert got == sha256_of(source) and (tmp_path / "copy.zip").read_bytes() == source.read_bytes()


def test_unsupported_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        download_file("ftp://example.org/a.zip", tmp_path / "a.zip", sha256=None, max_bytes=10)


# ----------------------------------------------------------------------------------------- extraction


def test_extracts_zip_and_tar_gz(tmp_path: Path) -> None:
    zipped = make_zip(tmp_path / "a.zip", CONTENT)
    tarred = make_tar(tmp_path / "a.tgz", [tar_member(n, d) for n, d in CONTENT.items()])
    for archive in (zipped, tarred):
        target = tmp_path / f"out_{archive.name}"
        safe_extract(archive, target, max_total_bytes=1 << 20, max_members=10)
        assert {k: v for k, v in tree(target).items() if v is not None} == CONTENT
    assert leftovers(tmp_path) == ["a.tgz", "a.zip", "out_a.tgz", "out_a.zip"]  # no temporary directories left


def test_successful_extraction_replaces_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "old").mkdir(parents=True)
    (target / "old" / "stale.txt").write_text("stale")
    safe_extract(make_zip(tmp_path / "a.zip", CONTENT), target, max_total_bytes=1 << 20, max_members=10)
    assert sorted(k for k, v in tree(target).items() if v is not None) == sorted(CONTENT)


def zip_symlink(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        info = zipfile.ZipInfo("link")
        info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, b"../../outside")
    return path


def bad_archives(tmp_path: Path) -> dict[str, tuple[Path, str, str]]:
    """Archive, offending member and expected reason of each unsafe archive, keyed by case."""
    outside = str(tmp_path / "evil_abs")

    def fine() -> tuple:
        return tar_member("ok/fine.txt", b"fine")

    return {
        "zip_dotdot": (make_zip(tmp_path / "dotdot.zip", {"ok.txt": b"x", "../evil": b"evil"}), "../evil", r"'\.\.'"),
        "tar_dotdot": (make_tar(tmp_path / "dotdot.tgz", [fine(), tar_member("a/../../evil", b"evil")]),
                       "a/../../evil", r"'\.\.'"),
        "zip_absolute": (make_zip(tmp_path / "abs.zip", {"ok.txt": b"x", outside: b"evil"}), outside, "absolute"),
        "tar_absolute": (make_tar(tmp_path / "abs.tgz", [fine(), tar_member(outside, b"evil")]), outside, "absolute"),
        "zip_drive": (make_zip(tmp_path / "drive.zip", {"ok.txt": b"x", "C:\\evil.txt": b"evil"}), "C:\\evil.txt",
                      "drive letter"),
        "tar_symlink": (make_tar(tmp_path / "sym.tgz", [fine(), tar_member("link", kind=tarfile.SYMTYPE,
                                                                         linkname=str(tmp_path)),
                                                        tar_member("link/evil", b"evil")]), "link", "symlink"),
        "tar_hardlink": (make_tar(tmp_path / "hard.tgz", [fine(), tar_member("passwd", kind=tarfile.LNKTYPE,
                                                                           linkname="/etc/passwd")]), "passwd",
                         "hardlink"),
        "tar_fifo": (make_tar(tmp_path / "fifo.tgz", [fine(), tar_member("pipe", kind=tarfile.FIFOTYPE)]), "pipe",
                     "fifo"),
        "tar_device": (make_tar(tmp_path / "dev.tgz", [fine(), tar_member("null", kind=tarfile.CHRTYPE)]), "null",
                       "device"),
        "zip_symlink": (zip_symlink(tmp_path / "sym.zip"), "link", "symlink"),
        "zip_too_many": (make_zip(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(6)}), "f5.txt",
                         "more than 5 members"),
        "tar_too_many": (make_tar(tmp_path / "many.tgz", [tar_member(f"f{i}.txt", b"x") for i in range(6)]), "f5.txt",
                         "more than 5 members"),
        "zip_declared_size": (make_zip(tmp_path / "big.zip", {"small.txt": b"s" * 400, "big.txt": b"b" * 700}),
                              "big.txt", "declared sizes exceed the limit of 1000 bytes"),
        "tar_declared_size": (make_tar(tmp_path / "big.tgz", [tar_member("big.bin", b"\0" * 1001)]), "big.bin",
                              "declared sizes exceed"),
    }


CASES = ["zip_dotdot", "tar_dotdot", "zip_absolute", "tar_absolute", "zip_drive", "tar_symlink", "tar_hardlink",
         "tar_fifo", "tar_device", "zip_symlink", "zip_too_many", "tar_too_many", "zip_declared_size",
         "tar_declared_size"]


@pytest.mark.parametrize("case", CASES)
def test_unsafe_archive_is_refused(tmp_path: Path, case: str) -> None:
    archive, member, reason = bad_archives(tmp_path)[case]
    before = tree(tmp_path)
    target = tmp_path / "dataset"
    with pytest.raises(DownloadError, match=reason) as caught:
        safe_extract(archive, target, max_total_bytes=1000, max_members=5)
    message = str(caught.value)
    assert str(archive) in message and repr(member) in message
    assert not target.exists()
    assert tree(tmp_path) == before  # nothing written anywhere, including outside the target
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("case", ["zip_dotdot", "tar_symlink", "zip_declared_size"])
def test_existing_target_survives_failed_extraction(tmp_path: Path, case: str) -> None:
    archive = bad_archives(tmp_path)[case][0]
    target = tmp_path / "dataset"
    (target / "benign").mkdir(parents=True)
    (target / "benign" / "keep.png").write_bytes(b"precious")
    before = tree(target)
    with pytest.raises(DownloadError):
        safe_extract(archive, target, max_total_bytes=1000, max_members=5)
    assert tree(target) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dataset.")] == []


def lying_zip(path: Path, actual: bytes, declared: int) -> Path:
    """A stored zip whose headers declare ``declared`` bytes for a member holding ``actual``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("bomb.bin", actual)
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<II", raw, central + 20, declared, declared)  # compressed and uncompressed size
    struct.pack_into("<II", raw, 18, declared, declared)  # local header sizes
    path.write_bytes(bytes(raw))
    return path


def test_lying_zip_header_cannot_exceed_the_bound(tmp_path: Path) -> None:
    archive = lying_zip(tmp_path / "lie.zip", b"A" * 5000, declared=10)
    assert zipfile.ZipFile(archive).getinfo("bomb.bin").file_size == 10
    with pytest.raises(DownloadError, match="'bomb.bin'"):
        safe_extract(archive, tmp_path / "dataset", max_total_bytes=1000, max_members=5)
    assert not (tmp_path / "dataset").exists() and leftovers(tmp_path) == ["lie.zip"]


@pytest.mark.parametrize("suffix", ["zip", "tgz"])
def test_actual_bytes_are_counted_when_headers_lie(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   suffix: str) -> None:
    members = {"small.txt": b"s" * 10, "big.txt": b"b" * 3000}
    archive = (make_zip(tmp_path / "a.zip", members) if suffix == "zip" else
               make_tar(tmp_path / "a.tgz", [tar_member(n, d) for n, d in members.items()]))
    monkeypatch.setattr(download, "_declared_size", lambda member: 0)  # every header claims to be empty
    with pytest.raises(DownloadError, match="'big.txt'.*exceed max_total_bytes"):
        safe_extract(archive, tmp_path / "dataset", max_total_bytes=1000, max_members=5)
    assert not (tmp_path / "dataset").exists() and leftovers(tmp_path) == [archive.name]


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip file at all")
    with pytest.raises(DownloadError, match="junk.zip"):
        safe_extract(junk, tmp_path / "dataset", max_total_bytes=1000, max_members=5)
    assert not (tmp_path / "dataset").exists()


# ------------------------------------------------------------------------------------------- fetch


def test_fetch_archive_downloads_verifies_extracts(tmp_path: Path, busi_zip, capsys) -> None:
    url, sha, data = busi_zip
    target = tmp_path / "raw"
    record = fetch_archive(name="busi", url=url, sha256=sha, cache_dir=tmp_path / "cache", target=target, **LIMITS)
    archive = tmp_path / "cache" / "busi" / "Dataset_BUSI.zip"
    assert record == {"name": "busi", "url": url, "sha256": sha, "sha256_pinned": True, "bytes": len(data),
                      "archive": str(archive)}
    assert (target / "busi" / "benign" / "a.png").read_bytes() == CONTENT["busi/benign/a.png"]
    err = capsys.readouterr().err
    assert "100%" in err and "warning" not in err


def test_fetch_archive_reuses_cache(tmp_path: Path, busi_zip, server) -> None:
    url, sha, _ = busi_zip
    for target in (tmp_path / "raw1", tmp_path / "raw2"):
        fetch_archive(name="busi", url=url, sha256=sha, cache_dir=tmp_path / "cache", target=target, **LIMITS)
    assert server[1].hits["/files/Dataset_BUSI.zip"] == 1
    assert tree(tmp_path / "raw1") == tree(tmp_path / "raw2") != {}


def test_fetch_archive_unpinned_warns_with_digest(tmp_path: Path, busi_zip, server, capsys) -> None:
    url, sha, _ = busi_zip
    record = fetch_archive(name="busbra", url=url, sha256=None, cache_dir=tmp_path / "c", target=tmp_path / "r",
                           **LIMITS)
    assert record["sha256"] == sha and record["sha256_pinned"] is False
    err = capsys.readouterr().err
    assert "data.busbra.sha256" in err and sha in err
    # an archive placed in the cache (by a previous run or by hand) is used without a new request
    fetch_archive(name="busbra", url=url, sha256=None, cache_dir=tmp_path / "c", target=tmp_path / "r", **LIMITS)
    assert server[1].hits["/files/Dataset_BUSI.zip"] == 1


def test_fetch_archive_checksum_mismatch(tmp_path: Path, busi_zip) -> None:
    url = busi_zip[0]
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch_archive(name="busi", url=url, sha256="f" * 64, cache_dir=tmp_path / "c", target=tmp_path / "r", **LIMITS)
    assert leftovers(tmp_path / "c" / "busi") == [] and not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", ["unreachable", "404"])
def test_fetch_archive_network_failure_gives_manual_steps(tmp_path: Path, server, where: str) -> None:
    url = (f"http://127.0.0.1:{free_port()}/Dataset_BUSI.zip" if where == "unreachable"
           else f"{server[0]}/files/Dataset_BUSI.zip")
    sha = "b2ce09f6063a31a73f628b6a6ee1245187cbaec225e93e563735691d68654de7"
    with pytest.raises(DownloadError) as caught:
        fetch_archive(name="busi", url=url, sha256=sha, cache_dir=tmp_path / "c", target=tmp_path / "r",
                      timeout_s=5, **LIMITS)
    message = str(caught.value)
    cache_path = tmp_path / "c" / "busi" / "Dataset_BUSI.zip"
    for needle in (f"download {url} in a browser", "sha256sum", sha, "data.busi.path: /path/to/the/extracted/folder",
                   str(cache_path)):
        assert needle in message
    assert ("cannot reach" in message) if where == "unreachable" else ("HTTP error 404" in message)
    assert not cache_path.exists() and not (tmp_path / "r").exists()


def test_manual_steps_without_pin_say_how_to_pin() -> None:
    text = download.manual_steps("busbra", "https://zenodo.org/x.zip", None, Path("/c/busbra/x.zip"))
    assert "set data.busbra.sha256" in text and "/c/busbra/x.zip" in text


def test_stderr_progress_prints_every_ten_percent(capsys) -> None:
    progress = download.StderrProgress("dl")
    for done in range(0, 1001, 25):
        progress(done, 1000)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == [f"{p}%" for p in range(10, 101, 10)]
