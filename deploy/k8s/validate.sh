#!/usr/bin/env bash
# Validates the Kubernetes manifests of deploy/k8s against the Kubernetes API schemas, offline,
# with kubernetes-validate (PyPI; its schemas ship with it), strictly: an unknown field fails.
# Kustomizations are not API objects and nats-values.yaml is a Helm values file: both skipped.
#
#   deploy/k8s/validate.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
tools="../../.run/tools/k8s"
if ! PYTHONPATH="$tools" python3 -c "import kubernetes_validate" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$tools" kubernetes-validate
fi
manifests=$(ls ./*.yaml tls/*.yaml | grep -v -e kustomization.yaml -e nats-values.yaml)
# shellcheck disable=SC2086 # one argument per manifest
PYTHONPATH="$tools" python3 -m kubernetes_validate --strict --quiet $manifests
echo "k8s manifests valid: $(echo $manifests | wc -w) files"
