#!/usr/bin/env bash
# Prerequisites of the editor tests on a fresh Debian (12) machine; idempotent.
#   - Neovim (>= 0.7, Debian 12 ships 0.7.2) for tests/test_nvim_e2e.py
#   - Node.js + npm, then editors/vscode/build.sh (npm ci, tsc, vsce package) for
#     tests/test_vscode_ext.py
# Prints what it did. Exit status: 0 when everything is in place.
#   editors/ci.sh            # install what is missing and build the extension
#   SKIP_APT=1 editors/ci.sh # never call apt-get (report what is missing instead)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
say() { echo "editors/ci.sh: $*"; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo_cmd=(sudo); fi
fi

missing=()
command -v nvim >/dev/null || missing+=(neovim)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
    say "apt: nothing to install (nvim, node, npm present)"
elif [ "${SKIP_APT:-0}" = 1 ]; then
    say "apt: SKIP_APT=1, not installing: ${missing[*]}"
else
    say "apt: installing ${missing[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

status=0
if command -v nvim >/dev/null; then
    say "neovim: $(nvim --version | head -1)"
else
    say "neovim: MISSING (tests/test_nvim_e2e.py will be skipped)"
    status=1
fi

if command -v node >/dev/null && command -v npm >/dev/null; then
    node_major=$(node -p 'process.versions.node.split(".")[0]')
    say "node: $(node --version), npm: $(npm --version)"
    if [ "$node_major" -lt 18 ]; then
        say "node >= 18 is needed to build the VS Code extension; skipping the build"
        status=1
    else
        say "vscode: editors/vscode/build.sh"
        "$here/vscode/build.sh"
        say "vscode: built $(ls "$here"/vscode/*.vsix | xargs -n1 basename | tr '\n' ' ')"
    fi
else
    say "node/npm: MISSING (tests/test_vscode_ext.py will be skipped)"
    status=1
fi
exit $status
