#!/bin/bash
# virt-launcher stand-in: the entrypoint of the `compute` container of the launcher image.
# Runs as uid 107 like KubeVirt's non-root virt-launcher: a session libvirtd with
# XDG_RUNTIME_DIR=/var/run (so its socket is /var/run/libvirt/libvirt-sock), the symlink
# /var/run/libvirt/virtqemud-sock -> libvirt-sock (so the production URI
# qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock works unchanged), a qcow2 chain
# per disk under /var/run/kubevirt-ephemeral-disks/disk-data/<disk>/, and a running domain
# <namespace>_<vmi> whose disks have the alias ua-<disk>.
#
# Environment: VMI_NAMESPACE, VMI_NAME (required); LAUNCHER_DISKS="name:layers:sizeMiB[,...]"
# (default disk0:3:64; optional 4th field allocatedMiB, default size/2).
set -euo pipefail

: "${VMI_NAMESPACE:?VMI_NAMESPACE is required}"
: "${VMI_NAME:?VMI_NAME is required}"
DISKS="${LAUNCHER_DISKS:-disk0:3:64}"
DOMAIN="${VMI_NAMESPACE}_${VMI_NAME}"

export XDG_RUNTIME_DIR=/var/run
export HOME="${HOME:-/var/lib/launcher}"
RUNDIR=/var/run/libvirt
DATA=/var/run/kubevirt-ephemeral-disks/disk-data
SOCK="$RUNDIR/libvirt-sock"
URI="qemu+unix:///session?socket=$RUNDIR/virtqemud-sock"
mkdir -p "$RUNDIR" "$DATA" "$HOME"
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

targets=(vda vdb vdc vdd vde vdf vdg vdh)
disk_xml=""
i=0
IFS=',' read -r -a specs <<< "$DISKS"
for spec in "${specs[@]}"; do
  IFS=':' read -r name layers size allocated <<< "$spec"
  allocated="${allocated:-$((size / 2))}"
  [[ "$name" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || { log "bad disk name $name"; exit 1; }
  [[ "$layers" =~ ^[1-9][0-9]*$ && "$size" =~ ^[1-9][0-9]*$ && "$allocated" =~ ^[0-9]+$ ]] || { log "bad disk spec $spec"; exit 1; }
  (( allocated <= size )) || { log "allocated > size in $spec"; exit 1; }
  dir="$DATA/$name"
  rm -rf "$dir"; mkdir -p "$dir"
  # Same data layout as test/e2e/launcher/images.ts: the backing layers share `allocated` MiB, the
  # layer at chain position p (0 = top) writes its own contiguous part with pattern 0x10+p, and
  # every layer writes 1 MiB at offset 0 with its pattern (so the top shadows the ones below).
  backing=$(( layers > 1 ? layers - 1 : 1 ))
  part=$(( allocated / backing ))
  prev=""
  for n in $(seq 0 $((layers - 1))); do
    position=$(( layers - 1 - n ))
    file="$dir/$name-$n.qcow2"
    if [ -z "$prev" ]; then
      qemu-img create -q -f qcow2 "$file" "${size}M"
    else
      qemu-img create -q -f qcow2 -F qcow2 -b "$prev" "$file" "${size}M"
    fi
    pattern=$(( 16 + position ))
    cmds=()
    if { [ "$layers" -eq 1 ] || [ "$position" -ge 1 ]; } && [ "$part" -gt 0 ]; then
      cmds+=(-c "write -q -P $pattern $(( n * part ))M ${part}M")
    fi
    cmds+=(-c "write -q -P $pattern 0 1M")
    qemu-io -f qcow2 "${cmds[@]}" "$file" >/dev/null
    prev="$file"
  done
  target="${targets[$i]}"
  disk_xml+="<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$prev'/><target dev='$target' bus='virtio'/><alias name='ua-$name'/></disk>"
  i=$((i + 1))
done

cat > "$HOME/domain.xml" <<EOF
<domain type='qemu'>
  <name>$DOMAIN</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    $disk_xml
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF

# CPUs paused: no guest OS is needed for block jobs (and TCG would burn a core)
virsh -c "$URI" create --paused "$HOME/domain.xml"
log "domain $DOMAIN running on $URI"
touch "$RUNDIR/launcher-ready"

# Stay in the foreground for the kubelet; end when libvirtd ends.
wait "$LIBVIRTD"
