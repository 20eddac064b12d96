/**
 * Launcher stand-ins WITHOUT libvirt, for hostile-launcher tests: a registration for the
 * operator's local transport whose `env` puts a fake `virsh` (a shell script) first on PATH.
 * Modes:
 * - `hang`: every command sleeps (a launcher whose libvirt never answers);
 * - `flood`: `virsh dumpxml` prints `floodBytes` bytes (default 300 MiB) and then a domain;
 * - `flat` / `chain3`: a domain whose disk has 1 / 3 images; no block job ever runs;
 * - `cbt`: a domain whose disk is KubeVirt's changed block tracking overlay, as libvirt 10.10+
 *   prints it: one qcow2 image whose raw data file is a `<dataStore>` (Debian 12's libvirt 9.0,
 *   which the real stand-in runs, does not know the element and drops it);
 * - `hang-actions`: answers looks like `chain3` (a pull is due, no job runs) but every action
 *   (`blockpull`, `blockrebase`, `blockjob --abort` / `--bandwidth` / `--pivot`) sleeps.
 * `virsh event --loop` sleeps in every mode. Each call appends its command name to `log`.
 */
import { readFileSync } from 'node:fs';
import { appendFile, chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { registrationPath } from '../../../operator/src/kubevirt/transport.ts';

export type FakeVirshMode = 'hang' | 'flood' | 'flat' | 'chain3' | 'hang-actions' | 'cbt';

export interface FakeLauncherOptions {
  readonly registryDir: string;
  /** Where the script and its log live (created). */
  readonly dir: string;
  readonly namespace: string;
  readonly pod: string;
  readonly mode: FakeVirshMode;
  /** KubeVirt disk name of the domain's disk (alias ua-<disk>, target vda). Default rootdisk. */
  readonly disk?: string;
  readonly floodBytes?: number;
}

export interface FakeLauncher {
  readonly pod: string;
  readonly registrationPath: string;
  /** Commands run so far (dumpxml, blockjob, event, blockpull, ...). */
  commands(): Promise<string[]>;
  /** Pids of the sleeping commands (hang mode, `virsh event`, actions in hang-actions mode) started so far. */
  sleepers(): Promise<number[]>;
  /** Pids of the actions (blockpull, blockrebase, blockjob --abort/--bandwidth/--pivot) started so far. */
  actions(): Promise<number[]>;
  stop(): Promise<void>;
}

const SCRIPT = String.raw`#!/bin/sh
# Fake virsh for the e2e tests (test/e2e/launcher/fake-launcher.ts).
cmd=""
for a in "$@"; do
  case "$a" in dumpxml|blockjob|event|blockpull|blockrebase|domstats) cmd="$a"; break ;; esac
done
echo "$cmd" >>"$FAKE_VIRSH_LOG"
action=""
case "$cmd" in
  blockpull|blockrebase) action=1 ;;
  blockjob) for a in "$@"; do case "$a" in --abort|--bandwidth|--pivot) action=1 ;; esac; done ;;
esac
if [ -n "$action" ]; then echo "$$" >>"$FAKE_VIRSH_ACTIONS"; fi
# Sleepers are recorded so that stop() can end the ones the operator did not kill.
if [ "$FAKE_VIRSH_MODE" = hang ] || [ "$cmd" = event ] || { [ "$FAKE_VIRSH_MODE" = hang-actions ] && [ -n "$action" ]; }; then echo "$$" >>"$FAKE_VIRSH_PIDS"; exec sleep 3600; fi
if [ "$cmd" = blockjob ]; then echo; exit 0; fi
if [ "$cmd" != dumpxml ]; then echo "error: fake virsh: $cmd not supported" >&2; exit 1; fi
if [ "$FAKE_VIRSH_MODE" = flood ]; then yes '<!-- flood flood flood flood flood flood flood flood flood flood -->' | head -c "$FAKE_VIRSH_FLOOD_BYTES"; fi
d="/var/run/kubevirt-ephemeral-disks/disk-data/$FAKE_VIRSH_DISK"
echo "<domain type='qemu'><name>$FAKE_VIRSH_DOMAIN</name><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
if [ "$FAKE_VIRSH_MODE" = chain3 ] || [ "$FAKE_VIRSH_MODE" = hang-actions ]; then
  echo "<source file='$d/top.qcow2' index='3'/><backingStore type='file' index='2'><format type='qcow2'/><source file='$d/mid.qcow2'/>"
  echo "<backingStore type='file' index='1'><format type='qcow2'/><source file='$d/base.qcow2'/><backingStore/></backingStore></backingStore>"
elif [ "$FAKE_VIRSH_MODE" = cbt ]; then
  echo "<source file='/run/kubevirt-private/libvirt/qemu/swtpm/$FAKE_VIRSH_DISK.qcow2' index='1'><dataStore type='file'><format type='raw'/><source file='/run/kubevirt-private/vmi-disks/$FAKE_VIRSH_DISK/disk.img'/></dataStore></source><backingStore/>"
else
  echo "<source file='$d/top.qcow2' index='1'/><backingStore/>"
fi
echo "<target dev='vda' bus='virtio'/><alias name='ua-$FAKE_VIRSH_DISK'/></disk></devices></domain>"
`;

/** The process is a `sleep 3600` started by a fake virsh (its pid was recorded by the script). */
export function isFakeSleeper(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim() === 'sleep 3600';
  } catch {
    return false;
  }
}

