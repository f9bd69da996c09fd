#!/usr/bin/env bash
# Everything the test suite needs on a fresh machine: the package with its
# test, Ray, edge, notebook and postgres extras, Debian's Chromium for the
# browser test (driven by playwright against /usr/bin/chromium; no browser
# download), and Debian's PostgreSQL server binaries for the Postgres tests
# (they start private servers of their own; the server's own service is not
# used, and a root test run starts them as the `postgres` user the package creates).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test,ray]'
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
missing=()
if ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "tests/setup.sh: installing Debian's ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
