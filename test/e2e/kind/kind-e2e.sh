#!/usr/bin/env bash
# End-to-end on a real Kubernetes with real KubeVirt, for machines with a Docker engine:
#   1. creates a kind cluster (pinned node image),
#   2. installs a pinned KubeVirt release (software emulation when there is no /dev/kvm),
#   3. builds the operator image from the Dockerfile and loads it into the cluster,
#   4. installs the Helm chart (CRDs included),
#   5. starts a VM whose root disk is a containerDisk (a qcow2 overlay on the container disk image),
#   6. applies a BlockPull, waits for its condition Complete,
#   7. checks the disk's chain with virsh in the virt-launcher's compute container: before, the
#      overlay has a backing file; after, it has none.
# The cluster is deleted at the end unless --keep.
#
# usage: test/e2e/kind/kind-e2e.sh [--dry-run] [--keep] [--name CLUSTER]
#   --dry-run  print every step (the exact commands) without running anything
#   --keep     keep the cluster afterwards (kind delete cluster --name CLUSTER)
# Needs: docker, kubectl, go (to install kind and build helm if missing), and this repository's
# Node 24 (npm ci). Overrides: KIND, HELM, KUBECTL, DOCKER (paths of the tools).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
MANIFESTS="${REPO_ROOT}/test/e2e/kind/manifests"

# --- pinned versions ---------------------------------------------------------------------------
KIND_VERSION="v0.30.0"
# The node image kind v0.30.0 was released with for Kubernetes 1.33 (KubeVirt v1.6 supports 1.31-1.33).
KIND_NODE_IMAGE="kindest/node:v1.33.4@sha256:25a6018e48dfcaee478f4a59af81157a437f15e6e140bf103f85a2e7cd0cbbf2"
KUBEVIRT_VERSION="v1.6.3"
KUBEVIRT_RELEASE_URL="https://github.com/kubevirt/kubevirt/releases/download/${KUBEVIRT_VERSION}"

DRY_RUN=0
KEEP=0
CLUSTER="blockpull-e2e"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --keep) KEEP=1 ;;
    --name) shift; CLUSTER="${1:?--name needs a value}" ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "${REPO_ROOT}/charts/blockpull-operator/Chart.yaml")"
IMAGE="blockpull-operator:${APP_VERSION}"
OPERATOR_NS="blockpull-system"
VM_NS="default"
VMI="cirros"
DISK="containerdisk"
BLOCKPULL="cirros-flatten"
DOMAIN="${VM_NS}_${VMI}"
# KubeVirt's non-root virt-launcher: the session daemon's socket (cmd/virt-launcher).
VIRSH_URI="qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock"
# Backing files of the disk in the live domain XML (empty = flat).
BACKING_XPATH="//disk[alias/@name='ua-${DISK}']/backingStore//source/@file"

