#!/usr/bin/env bash
# Prerequisites of the editor tests on a fresh Debian (12) machine; idempotent.
#   - Neovim (>= 0.7, Debian 12 ships 0.7.2) for tests/test_nvim_e2e.py
#   - Node.js + npm, then editors/vscode/build.sh (npm ci, tsc, vsce package) for
#     tests/test_vscode_ext.py
#   - for tests/test_vscode_e2e.py (the .vsix inside a real VS Code): chromium, and
#     code-server 4.100.3 + playwright-core from editors/vscode/e2e/package-lock.json (node 20;
#     installed offline-safe: no step downloads from GitHub). Needs apt chromium, libkrb5-dev
#     (code-server's kerberos module), ripgrep (stands in for @vscode/ripgrep's download), and
#     a C++ toolchain (node-pty, argon2 are built from source).
# Prints what it did. Exit status: 0 when everything is in place (a node other than 20 only
# skips the VS Code end-to-end test).
#   editors/ci.sh            # install what is missing and build the extension
#   SKIP_APT=1 editors/ci.sh # never call apt-get (report what is missing instead)
#   SKIP_E2E=1 editors/ci.sh # leave out chromium and code-server
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
if [ "${SKIP_E2E:-0}" != 1 ]; then
    command -v chromium >/dev/null || missing+=(chromium)
    command -v rg >/dev/null || missing+=(ripgrep)
    [ -f /usr/include/gssapi/gssapi.h ] || missing+=(libkrb5-dev)
    { command -v make >/dev/null && command -v g++ >/dev/null; } || missing+=(make g++)
fi
if [ ${#missing[@]} -eq 0 ]; then
    say "apt: nothing to install (nvim, node, npm$([ "${SKIP_E2E:-0}" = 1 ] || echo ", chromium, rg, libkrb5-dev, make, g++") present)"
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

# --- the VS Code end-to-end test: code-server + playwright-core in editors/vscode/e2e ---------
# The sequence that works without GitHub (see e2e/README.md): npm ci without install scripts,
# argon2 built from source, code-server's VS Code modules installed with Debian's rg in place
# of @vscode/ripgrep's download, native modules rebuilt (node-gyp through npx: yes), then
# code-server's postinstall (as root it wants unsafe_perm and the npm user agent). A stamp
# holds the lock file's hash and the node version: when both match, nothing is run again.
e2e_install() {
    local dir="$here/vscode/e2e" cs="$here/vscode/e2e/node_modules/code-server"
    local stamp="$dir/node_modules/.draftline-e2e-stamp"
    local want
    want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1) node-$(node --version)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$cs/out/node/entry.js" ]; then
        say "vscode e2e: code-server and playwright-core up to date (editors/vscode/e2e/node_modules)"
        return 0
    fi
    export npm_config_yes=true npm_config_audit=false npm_config_fund=false
    say "vscode e2e: npm ci (code-server, playwright-core; no install scripts)"
    (cd "$dir" && npm ci --ignore-scripts --loglevel=error) || return 1
    say "vscode e2e: argon2 (built from source)"
    (cd "$dir" && npm rebuild argon2 --loglevel=error) || return 1
    say "vscode e2e: code-server's VS Code modules"
    (cd "$cs/lib/vscode" && npm install --omit=dev --ignore-scripts --loglevel=error) || return 1
    mkdir -p "$cs/lib/vscode/node_modules/@vscode/ripgrep/bin" || return 1
    ln -sf "$(command -v rg)" "$cs/lib/vscode/node_modules/@vscode/ripgrep/bin/rg" || return 1
    say "vscode e2e: native modules (node-pty, spdlog, ...)"
    (cd "$cs/lib/vscode" && npm rebuild --loglevel=error) || return 1
    say "vscode e2e: code-server postinstall"
    (cd "$cs" && npm_config_unsafe_perm=true npm_config_user_agent="npm/$(npm --version) node/$(node --version) linux x64" \
        sh postinstall.sh >/dev/null 2>&1) || return 1
    node "$cs/out/node/entry.js" --version >/dev/null || return 1
    echo "$want" > "$stamp"
}

if [ "${SKIP_E2E:-0}" = 1 ]; then
    say "vscode e2e: SKIP_E2E=1 (tests/test_vscode_e2e.py will be skipped)"
elif ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    say "vscode e2e: no node/npm (tests/test_vscode_e2e.py will be skipped)"
elif [ "$(node -p 'process.versions.node.split(".")[0]')" != 20 ]; then
    say "vscode e2e: code-server 4.100 needs node 20, this is $(node --version): skipping (tests/test_vscode_e2e.py will be skipped)"
else
    e2e_missing=()
    command -v rg >/dev/null || e2e_missing+=(ripgrep)
    [ -f /usr/include/gssapi/gssapi.h ] || e2e_missing+=(libkrb5-dev)
    command -v make >/dev/null || e2e_missing+=(make)
    command -v g++ >/dev/null || e2e_missing+=(g++)
    if [ ${#e2e_missing[@]} -gt 0 ]; then
        say "vscode e2e: MISSING ${e2e_missing[*]}: code-server not installed (tests/test_vscode_e2e.py will be skipped)"
        status=1
    elif e2e_install; then
        say "vscode e2e: $(node "$here/vscode/e2e/node_modules/code-server/out/node/entry.js" --version | head -1 | cut -d' ' -f1-2), playwright-core $(node -p "require('$here/vscode/e2e/node_modules/playwright-core/package.json').version")"
    else
        say "vscode e2e: installing code-server FAILED (tests/test_vscode_e2e.py will be skipped)"
        status=1
    fi
    if command -v chromium >/dev/null; then
        say "vscode e2e: $(chromium --version 2>/dev/null | head -1)"
    else
        say "vscode e2e: chromium MISSING (tests/test_vscode_e2e.py will be skipped)"
        status=1
    fi
fi
exit $status
