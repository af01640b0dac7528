#!/usr/bin/env bash
# A base image for ../Dockerfile made from Debian's packages, for machines that reach a Debian
# mirror but no container registry: bookworm (minbase) with Debian's Python 3.11, its venv module
# and CA certificates, imported into podman's local image storage. Needs root and debootstrap.
#
#   deploy/base-image.sh [TAG]        # TAG defaults to localhost/fedwarden-base:bookworm
#   podman build --build-arg BASE=localhost/fedwarden-base:bookworm -t fedwarden:0.1.0 .
set -euo pipefail
tag=${1:-localhost/fedwarden-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >&2
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$tag" >&2
echo "$tag"
