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
# (default disk0:3:64). Every layer writes its own pattern into its own 1 MiB-aligned region, so
# a flattened disk differs from any single layer.
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
  IFS=':' read -r name layers size <<< "$spec"
  [[ "$name" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || { log "bad disk name $name"; exit 1; }
  [[ "$layers" =~ ^[1-9][0-9]*$ && "$size" =~ ^[1-9][0-9]*$ ]] || { log "bad disk spec $spec"; exit 1; }
  dir="$DATA/$name"
  rm -rf "$dir"; mkdir -p "$dir"
  prev=""
  for n in $(seq 0 $((layers - 1))); do
    if [ "$n" -eq $((layers - 1)) ]; then file="$dir/disk.qcow2"; else file="$dir/layer-$n.qcow2"; fi
    if [ -z "$prev" ]; then
      qemu-img create -q -f qcow2 "$file" "${size}M"
    else
      qemu-img create -q -f qcow2 -b "$prev" -F qcow2 "$file"
    fi
    # layer n writes pattern 0x(10+n) at offset n MiB (wrapping inside the disk), 1 MiB long
    off=$(( n % size ))
    qemu-io -f qcow2 -c "write -q -P $((16 + n)) ${off}M 1M" "$file" >/dev/null
    prev="$file"
  done
  target="${targets[$i]}"
  disk_xml+="<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/disk.qcow2'/><target dev='$target' bus='virtio'/><alias name='ua-$name'/></disk>"
  i=$((i + 1))
done

cat > "$HOME/domain.xml" <<EOF
<domain type='qemu'>
  <name>$DOMAIN</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    $disk_xml
    <serial type='pty'/>
  </devices>
</domain>
EOF

virsh -c "$URI" create "$HOME/domain.xml"
log "domain $DOMAIN running on $URI"
touch "$RUNDIR/launcher-ready"

# Stay in the foreground for the kubelet; end when libvirtd ends.
wait "$LIBVIRTD"
