#!/usr/bin/env bash
# System programs some tests need besides the Python environment, installed only when
# missing (safe to run again).
#
# - chromium: the browser test opens report.html headless (Debian's `chromium`
#   package renders with --headless=new). Set FORGETSCALE_CHROMIUM to use another
#   Chromium or Chrome binary instead.
set -euo pipefail

have_chromium() {
    [ -n "${FORGETSCALE_CHROMIUM:-}" ] && [ -x "${FORGETSCALE_CHROMIUM}" ] && return 0
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "install-test-services: need root (or sudo) to apt-get install $*" >&2
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-test-services: no apt-get here; install $* yourself" >&2
        return 1
    fi
    # refresh the package lists only when they are missing or older than a day
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
        $sudo apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

if have_chromium; then
    echo "chromium: present ($(command -v chromium || command -v chromium-browser || echo "$FORGETSCALE_CHROMIUM"))"
else
    apt_install chromium
    echo "chromium: installed ($(command -v chromium))"
fi
