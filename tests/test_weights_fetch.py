"""The pretrained-checkpoint catalogue and ``busflow weights``, all offline (files served from 127.0.0.1)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_download import ArchiveHandler, free_port

from busflow import weights
from busflow.cli import main
from busflow.errors import ModelFileError
from busflow.weights import CHECKPOINTS, PretrainedCheckpoint, fetch_weights, verify_weights, weights_dir

FIXTURES = Path(__file__).parent / "fixtures" / "weight_layouts"
PAYLOAD = b"pretrained weights " * 300
ENV_VARS = (weights.WEIGHTS_DIR_ENV, weights.URL_BASE_ENV, "TORCH_HOME")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_entry(name: str = "torchvision_fake", sha256: str | None = digest(PAYLOAD)) -> PretrainedCheckpoint:
    filename = "fake-0123abcd.pth"
    return PretrainedCheckpoint(name, "torchvision", "resnet50", "resnet", f"https://download.pytorch.org/models/{filename}",
                                sha256, filename, "torchvision", len(PAYLOAD))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, type[ArchiveHandler]]]:
    """A local server holding PAYLOAD as fake-0123abcd.pth; BUSFLOW_WEIGHTS_URL_BASE points at its /files route."""
    handler = type("Handler", (ArchiveHandler,), {"files": {"fake-0123abcd.pth": PAYLOAD}, "hits": Counter()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv(weights.URL_BASE_ENV, f"{base}/files/")
    try:
        yield base, handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> PretrainedCheckpoint:
    entry = fake_entry()
    monkeypatch.setitem(CHECKPOINTS, entry.name, entry)
    return entry


# ------------------------------------------------------------------------------------------ catalogue


def test_catalogue_names_have_fixtures_and_match_their_urls() -> None:
    assert len(CHECKPOINTS) == 15 and all(name == entry.name for name, entry in CHECKPOINTS.items())
    for name, entry in CHECKPOINTS.items():
        fixture = json.loads((FIXTURES / f"{name}.json").read_text())
        assert fixture["library"].split()[0] == entry.library == entry.format
        assert fixture["model"] == entry.model
        if entry.library == "torchvision":
            assert fixture["url"] == entry.url
        else:
            model, tag = fixture["weights"].split(".", 1)
            assert fixture["url"] == f"hf-hub:timm/{fixture['weights']}" and model == entry.model
            assert entry.url == f"https://huggingface.co/timm/{model}.{tag}/resolve/main/model.safetensors"
            assert entry.filename == f"{model}.{tag}.safetensors"


def test_pins_agree_with_the_file_names() -> None:
    for entry in CHECKPOINTS.values():
        assert entry.pin in ("full", "prefix"), entry.name
        if entry.library == "torchvision":
            assert entry.url.rsplit("/", 1)[1] == entry.filename
            prefix = entry.filename.rsplit("-", 1)[1].removesuffix(".pth")  # torch.hub's hash in the name
            assert entry.sha256.startswith(prefix), entry.name
        if entry.pin == "prefix":
            assert entry.library == "torchvision" and entry.filename.endswith(f"-{entry.sha256}.pth")


def test_entry_validation_and_pin_kinds() -> None:
    assert fake_entry().pin == "full"
    assert fake_entry(sha256="0123abcd").pin == "prefix"
    assert fake_entry(sha256=None).pin == "none"
    with pytest.raises(ValueError, match="lowercase hex"):
        fake_entry(sha256="0123ABCD")
    with pytest.raises(ValueError, match="family"):
        replace(fake_entry(), family="lenet")


# ------------------------------------------------------------------------------------------ cache dir


def test_weights_dir_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    env = {"BUSFLOW_WEIGHTS_DIR": str(tmp_path / "env"), "TORCH_HOME": str(tmp_path / "torch")}
    assert weights_dir(tmp_path / "explicit", env) == tmp_path / "explicit"
    assert weights_dir(None, env) == tmp_path / "env"
    assert weights_dir(None, {"TORCH_HOME": env["TORCH_HOME"]}) == tmp_path / "torch" / "hub" / "checkpoints"
    assert weights_dir(None, {}) == tmp_path / "home" / ".cache" / "busflow" / "weights"


def test_url_base_replaces_the_host() -> None:
    entry = CHECKPOINTS["torchvision_resnet50"]
    assert weights.download_url(entry, {}) == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert weights.download_url(entry, {weights.URL_BASE_ENV: "http://mirror/w/"}) == "http://mirror/w/resnet50-11ad3fa6.pth"


# ---------------------------------------------------------------------------------------------- fetch


def test_fetch_downloads_verifies_and_reuses(tmp_path: Path, mirror, fake) -> None:
    messages: list[str] = []
    path = fetch_weights(fake.name, tmp_path / "cache", log=messages.append)
    assert path == tmp_path / "cache" / fake.filename and path.read_bytes() == PAYLOAD
    assert fetch_weights(fake.name, tmp_path / "cache", log=messages.append) == path
    assert mirror[1].hits[f"/files/{fake.filename}"] == 1
    assert leftovers(tmp_path / "cache") == [fake.filename]
    assert "downloading" in messages[0] and "full sha256 pin" in messages[-1]


def test_fetch_uses_the_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake) -> None:
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / fake.filename).write_bytes(PAYLOAD)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(weights.URL_BASE_ENV, f"http://127.0.0.1:{free_port()}")  # nothing may be requested
    assert fetch_weights(fake.name, log=lambda _: None) == checkpoints / fake.filename


def test_checksum_mismatch_leaves_no_file(tmp_path: Path, mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = fake_entry(sha256="f" * 64)
    monkeypatch.setitem(CHECKPOINTS, entry.name, entry)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / entry.filename).write_bytes(b"stale")
    with pytest.raises(ModelFileError, match=f"checksum mismatch: expected sha256 {'f' * 64}, got {digest(PAYLOAD)}"):
        fetch_weights(entry.name, tmp_path / "cache", log=lambda _: None)
    assert leftovers(tmp_path / "cache") == []


def test_interrupted_transfer_leaves_no_file(tmp_path: Path, mirror, fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.URL_BASE_ENV, f"{mirror[0]}/truncated")
    with pytest.raises(ModelFileError, match="interrupted after"):
        fetch_weights(fake.name, tmp_path / "cache", log=lambda _: None)
    assert mirror[1].hits[f"/truncated/{fake.filename}"] == 1
    assert leftovers(tmp_path / "cache") == []


def test_offline_gives_the_manual_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake) -> None:
    monkeypatch.setenv(weights.URL_BASE_ENV, f"http://127.0.0.1:{free_port()}/models")
    url = weights.download_url(fake)
    with pytest.raises(ModelFileError) as caught:
        fetch_weights(fake.name, tmp_path / "cache", log=lambda _: None, timeout_s=5)
    message = str(caught.value)
    for needle in ("cannot reach", f"download {url}", fake.sha256, str(tmp_path / "cache" / fake.filename)):
        assert needle in message
    assert leftovers(tmp_path / "cache") == []


def test_prefix_pin_accepts_a_matching_file_and_rejects_another(tmp_path: Path, mirror, monkeypatch) -> None:
    good = fake_entry(sha256=digest(PAYLOAD)[:8])
    bad = fake_entry(name="torchvision_other", sha256="0123abcd")
    monkeypatch.setitem(CHECKPOINTS, good.name, good)
    monkeypatch.setitem(CHECKPOINTS, bad.name, bad)
    path = fetch_weights(good.name, tmp_path / "good", log=lambda _: None)
    assert verify_weights(path, good) == digest(PAYLOAD)
    with pytest.raises(ModelFileError, match=f"{path}: sha256 mismatch.*starting with 0123abcd, got {digest(PAYLOAD)}"):
        verify_weights(path, bad)
    with pytest.raises(ModelFileError, match="checksum mismatch: expected a sha256 starting with 0123abcd"):
        fetch_weights(bad.name, tmp_path / "bad", log=lambda _: None)
    assert leftovers(tmp_path / "bad") == []


def test_unpinned_entry_needs_sha256(tmp_path: Path, mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = fake_entry(name="timm_fake", sha256=None)
    monkeypatch.setitem(CHECKPOINTS, entry.name, entry)
    with pytest.raises(ModelFileError, match="no sha256 is pinned.*--sha256 HEX"):
        fetch_weights(entry.name, tmp_path, log=lambda _: None)
    with pytest.raises(ModelFileError, match="64-digit"):
        fetch_weights(entry.name, tmp_path, sha256="abc", log=lambda _: None)
    assert fetch_weights(entry.name, tmp_path, sha256=digest(PAYLOAD).upper(), log=lambda _: None).read_bytes() == PAYLOAD
    assert sum(mirror[1].hits.values()) == 1


def test_given_sha256_must_agree_with_the_pin(tmp_path: Path, fake) -> None:
    with pytest.raises(ModelFileError, match="contradicts"):
        fetch_weights(fake.name, tmp_path, sha256="e" * 64, log=lambda _: None)


def test_unknown_name_lists_the_catalogue(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="unknown pretrained checkpoint 'resnet9'.*torchvision_resnet50.*timm_resnet50"):
        fetch_weights("resnet9", tmp_path)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "resnet50-11ad3fa6.pth").write_bytes(b"x")
    assert main(["weights", "list", "--dest", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(CHECKPOINTS) and str(tmp_path) in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["torchvision_resnet50"][1:5] == ["resnet", "torchvision", "full", "resnet50-11ad3fa6.pth"]
    assert rows["torchvision_resnet50"][-1] == "present" and rows["timm_resnet50"][-1] == "absent"
    assert rows["torchvision_densenet201"][3] == "prefix"


def test_cli_fetch_prints_the_path(tmp_path: Path, mirror, fake, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "fetch", fake.name, "--dest", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / fake.filename)
    assert main(["weights", "fetch", "resnet9", "--dest", str(tmp_path)]) == 2
    assert "busflow weights: error: unknown pretrained checkpoint" in capsys.readouterr().err
