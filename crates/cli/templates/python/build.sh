#!/bin/sh
# Builds app.py into {{name}}.wasm with componentize-py
# (`pip install componentize-py==0.25.1`), then writes the component's name
# and version into it, which kmsgate shows (`kmsgate providers`).
set -eu
cd "$(dirname "$0")"
componentize-py -d wit -w provider componentize app -o {{name}}.wasm > /dev/null
"${KMSGATE:-kmsgate}" provider stamp {{name}}.wasm --name {{name}} --version 0.1.0 --sdk "componentize-py 0.25.1"
