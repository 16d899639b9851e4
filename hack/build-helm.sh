#!/usr/bin/env bash
# Build the pinned Helm v3 CLI from the Go module proxy. v3.21.4: the module list marks it approved (v3.22.0, the
# earlier pin, is served but not approved). The list prefers helm.sh/helm/v4 (v4.3.2 approved): its module path
# and version stamping differ (helm.sh/helm/v4/internal/version; the Kubernetes version comes from client-go's
# build info, no -X), and moving to it waits for a run of tests/integration/test_chart.py with it.
# Output: $MODELWARDEN_CACHE/helm/<version>/bin/helm (the path is printed on stdout; progress goes to stderr).
# Idempotent: a version that is already built is left alone (a `.complete` stamp marks a finished build). `make test`
# builds it in the background once the Kubernetes build is done; a second caller (the chart tests, the demo) blocks
# on the lock below until that build is done, then finds it complete.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.21.4}"
CACHE="${MODELWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelwarden}"
OUT="$CACHE/helm/$HELM_VERSION"
BIN="$OUT/bin"

log() { printf '[build-helm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
if ! flock -n 9; then
  log "waiting for the helm build already running (make test starts it in the background)"
  flock 9
fi
if [[ -f "$OUT/.complete" && -x "$BIN/helm" ]]; then
  echo "$BIN/helm"
  exit 0
fi
command -v go >/dev/null || { log "go is not installed; install Go 1.24+ first"; exit 1; }

mkdir -p "$BIN"
rm -f "$OUT/.complete"
export GOTOOLCHAIN=local

log "resolving helm.sh/helm/v3@$HELM_VERSION"
gomod=$(cd "$OUT" && { go mod download -json "helm.sh/helm/v3@$HELM_VERSION" || true; } | python3 -c '
import json, sys
d = json.load(sys.stdin)
if "GoMod" not in d:
    sys.exit("cannot download helm.sh/helm/v3@" + sys.argv[1] + " from the Go module proxy: " + d.get("Error", "no GoMod"))
print(d["GoMod"])' "$HELM_VERSION")
clientgo=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")
[[ -n "$clientgo" ]] || { log "cannot find k8s.io/client-go in $gomod"; exit 1; }
k8s_minor="${clientgo#v0.}"; k8s_minor="${k8s_minor%%.*}"

# The same stamping Helm's own Makefile does: `helm version` reports the pinned release, and the
# Kubernetes version used by `helm lint`/`helm template` (Capabilities.KubeVersion) is client-go's.
pkg=helm.sh/helm/v3/internal/version
ldflags="-s -w -X $pkg.version=$HELM_VERSION -X $pkg.gitTreeState=clean -X $pkg.metadata="
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8s_minor"
done

log "compiling helm $HELM_VERSION from the Go module proxy (cold: ~1.5 min on a quiet machine after the Kubernetes build, ~4.5 min at load ~15)"
start=$SECONDS
CGO_ENABLED=0 GOBIN="$BIN" GOFLAGS= go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

"$BIN/helm" version --short >&2
touch "$OUT/.complete"
log "done in $((SECONDS - start))s: $BIN/helm"
echo "$BIN/helm"
