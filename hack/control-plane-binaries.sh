#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, etcd, helm) from pinned Go module
# versions into a cache folder outside the checkout, so every clone on the machine
# (CI's fresh clone included) reuses one build.
#
# Usage: hack/control-plane-binaries.sh [--print-dir]
#   Prints progress on stderr and, last, the folder holding the binaries on stdout.
#
# Environment:
#   KUBE_VERSION, ETCD_VERSION, HELM_VERSION   pins (defaults below)
#   FPW_CONTROL_PLANE_DIR   where the binaries go (default: XDG cache, keyed by versions)
#   KUBEBUILDER_ASSETS      envtest binaries: if it (or TEST_ASSET_KUBE_APISERVER and TEST_ASSET_ETCD)
#                           provides kube-apiserver and etcd, those are used and only helm is built,
#                           and only if neither the assets, TEST_ASSET_HELM nor PATH has one
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v4.3.2}"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/flyte-pullsecrets-webhook/control-plane"
OUT="${FPW_CONTROL_PLANE_DIR:-$CACHE_ROOT/k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}}"
WORK="$CACHE_ROOT/work"

if [[ "${1:-}" == "--print-dir" ]]; then  # where the binaries go; builds nothing
  echo "$OUT"
  exit 0
fi

log() { printf '[control-plane %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# A cached binary counts only if it reports the pinned version: an unstamped or stale build
# (e.g. `/version` saying v0.0.0-master) is rebuilt rather than trusted.
reports() { # binary, expected substring of its version output, version arguments...
  local bin="$1" want="$2" out; shift 2
  [[ -x "$bin" ]] && out="$("$bin" "$@" 2>/dev/null)" && [[ "$out" == *"$want"* ]]
}
have_kube_apiserver() { reports "$OUT/kube-apiserver" "Kubernetes $KUBE_VERSION" --version; }
have_etcd() { reports "$OUT/etcd" "etcd Version: ${ETCD_VERSION#v}" --version; }
have_helm() { reports "$OUT/helm" "$HELM_VERSION" version --template '{{.Version}}'; }

# envtest's assets hold kube-apiserver and etcd but never helm: take those as they are and build helm
# only when nothing else provides it, so the chart tests run too.
# The same precedence as tests/controlplane.py: TEST_ASSET_* first, then KUBEBUILDER_ASSETS.
ASSETS="${KUBEBUILDER_ASSETS:-}"
GIVEN_APISERVER="${TEST_ASSET_KUBE_APISERVER:-${ASSETS:+$ASSETS/kube-apiserver}}"
GIVEN_ETCD="${TEST_ASSET_ETCD:-${ASSETS:+$ASSETS/etcd}}"
ENVTEST=""
if [[ -n "$GIVEN_APISERVER" && -x "$GIVEN_APISERVER" && -n "$GIVEN_ETCD" && -x "$GIVEN_ETCD" ]]; then
  ENVTEST=1
  if [[ -n "${TEST_ASSET_HELM:-}" || ( -n "$ASSETS" && -x "$ASSETS/helm" ) ]] || have_helm \
    || command -v helm >/dev/null || ! command -v go >/dev/null; then
    log "using $GIVEN_APISERVER and $GIVEN_ETCD; nothing to build"
    echo "${ASSETS:-$OUT}"
    exit 0
  fi
  log "using $GIVEN_APISERVER and $GIVEN_ETCD; building only helm, into $OUT"
fi

if [[ -z "$ENVTEST" ]] && have_etcd && have_helm && have_kube_apiserver; then
  log "ready (cached): $OUT"
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed: install Go or set KUBEBUILDER_ASSETS to envtest binaries"; exit 3; }

mkdir -p "$OUT" "$WORK"
# Two clones building at once would race on the same output and on the shared work folder: serialise.
exec 9>"$WORK/.lock"
flock 9

# Go prints nothing while it downloads and compiles; a heartbeat shows it is alive. It must not
# hold the lock (fd 9) nor outlive the script, or an interrupted build blocks the next one forever.
HEARTBEAT_PID=""
# Its sleep gets no stdio: killing the loop leaves sleep running out its 30 s, and a caller reading
# our output through a pipe would wait for it.
heartbeat() { while sleep 30 </dev/null >/dev/null 2>&1; do log "  ... still building $1"; done; }
stop_heartbeat() { [[ -z "$HEARTBEAT_PID" ]] || kill "$HEARTBEAT_PID" 2>/dev/null || true; HEARTBEAT_PID=""; }
trap stop_heartbeat EXIT

run_step() { # name, then the command
  local name="$1"; shift
  heartbeat "$name" 9>&- & HEARTBEAT_PID=$!
  if ! "$@" >"$WORK/$name.log" 2>&1; then
    stop_heartbeat
    log "FAILED: $name; last lines of $WORK/$name.log:"; tail -n 40 "$WORK/$name.log" >&2; exit 1
  fi
  stop_heartbeat
}

fresh_module() { # dir
  rm -rf "$1"; mkdir -p "$1"
  (cd "$1" && go mod init "throwaway/$(basename "$1")" >/dev/null 2>&1)
}

build_kube_apiserver() {
  local dir="$WORK/kube-apiserver-$KUBE_VERSION" minor patch
  minor="$(cut -d. -f2 <<<"$KUBE_VERSION")"; patch="$(cut -d. -f3 <<<"$KUBE_VERSION")"
  local staging="v0.${minor}.${patch}"
  fresh_module "$dir"
  cd "$dir"
  log "kube-apiserver $KUBE_VERSION: reading the staging modules from its go.mod"
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  # Every `k8s.io/x => ./staging/src/k8s.io/x` replace becomes a replace to the released v0.x.y.
  local mods
  mods="$(grep -oE '^\s*k8s\.io/[A-Za-z0-9._/-]+\s+=>\s+\./staging/' "$gomod" | awk '{print $1}' | sort -u)"
  [[ -n "$mods" ]] || { log "no staging replaces found in $gomod"; exit 1; }
  log "kube-apiserver: replacing $(wc -l <<<"$mods") staging modules with $staging"
  local args=()
  while read -r m; do args+=("-replace=$m=$m@$staging"); done <<<"$mods"
  go mod edit "${args[@]}"
  log "kube-apiserver: resolving dependencies (downloads on a cold cache)"
  run_step kube-apiserver-get go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION"
  log "kube-apiserver: compiling (several minutes on 2 cores when cold)"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    ld+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  CGO_ENABLED=0 run_step kube-apiserver-build go build -trimpath -ldflags "$ld" -o "$OUT/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$OUT/kube-apiserver.tmp" "$OUT/kube-apiserver"
}

build_etcd() {
  local dir="$WORK/etcd-$ETCD_VERSION"
  fresh_module "$dir"
  cd "$dir"
  log "etcd $ETCD_VERSION: resolving dependencies"
  run_step etcd-get go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  log "etcd: compiling"
  CGO_ENABLED=0 run_step etcd-build go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$OUT/etcd.tmp" "$OUT/etcd"
}

build_helm() {
  log "helm $HELM_VERSION: go install"
  local dir="$WORK/helm-$HELM_VERSION"
  rm -rf "$dir"; mkdir -p "$dir"
  # Stamp the full version as helm's release build does; otherwise `helm version` says only "v4.3".
  local ld="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  CGO_ENABLED=0 GOBIN="$dir" run_step helm-install go install -trimpath -ldflags "$ld" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  mv "$dir/helm" "$OUT/helm"
}

# Checked again under the lock: another clone may have built them meanwhile.
if [[ -n "$ENVTEST" ]]; then
  have_helm || build_helm
  echo "${ASSETS:-$OUT}"
  exit 0
fi
have_etcd || build_etcd
have_helm || build_helm
have_kube_apiserver || build_kube_apiserver

log "ready: $OUT"
echo "$OUT"
