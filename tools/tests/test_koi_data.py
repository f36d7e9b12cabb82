"""tools/koi_data.py without the network: where a pinned .deb is looked for, and what a changed one does."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import koi_data  # noqa: E402

PYDOCS_TRAIN = koi_data.FILES["corpus/pydocs-train.txt"]


def test_pool_urls_follow_the_archive_layout():
    urls = koi_data.pool_urls(PYDOCS_TRAIN.source)
    assert urls == [
        "http://deb.debian.org/debian-security/pool/updates/main/p/python3.11/python3.11-doc_3.11.2-6%2Bdeb12u9_all.deb",
        "http://deb.debian.org/debian/pool/main/p/python3.11/python3.11-doc_3.11.2-6%2Bdeb12u9_all.deb",
    ]
    lib = koi_data.DebianPages(package="libfoo-doc", version="1:2.0-1", source="libfoo", folder="x", suffix=".txt")
    assert koi_data.pool_urls(lib)[1] == "http://deb.debian.org/debian/pool/main/libf/libfoo/libfoo-doc_2.0-1_all.deb"


def _fake_apt(available: dict[str, str]):
    """apt-get download that has only the specs in ``available`` (spec -> file name it writes)."""
    calls = []

    def apt(spec: str, into: Path) -> subprocess.CompletedProcess:
        calls.append(spec)
        if spec in available:
            (into / available[spec]).write_bytes(b"deb")
            return subprocess.CompletedProcess([], 0, "", "")
        return subprocess.CompletedProcess([], 100, "", f"E: Version '{spec}' for it was not found")

    return apt, calls


def test_pinned_version_from_apt_first(tmp_path, monkeypatch):
    apt, calls = _fake_apt({"python3.11-doc=3.11.2-6+deb12u9": "python3.11-doc_3.11.2-6+deb12u9_all.deb"})
    monkeypatch.setattr(koi_data, "_apt_download", apt)
    monkeypatch.setattr(koi_data, "_http_download", lambda url, into: pytest.fail("the pool is not needed"))
    path, pinned = koi_data.download_deb(PYDOCS_TRAIN.source, tmp_path, log=lambda m: None)
    assert pinned and path.name == "python3.11-doc_3.11.2-6+deb12u9_all.deb" and calls == ["python3.11-doc=3.11.2-6+deb12u9"]


def test_pinned_version_from_the_pool_when_apt_lists_lack_it(tmp_path, monkeypatch):
    apt, _ = _fake_apt({"python3.11-doc": "python3.11-doc_3.11.2-6+deb12u8_all.deb"})
    tried = []

    def http(url: str, into: Path) -> Path:
        tried.append(url)
        if "debian-security" in url:
            raise OSError("HTTP Error 404: Not Found")
        path = into / "python3.11-doc_3.11.2-6+deb12u9_all.deb"
        path.write_bytes(b"deb")
        return path

    monkeypatch.setattr(koi_data, "_apt_download", apt)
    monkeypatch.setattr(koi_data, "_http_download", http)
    path, pinned = koi_data.download_deb(PYDOCS_TRAIN.source, tmp_path, log=lambda m: None)
    assert pinned and path.name.endswith("deb12u9_all.deb") and len(tried) == 2


def test_current_version_is_the_last_resort_and_says_so(tmp_path, monkeypatch):
    apt, calls = _fake_apt({"python3.11-doc": "python3.11-doc_3.11.2-6+deb12u10_all.deb"})
    monkeypatch.setattr(koi_data, "_apt_download", apt)
    monkeypatch.setattr(koi_data, "_http_download", lambda url, into: (_ for _ in ()).throw(OSError("404")))
    path, pinned = koi_data.download_deb(PYDOCS_TRAIN.source, tmp_path, log=lambda m: None)
    assert not pinned and path.name.endswith("deb12u10_all.deb") and calls[-1] == "python3.11-doc"

    messages = []
    koi_data.verify(PYDOCS_TRAIN, b"newer text", path, pinned=False, log=messages.append)
    assert len(messages) == 1 and "newer package" in messages[0] and "corpus/pydocs-train.txt" in messages[0]


def test_pinned_bytes_must_match(tmp_path):
    deb = tmp_path / "python3.11-doc_3.11.2-6+deb12u9_all.deb"
    with pytest.raises(koi_data.DataError, match="corpus/pydocs-train.txt: sha256"):
        koi_data.verify(PYDOCS_TRAIN, b"not the corpus", deb, pinned=True)
    item = koi_data.DataFile("corpus/x.txt", hashlib.sha256(b"text").hexdigest(), PYDOCS_TRAIN.source)
    koi_data.verify(item, b"text", deb, pinned=True)  # the right bytes pass silently


def test_a_broken_download_leaves_no_file(tmp_path, monkeypatch):
    class Broken:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, *args):
            raise ConnectionResetError("reset mid-download")

    monkeypatch.setattr(koi_data.urllib.request, "urlopen", lambda url, timeout: Broken())
    with pytest.raises(ConnectionResetError):
        koi_data._http_download(koi_data.pool_urls(PYDOCS_TRAIN.source)[0], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_without_apt_the_pool_serves_and_its_absence_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(koi_data, "_apt_download", lambda spec, into: None)  # no apt-get on this machine

    def http(url: str, into: Path) -> Path:
        path = into / "python3.11-doc_3.11.2-6+deb12u9_all.deb"
        path.write_bytes(b"deb")
        return path

    monkeypatch.setattr(koi_data, "_http_download", http)
    path, pinned = koi_data.download_deb(PYDOCS_TRAIN.source, tmp_path, log=lambda m: None)
    assert pinned and path.exists()

    monkeypatch.setattr(koi_data, "_http_download", lambda url, into: (_ for _ in ()).throw(OSError("HTTP Error 404")))
    with pytest.raises(koi_data.DataError, match=r"python3.11-doc=3.11.2-6\+deb12u9: not in Debian's pools .*no apt-get here"):
        koi_data.download_deb(PYDOCS_TRAIN.source, tmp_path / "none", log=lambda m: None)
