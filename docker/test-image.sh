#!/usr/bin/env bash
# The Docker image, built and run for real: the end-to-end test of docker/, on a machine with
# no GPU and no image registry. The test is Python, docker/imagetest/ (`--help` says what it
# proves, its options and settings); this runs it with Debian's python3 where there is one
# (PyYAML comes with docker-compose), any python3 otherwise, or $PYTHON.
#   sudo bash docker/test-image.sh [--remove-images] [--prune-build-cache] [--rebuild-standins]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ -z "${PYTHON:-}" ]; then
    PYTHON=$(command -v /usr/bin/python3 || command -v python3) || { echo "no python3 on PATH" >&2; exit 2; }
fi
exec "$PYTHON" -m imagetest "$@"
