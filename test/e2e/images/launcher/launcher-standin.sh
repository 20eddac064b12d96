#!/bin/bash
# virt-launcher stand-in: the entrypoint of the `compute` container of the launcher image.
# Runs as uid 107 like KubeVirt's non-root virt-launcher: a session libvirtd with
# XDG_RUNTIME_DIR=/var/run (so its socket is /var/run/libvirt/libvirt-sock), the symlink
# /var/run/libvirt/virtqemud-sock -> libvirt-sock (so the production URI
# qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock works unchanged), then the recipe of
# test/e2e/launcher/recipe.ts, the same the host stand-in runs: the commands that make a qcow2 chain
# per disk under /var/run/kubevirt-ephemeral-disks/disk-data/<disk>/, and the domain
# <namespace>_<vmi> (disks aliased ua-<disk>), created with its CPUs paused.
#
# Environment (node/launcher-pod.ts sets it): VMI_NAMESPACE, VMI_NAME; LAUNCHER_STEPS (one command
# per line, arguments separated by tabs; only qemu-img, qemu-io, mkdir and rm are run);
# LAUNCHER_DOMAIN_XML.
set -euo pipefail

: "${VMI_NAMESPACE:?VMI_NAMESPACE is required}"
: "${VMI_NAME:?VMI_NAME is required}"
: "${LAUNCHER_STEPS:?LAUNCHER_STEPS is required}"
: "${LAUNCHER_DOMAIN_XML:?LAUNCHER_DOMAIN_XML is required}"
DOMAIN="${VMI_NAMESPACE}_${VMI_NAME}"

export XDG_RUNTIME_DIR=/var/run
export HOME="${HOME:-/var/lib/launcher}"
RUNDIR=/var/run/libvirt
SOCK="$RUNDIR/libvirt-sock"
URI="qemu+unix:///session?socket=$RUNDIR/virtqemud-sock"
mkdir -p "$RUNDIR" "$HOME"
rm -f "$RUNDIR/launcher-ready"

log() { echo "launcher-standin: $*"; }

libvirtd --timeout 0 &
LIBVIRTD=$!

stop() {
  log "stopping"
  virsh -c "$URI" destroy "$DOMAIN" >/dev/null 2>&1 || true
  kill "$LIBVIRTD" 2>/dev/null || true
  wait "$LIBVIRTD" 2>/dev/null || true
  exit 0
}
trap stop TERM INT

for _ in $(seq 1 100); do
  [ -S "$SOCK" ] && break
  if ! kill -0 "$LIBVIRTD" 2>/dev/null; then log "libvirtd exited"; exit 1; fi
  sleep 0.1
done
[ -S "$SOCK" ] || { log "no libvirt socket at $SOCK"; exit 1; }
ln -sfn libvirt-sock "$RUNDIR/virtqemud-sock"

while IFS=$'\t' read -r -a step; do
  [ "${#step[@]}" -gt 0 ] || continue
  case "${step[0]}" in
    qemu-img|qemu-io|mkdir|rm) ;;
    *) log "refusing step ${step[0]}"; exit 1 ;;
  esac
  "${step[@]}" >/dev/null
done <<< "$LAUNCHER_STEPS"
printf '%s\n' "$LAUNCHER_DOMAIN_XML" > "$HOME/domain.xml"

# CPUs paused: no guest OS is needed for block jobs (and TCG would burn a core)
virsh -c "$URI" create --paused "$HOME/domain.xml"
log "domain $DOMAIN running on $URI"
touch "$RUNDIR/launcher-ready"

# Stay in the foreground for the kubelet; end when libvirtd ends.
wait "$LIBVIRTD"
