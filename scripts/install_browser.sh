#!/usr/bin/env bash
# Installs the browser that the test of `mat-fast serve`'s page drives
# (tests/test_serve_browser.py): Chromium and its WebDriver from Debian's packages (the
# Python side, Selenium, comes with the test extra). Idempotent: a quick no-op when both are
# there. Needs root or sudo for apt-get; without either (or without apt-get) it says so and
# the test skips, naming this script.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_browser.sh: no apt-get here; install Chromium and chromedriver yourself" >&2
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null; then
    SUDO="sudo"
else
    echo "install_browser.sh: apt-get needs root or sudo; the browser test will skip" >&2
    exit 0
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
