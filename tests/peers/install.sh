#!/usr/bin/env bash
# tests/peers/install.sh: installs the real peers the tests start, when
# missing: the npm packages in tests/peers (oidc-provider, playwright-core
# for the portal's browser test, pinned by
# package-lock.json) and the Python ones in tests/peers/requirements.txt
# (moto_server, aiosmtpd, pysaml2 for tests/peers/saml_idp.py) in a venv at $MOBIUS_PEERS_VENV
# (default /var/cache/mobius/peers-venv). Runs in well under a second when
# everything is present. tests/run.sh and .ci/run call it; it needs node,
# npm and python3 with venv (.ci/run installs those from Debian).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV="${MOBIUS_PEERS_VENV:-/var/cache/mobius/peers-venv}"

die() {
    echo "tests/peers/install.sh: $*" >&2
    exit 2
}

command -v npm >/dev/null 2>&1 || die "npm is missing: apt-get install nodejs npm (or run .ci/run)"
if [[ ! -d node_modules/oidc-provider || ! -d node_modules/playwright-core ]]; then
    echo "installing the test peers' npm packages (npm ci in tests/peers)"
    npm ci --no-audit --no-fund
fi

python3 -c 'import venv, ensurepip' >/dev/null 2>&1 ||
    die "python3 with venv is missing: apt-get install python3 python3-venv (or run .ci/run)"
if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
fi
missing=0
while read -r line; do
    line="${line%%#*}"
    [[ "$line" == *==* ]] || continue
    name="${line%%==*}"
    version="${line##*==}"
    name="${name%%\[*}"
    "$VENV/bin/python" -m pip show "$name" 2>/dev/null | grep -x "Version: ${version// /}" >/dev/null || missing=1
done <requirements.txt
if [[ $missing -eq 1 ]]; then
    echo "installing the Python test peers into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
fi
