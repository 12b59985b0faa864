#!/bin/sh
# Builds provider.js into {{name}}.wasm with componentize-js (from npm,
# pinned by package-lock.json), then writes the component's name and
# version into it, which kmsgate shows (`kmsgate providers`).
set -eu
cd "$(dirname "$0")"
[ -d node_modules/@bytecodealliance/componentize-js ] || npm ci --silent --no-audit --no-fund
node build.mjs {{name}}.wasm wit
"${KMSGATE:-kmsgate}" provider stamp {{name}}.wasm --name {{name}} --version 0.1.0 --sdk "componentize-js 0.23.0"
