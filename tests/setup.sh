#!/usr/bin/env bash
# Everything the test suite needs on a fresh machine: the package with its
# test, Ray, edge and notebook extras, and Debian's Chromium for the browser
# test (driven by playwright against /usr/bin/chromium; no browser download).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test,ray]'
if ! command -v chromium >/dev/null 2>&1; then
    echo "tests/setup.sh: installing Debian's chromium for the browser test" >&2
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