step() { printf '\n==> %s\n' "$*" >&2; }
# Print a command, then run it (unless --dry-run).
run() {
  printf '+ %s\n' "$(printf '%q ' "$@")" >&2
  if [ "$DRY_RUN" = 1 ]; then return 0; fi
  "$@"
}
# capture VAR PLACEHOLDER CMD...: VAR=$(CMD...), printed; PLACEHOLDER stands in with --dry-run.
capture() {
  local var="$1" placeholder="$2"
  shift 2
  # shellcheck disable=SC2016 # the $( ) is printed literally, on purpose
  printf '+ %s=$(%s)\n' "$var" "$(printf '%q ' "$@")" >&2
  if [ "$DRY_RUN" = 1 ]; then
    printf -v "$var" '%s' "$placeholder"
    return 0
  fi
  local out
  out="$("$@")"
  printf -v "$var" '%s' "$out"
}
die() { echo "kind-e2e: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------------
step "Tools"
DOCKER="${DOCKER:-docker}"
KUBECTL="${KUBECTL:-kubectl}"
CACHE_DIR="${BLOCKPULL_CACHE_DIR:-${HOME}/.cache/blockpull-operator}"
if [ "$DRY_RUN" = 0 ]; then
  command -v "$DOCKER" >/dev/null || die "docker is needed (a running Docker engine)"
  "$DOCKER" info >/dev/null 2>&1 || die "the Docker engine is not reachable ($DOCKER info failed)"
  command -v "$KUBECTL" >/dev/null || die "kubectl is needed (or set KUBECTL)"
fi
if [ -z "${KIND:-}" ]; then
  KIND="${CACHE_DIR}/bin/kind-${KIND_VERSION}/kind"
  if [ ! -x "$KIND" ]; then
    run env GOBIN="$(dirname "$KIND")" GOFLAGS=-mod=mod go install "sigs.k8s.io/kind@${KIND_VERSION}"
  fi
fi
if [ ! -x "${REPO_ROOT}/node_modules/.bin/node" ]; then
  run npm --prefix "$REPO_ROOT" ci --no-audit --no-fund
fi
if [ -z "${HELM:-}" ]; then
  # The same pinned helm the tests use, built from the Go module proxy and cached.
  capture HELM "${CACHE_DIR}/bin/helm-v3.22.0/helm" "${REPO_ROOT}/node_modules/.bin/node" "${REPO_ROOT}/test/e2e/ship/helm.ts"
fi

# --- 1. cluster --------------------------------------------------------------------------------
step "1. kind cluster ${CLUSTER} (${KIND_NODE_IMAGE})"
CREATED=0
cleanup() {
  local rc=$?
  if [ "$CREATED" = 1 ] && [ "$KEEP" = 0 ]; then
    step "Cleanup: deleting kind cluster ${CLUSTER}"
    run "$KIND" delete cluster --name "$CLUSTER" || true
  fi
  exit "$rc"
}
trap cleanup EXIT
run "$KIND" create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait 180s
CREATED=1
run "$KUBECTL" config use-context "kind-${CLUSTER}"

# --- 2. KubeVirt -------------------------------------------------------------------------------
step "2. KubeVirt ${KUBEVIRT_VERSION}"
run "$KUBECTL" apply -f "${KUBEVIRT_RELEASE_URL}/kubevirt-operator.yaml"
run "$KUBECTL" wait crd/kubevirts.kubevirt.io --for=condition=Established --timeout=2m
run "$KUBECTL" apply -f "${KUBEVIRT_RELEASE_URL}/kubevirt-cr.yaml"
if [ ! -e /dev/kvm ]; then
  echo "no /dev/kvm: KubeVirt will use software emulation (slow but real)" >&2
  run "$KUBECTL" -n kubevirt patch kubevirt kubevirt --type=merge \
    -p '{"spec":{"configuration":{"developerConfiguration":{"useEmulation":true}}}}'
fi
run "$KUBECTL" -n kubevirt wait kubevirt/kubevirt --for=condition=Available --timeout=15m

# --- 3. operator image -------------------------------------------------------------------------
step "3. Image ${IMAGE}"
capture REVISION "0000000" git -C "$REPO_ROOT" rev-parse --short HEAD
run "$DOCKER" build --build-arg "VERSION=${APP_VERSION}" --build-arg "REVISION=${REVISION}" -t "$IMAGE" "$REPO_ROOT"
run "$KIND" load docker-image "$IMAGE" --name "$CLUSTER"

# --- 4. chart ----------------------------------------------------------------------------------
step "4. Helm chart"
run "$HELM" upgrade --install blockpull "${REPO_ROOT}/charts/blockpull-operator" \
  --namespace "$OPERATOR_NS" --create-namespace \
  --set image.pullPolicy=IfNotPresent --wait --timeout 5m
run "$KUBECTL" -n "$OPERATOR_NS" get pods -o wide

# --- 5. VM -------------------------------------------------------------------------------------
step "5. VM ${VM_NS}/${VMI} with a containerDisk"
run "$KUBECTL" apply -f "${MANIFESTS}/vmi-cirros.yaml"
run "$KUBECTL" -n "$VM_NS" wait "vmi/${VMI}" --for=condition=Ready --timeout=15m
capture VMI_UID "00000000-0000-0000-0000-000000000000" \
  "$KUBECTL" -n "$VM_NS" get "vmi/${VMI}" -o 'jsonpath={.metadata.uid}'
capture POD "virt-launcher-${VMI}-xxxxx" \
  "$KUBECTL" -n "$VM_NS" get pods -l "kubevirt.io=virt-launcher,kubevirt.io/created-by=${VMI_UID}" \
  --field-selector=status.phase=Running -o 'jsonpath={.items[0].metadata.name}'
[ -n "$POD" ] || die "no running virt-launcher pod for ${VMI}"
virsh_in_compute() {
  run "$KUBECTL" -n "$VM_NS" exec "$POD" -c compute -- virsh -c "$VIRSH_URI" "$@"
}
virsh_in_compute domblklist "$DOMAIN" --details
capture BEFORE "/var/run/kubevirt/container-disks/disk_0.img" \
  "$KUBECTL" -n "$VM_NS" exec "$POD" -c compute -- virsh -c "$VIRSH_URI" dumpxml "$DOMAIN" --xpath "$BACKING_XPATH"
echo "backing files before: ${BEFORE:-<none>}" >&2
[ -n "$BEFORE" ] || die "the disk ${DISK} has no backing file before the pull: nothing to prove"

# --- 6. BlockPull ------------------------------------------------------------------------------
step "6. BlockPull ${VM_NS}/${BLOCKPULL}"
run "$KUBECTL" apply -f "${MANIFESTS}/blockpull.yaml"
run "$KUBECTL" -n "$VM_NS" wait "blockpull/${BLOCKPULL}" --for=condition=Complete --timeout=15m
run "$KUBECTL" -n "$VM_NS" get "blockpull/${BLOCKPULL}" -o wide

# --- 7. chain after ----------------------------------------------------------------------------
step "7. Chain after, seen by virsh in the compute container"
capture AFTER "" \
  "$KUBECTL" -n "$VM_NS" exec "$POD" -c compute -- virsh -c "$VIRSH_URI" dumpxml "$DOMAIN" --xpath "$BACKING_XPATH"
virsh_in_compute domblklist "$DOMAIN" --details
virsh_in_compute blockjob "$DOMAIN" vda --info
if [ -n "$AFTER" ]; then
  die "the disk ${DISK} still has backing files after Complete: ${AFTER}"
fi
if [ "$DRY_RUN" = 1 ]; then
  echo "kind-e2e: dry run: printed every step, ran nothing"
else
  echo "kind-e2e: verified: BlockPull ${BLOCKPULL} Complete and virsh shows ${DISK} of ${DOMAIN} without backing files (before: ${BEFORE})"
fi
