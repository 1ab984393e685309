#!/usr/bin/env bash
# Installs what tests/browser/live_page.mjs needs: Debian's Chromium at /usr/bin/chromium
# and the pinned playwright-core from package-lock.json. Safe to run again: each step is
# skipped when it is already done. Playwright's own browser download is never used.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "setup.sh: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

if [ ! -x /usr/bin/chromium ]; then
    echo "setup.sh: installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
else
    echo "setup.sh: /usr/bin/chromium present ($(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown'))"
fi

# node_modules is stale when it was installed from another package-lock.json.
stamp="$here/node_modules/.linger-lock.sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ ! -d "$here/node_modules/playwright-core" ] || [ "$want" != "$have" ]; then
    echo "setup.sh: npm ci in $here"
    (cd "$here" && npm ci --no-audit --no-fund)
    echo "$want" > "$stamp"
else
    echo "setup.sh: node_modules up to date with package-lock.json"
fi
