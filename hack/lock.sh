#!/usr/bin/env bash
# Refreshes the dependency locks from pyproject.toml: every package pinned with its hashes, for
#   requirements.lock      what the operator runs (make wheels, the image)
#   requirements-dev.lock  that plus the dev tools (make install, CI)
# Nothing machine-specific goes in them: no index or find-links, whatever pip's configuration says.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet "pip-tools>=7.4"
common=(--quiet --generate-hashes --strip-extras --allow-unsafe --no-header --annotation-style line
        --no-emit-index-url --no-emit-trusted-host --no-emit-find-links --upgrade)
"$PYTHON" -m piptools compile "${common[@]}" -o requirements.lock pyproject.toml
"$PYTHON" -m piptools compile "${common[@]}" --extra dev -o requirements-dev.lock pyproject.toml
echo "lock: $(grep -c '==' requirements.lock) runtime and $(grep -c '==' requirements-dev.lock) dev packages pinned with hashes"
