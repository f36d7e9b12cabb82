"""Check one package's built sdist and wheel before a release, and print the tag that releases it.

    python tools/release_check.py koi-quant dist/koi-quant

Each package is released alone, under the tag `<name>-v<version>` (`koi-quant-v0.1.0`). The
version is written once, in the package's pyproject.toml; this checks that the files agree with
it, that CHANGELOG.md has a section for it, that the tag is still free, and that the archives
hold what an install needs (py.typed, package data) and nothing a build would choke on.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]

# Files besides modules that each wheel must carry: the package is broken without them.
DATA_FILES = {
    "koi-train": ["koi_train/config/run-config.schema.json", "koi_train/configs/quickstart.json"],
}


def project(package: str) -> dict:
    return tomllib.loads((REPO / "packages" / package / "pyproject.toml").read_text())["project"]


def changelog_has(package: str, version: str) -> bool:
    path = REPO / "packages" / package / "CHANGELOG.md"
    return path.exists() and re.search(rf"^## \[?{re.escape(version)}\]?(\s|$)", path.read_text(), re.MULTILINE) is not None


def tag_exists(tag: str) -> bool:
    found = subprocess.run(["git", "-C", str(REPO), "tag", "--list", tag], capture_output=True, text=True)
    return found.returncode == 0 and found.stdout.strip() == tag


def check_wheel(path: Path, package: str, version: str) -> list[str]:
    module = package.replace("-", "_")
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"{module}-{version}.dist-info/METADATA").decode()
    problems = [f"{path.name}: {name}: expected in the wheel, missing" for name in
                [f"{module}/__init__.py", f"{module}/py.typed", *DATA_FILES.get(package, [])] if name not in names]
    if f"\nVersion: {version}\n" not in metadata:
        problems.append(f"{path.name}: METADATA Version: expected {version}")
    return problems


def check_sdist(path: Path, package: str) -> list[str]:
    with tarfile.open(path) as sdist:
        members = sdist.getmembers()
    links = [m.name for m in members if m.issym() or m.islnk()]
    problems = [f"{path.name}: {name}: a link; ship a real file (a link out of the package breaks installs)" for name in links]
    if not any(m.name.endswith("/CHANGELOG.md") for m in members):
        problems.append(f"{path.name}: CHANGELOG.md: expected in the sdist, missing")
    return problems


def main(argv: list[str]) -> int:
    package, out = argv[0], Path(argv[1])
    version = project(package)["version"]
    tag = f"{package}-v{version}"
    wheels = sorted(out.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    sdists = sorted(out.glob(f"{package.replace('-', '_')}-{version}.tar.gz"))
    problems = []
    if len(wheels) != 1 or len(sdists) != 1:
        problems.append(f"{out}: expected one wheel and one sdist of {package} {version}, found {[p.name for p in out.iterdir()]}")
    if not changelog_has(package, version):
        problems.append(f"packages/{package}/CHANGELOG.md: ## {version}: expected a section for this version, missing")
    for wheel in wheels:
        problems += check_wheel(wheel, package, version)
    for sdist in sdists:
        problems += check_sdist(sdist, package)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 1
    if tag_exists(tag):
        print(f"{tag} is already tagged: bump `version` in packages/{package}/pyproject.toml and add a CHANGELOG section")
    else:
        print(f"{package} {version} is ready: git tag {tag} && git push origin {tag}, then upload {out}/*")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