/** Registers the fake launcher for pod namespace/pod (domain <namespace>_<vmi> is taken from the virsh argv). */
export async function registerFakeLauncher(o: FakeLauncherOptions): Promise<FakeLauncher> {
  await mkdir(o.dir, { recursive: true });
  const bin = path.join(o.dir, 'bin');
  await mkdir(bin, { recursive: true });
  const script = path.join(bin, 'virsh');
  await writeFile(script, SCRIPT);
  await chmod(script, 0o755);
  const log = path.join(o.dir, 'virsh.log');
  const pids = path.join(o.dir, 'sleepers');
  const actionPids = path.join(o.dir, 'actions');
  await appendFile(log, '');
  await appendFile(pids, '');
  await appendFile(actionPids, '');
  const pidsIn = async (file: string): Promise<number[]> =>
    (await readFile(file, 'utf8'))
      .split('\n')
      .filter((l) => /^[0-9]+$/.test(l))
      .map(Number);
  const sleepers = (): Promise<number[]> => pidsIn(pids);
  const file = registrationPath(o.registryDir, o.namespace, o.pod);
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  const registration = {
    namespace: o.namespace,
    pod: o.pod,
    uri: 'qemu+unix:///session?socket=/nonexistent',
    uid,
    gid,
    env: {
      PATH: `${bin}:/usr/bin:/bin`,
      FAKE_VIRSH_MODE: o.mode,
      FAKE_VIRSH_LOG: log,
      FAKE_VIRSH_PIDS: pids,
      FAKE_VIRSH_ACTIONS: actionPids,
      FAKE_VIRSH_DISK: o.disk ?? 'rootdisk',
      FAKE_VIRSH_DOMAIN: `${o.namespace}_fake`,
      FAKE_VIRSH_FLOOD_BYTES: String(o.floodBytes ?? 300 * 1024 * 1024),
    },
  };
  await writeFile(file, JSON.stringify(registration));
  return {
    pod: o.pod,
    registrationPath: file,
    async commands() {
      return (await readFile(log, 'utf8')).split('\n').filter((l) => l !== '');
    },
    sleepers,
    actions: () => pidsIn(actionPids),
    async stop() {
      await rm(file, { force: true });
      // End the sleepers this fake started that are still its `sleep` (checked: pids get reused).
      for (const pid of await sleepers()) {
        if (isFakeSleeper(pid)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* gone meanwhile */
          }
        }
      }
      await rm(o.dir, { recursive: true, force: true });
    },
  };
}
