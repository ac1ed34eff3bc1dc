#!/usr/bin/env bash
# Build the VS Code extension: dependencies from package-lock.json (npm ci, skipped when
# node_modules is already up to date), TypeScript compile, and the .vsix package.
#   editors/vscode/build.sh            # -> editors/vscode/draftline-<version>.vsix, out/
set -euo pipefail
cd "$(dirname "$0")"
command -v npm >/dev/null || { echo "build.sh: npm not found (apt-get install -y nodejs npm)" >&2; exit 2; }
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "build.sh: npm ci"
    npm ci --no-audit --no-fund
else
    echo "build.sh: node_modules up to date, skipping npm ci"
fi
echo "build.sh: compile"
npm run --silent compile
version=$(node -p "require('./package.json').version")
echo "build.sh: package draftline-$version.vsix"
npx --no-install vsce package --out "draftline-$version.vsix"
ls -l "draftline-$version.vsix"
