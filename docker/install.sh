#!/bin/sh
# The one install recipe of the relvit image, shared by docker/Dockerfile and docker/relvit.def
# so that both build the same environment. Steps (run as root, in this order):
#   install.sh system                 Ubuntu's python3 + a virtualenv in $VIRTUAL_ENV, and gcc
#                                     with Python's headers: torch.compile's Triton builds its
#                                     GPU launcher with them when a run first compiles
#   install.sh deps PYPROJECT         the dependencies of pyproject.toml (a layer of its
#                                     own: a code change does not reinstall torch)
#   install.sh package SRC            the relvit package from SRC (pyproject.toml + relvit/)
#   install.sh requirements PYPROJECT print pyproject's dependencies, one a line
set -eu

: "${VIRTUAL_ENV:=/opt/relvit}"

requirements() {
    python3 -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$1"
}

case "${1:-}" in
    system)
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install --yes --no-install-recommends python3 python3-venv python3-dev gcc \
            libc6-dev
        rm -rf /var/lib/apt/lists/*
        python3 -m venv "$VIRTUAL_ENV"
        ;;
    deps)
        requirements "$2" > /tmp/relvit-requirements.txt
        "$VIRTUAL_ENV/bin/pip" install --no-cache-dir --requirement /tmp/relvit-requirements.txt
        rm /tmp/relvit-requirements.txt
        ;;
    package)
        "$VIRTUAL_ENV/bin/pip" install --no-cache-dir --no-deps "$2"
        "$VIRTUAL_ENV/bin/relvit" --help > /dev/null
        ;;
    requirements)
        requirements "$2"
        ;;
    *)
        echo "usage: install.sh system | deps PYPROJECT | package SRC | requirements PYPROJECT" >&2
        exit 2
        ;;
esac
