#!/usr/bin/env bash
# Build the pinned Helm v4 CLI from the Go module proxy (v4.3.2: the module list marks it approved; v3.22.0,
# the earlier pin, is served but not approved).
# Output: $MODELWARDEN_CACHE/helm/<version>/bin/helm (the path is printed on stdout; progress goes to stderr).
# Idempotent: a version that is already built is left alone (a `.complete` stamp marks a finished build).
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v4.3.2}"
MODULE=helm.sh/helm/v4
CACHE="${MODELWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelwarden}"
OUT="$CACHE/helm/$HELM_VERSION"
BIN="$OUT/bin"

log() { printf '[build-helm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if [[ -f "$OUT/.complete" && -x "$BIN/helm" ]]; then
  echo "$BIN/helm"
  exit 0
fi
command -v go >/dev/null || { log "go is not installed; install Go 1.24+ first"; exit 1; }

mkdir -p "$BIN"
rm -f "$OUT/.complete"
export GOTOOLCHAIN=local

# Helm's own Makefile stamps the release into `helm version`; the Kubernetes version `helm lint`/`helm template`
# use (Capabilities.KubeVersion) comes from the client-go version in the binary's build info (kept by go install).
ldflags="-s -w -X $MODULE/internal/version.version=$HELM_VERSION -X $MODULE/internal/version.gitTreeState=clean"
ldflags+=" -X $MODULE/internal/version.metadata="

log "compiling helm $HELM_VERSION from the Go module proxy (cold: ~90 s after the Kubernetes build on a quiet machine)"
start=$SECONDS
CGO_ENABLED=0 GOBIN="$BIN" GOFLAGS= go install -trimpath -ldflags "$ldflags" "$MODULE/cmd/helm@$HELM_VERSION"

"$BIN/helm" version --short >&2
touch "$OUT/.complete"
log "done in $((SECONDS - start))s: $BIN/helm"
echo "$BIN/helm"
