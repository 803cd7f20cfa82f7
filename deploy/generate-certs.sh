#!/usr/bin/env bash
# Create what docker-compose.yml mounts: a CA, the SuperLink's TLS certificate
# and one authentication key pair per SuperNode (deploy/certs/), plus a Flower
# config for submitting runs from this machine (deploy/host-flwr-home/).
# Needs gcfl installed (python -m pip install -e .). Usage: deploy/generate-certs.sh [NODES]
set -euo pipefail
cd "$(dirname "$0")/.."
nodes="${1:-3}"
python -m gcfl.deploy.credentials deploy/certs --nodes "$nodes"
mkdir -p deploy/host-flwr-home results
cat > deploy/host-flwr-home/config.toml <<TOML
[superlink]
default = "gcfl-deploy"

[superlink.gcfl-deploy]
address = "127.0.0.1:9093"
root-certificates = "$PWD/deploy/certs/ca.crt"
TOML
echo "Submit runs with: FLWR_HOME=$PWD/deploy/host-flwr-home flwr run . gcfl-deploy --stream"
