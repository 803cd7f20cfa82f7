#!/usr/bin/env bash
# Create what docker-compose.yml mounts: a CA, the SuperLink's TLS certificate
# and one authentication key pair per SuperNode (deploy/certs/), plus a Flower
# config for submitting runs from this machine (deploy/host-flwr-home/).
# Needs gcfl installed (python -m pip install -e .).
# Usage: deploy/generate-certs.sh [--force] [NODES]
#   Existing credentials are never replaced without --force: the script stops,
#   naming the file, and leaves every key as it was.
set -euo pipefail
# Whatever this script creates is its owner's alone unless made readable on purpose
# below, so that no private key (nor the folder holding it) is ever open to others,
# not even between its creation and a chmod.
umask 077

usage() { sed -n '2,8s/^# \{0,1\}//p' "$0"; }
force=""
nodes=3
for arg in "$@"; do
    case "$arg" in
        --force) force="--force" ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "generate-certs.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
        *) nodes="$arg" ;;
    esac
done

cd "$(dirname "$0")/.."
# deploy/certs is made 0700 and every file in it is born with its final mode
# (keys 0600, certificates and public keys 0644) by gcfl.deploy.credentials.
python -m gcfl.deploy.credentials deploy/certs --nodes "$nodes" ${force:+"$force"}
mkdir -p -m 700 deploy/host-flwr-home results
cat > deploy/host-flwr-home/config.toml <<TOML
[superlink]
default = "gcfl-deploy"

[superlink.gcfl-deploy]
address = "127.0.0.1:9093"
root-certificates = "$PWD/deploy/certs/ca.crt"
TOML
# Public: an address and the path of the CA certificate.
chmod 644 deploy/host-flwr-home/config.toml
echo "Submit runs with: FLWR_HOME=$PWD/deploy/host-flwr-home flwr run . gcfl-deploy --stream"
