#!/usr/bin/env bash
# Build everything the local environment runs (the pinned Kubernetes binaries and KWOK, the node's images), one
# build at a time: `make test` starts it in the background at once (build-background) and the tests' own
# call waits on the lock below, then finds everything cached. The images (debootstrap, pip downloads: mostly the
# network and the disk) build while the Go compiler has the CPUs.
# The Kubernetes compile needs only Go and the images only the standard library, so both start at once; the check
# of what is built needs the virtualenv: with STAMP given (make test's background job starts before the virtualenv
# is installed), it waits for that file.
# usage: hack/build-env.sh PYTHON [STAMP]   (progress on stderr; exit status non-zero if either build failed)
set -uo pipefail
PY=${1:?usage: hack/build-env.sh PYTHON [STAMP]}
STAMP=${2:-}
CACHE="${MODELWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelwarden}"
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-env.lock"
if ! flock -n 9; then
  echo "[build] waiting for the build already running (make test starts it in the background; log:" \
       "$CACHE/env-build.log)" >&2
  flock 9
  echo "[build] it has finished; checking what is built" >&2
fi
cd "$(dirname "$0")/.."
bash hack/build-k8s.sh >/dev/null &
k8s=$!
# localenv.images needs only the standard library: the system's Python runs it, without waiting for the virtualenv.
python3 -m localenv.images build >/dev/null &
images=$!
wait "$k8s"
if [[ -n "$STAMP" ]]; then
  for _ in $(seq 1800); do [[ -e "$STAMP" ]] && break; sleep 1; done
  [[ -e "$STAMP" ]] || { echo "[build] the virtualenv ($STAMP) was not installed within 30 min" >&2; exit 1; }
fi
# finds the binaries built (or says what failed)
"$PY" -m localenv.cluster build >/dev/null
built=$?
wait "$images"
imaged=$?
exit $(( built != 0 || imaged != 0 ))
