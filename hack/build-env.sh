#!/usr/bin/env bash
# Build everything the local environment runs (the pinned Kubernetes binaries and KWOK, the node's images), one
# build at a time: `make test` starts it in the background at once (build-background) and the tests' own
# call waits on the lock below, then finds everything cached. The images (debootstrap, pip downloads: mostly the
# network and the disk) build while the Go compiler has the CPUs.
# usage: hack/build-env.sh PYTHON    (progress on stderr; exit status non-zero if either build failed)
set -uo pipefail
PY=${1:?usage: hack/build-env.sh PYTHON}
CACHE="${MODELWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelwarden}"
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-env.lock"
if ! flock -n 9; then
  echo "[build] waiting for the build already running (make test starts it in the background; log:" \
       "$CACHE/env-build.log)" >&2
  flock 9
  echo "[build] it has finished; checking what is built" >&2
fi
"$PY" -m localenv.images build >/dev/null &
images=$!
"$PY" -m localenv.cluster build >/dev/null
built=$?
wait "$images"
imaged=$?
exit $(( built != 0 || imaged != 0 ))
