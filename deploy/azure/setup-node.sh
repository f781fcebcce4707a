#!/usr/bin/env bash
# Set up one Azure node of the tessera Ray cluster: Python 3.11, the project's pinned versions, the
# Ray auth token from Key Vault (through the VM's managed identity), and optional shared storage.
# Called by deploy/azure/cluster.yaml as: setup-node.sh head|cpu|cuda. Safe to run again.
set -euo pipefail

ROLE="${1:?usage: setup-node.sh head|cpu|cuda}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=site.env
source "$HERE/site.env"

# The same pins as `make install` (Makefile TORCH_SPEC) and the images in deploy/docker/; every node
# and the machine you submit from must run the same Ray version.
TORCH_VERSION=2.13.0
RAY_VERSION=2.60.0
ENV_NAME=tessera

# --- Python environment (the DSVM image ships conda) ---------------------------------------------
eval "$(conda shell.bash hook)"
conda tos accept >/dev/null 2>&1 || true
conda env list | grep -q "^${ENV_NAME} " || conda create -y -q -n "$ENV_NAME" python=3.11
conda activate "$ENV_NAME"
grep -q "conda activate ${ENV_NAME}" ~/.bashrc || echo "conda activate ${ENV_NAME}" >> ~/.bashrc

case "$ROLE" in
  cuda) pip install -q "torch==${TORCH_VERSION}" ;;
  head|cpu) pip install -q "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu ;;
  *) echo "unknown role $ROLE (head|cpu|cuda)" >&2; exit 2 ;;
esac
pip install -q "ray[default]==${RAY_VERSION}" "$REPO"
if [ "$ROLE" = head ]; then
  # The Azure SDK the autoscaler on the head uses to start and stop VMs (the versions Ray's own
  # Azure defaults pin). It authenticates with the head's identity, which only the head VM carries.
  pip install -q azure-core==1.35.0 azure-identity==1.23.1 azure-mgmt-compute==35.0.0 \
    azure-mgmt-network==29.0.0 azure-mgmt-resource==24.0.0 azure-common==1.1.28 msrest==0.7.1 \
    msrestazure==0.6.4.post1
fi

# --- Ray token: Key Vault, read with this VM's identity (head or worker) through the instance metadata service ---
umask 077
mkdir -p ~/.ray
python - "$TESSERA_KEYVAULT" "$TESSERA_TOKEN_SECRET" > ~/.ray/auth_token.new <<'PY'
import json, sys, urllib.request
vault, secret = sys.argv[1], sys.argv[2]
imds = ("http://169.254.169.254/metadata/identity/oauth2/token"
        "?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net")
req = urllib.request.Request(imds, headers={"Metadata": "true"})
access = json.load(urllib.request.urlopen(req, timeout=30))["access_token"]
url = f"https://{vault}.vault.azure.net/secrets/{secret}?api-version=7.4"
req = urllib.request.Request(url, headers={"Authorization": f"Bearer {access}"})
sys.stdout.write(json.load(urllib.request.urlopen(req, timeout=30))["value"].strip())
PY
mv ~/.ray/auth_token.new ~/.ray/auth_token
grep -q "RAY_AUTH_MODE=token" ~/.bashrc || \
  echo 'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token' >> ~/.bashrc
umask 022

# --- Optional shared storage: Azure Files over NFS 4.1 (no storage key: the VNet is the credential) ---
if [ -n "${TESSERA_NFS:-}" ]; then
  command -v mount.nfs >/dev/null || { sudo apt-get update -q && sudo apt-get install -y -q nfs-common; }
  sudo mkdir -p /mnt/tessera
  mountpoint -q /mnt/tessera || \
    sudo mount -t nfs -o vers=4,minorversion=1,sec=sys,nconnect=4 "$TESSERA_NFS" /mnt/tessera
fi

tessera-pipeline --version
