/**
 * The handler stand-in: the ONE imitated piece of the real-KubeVirt test bed (see test/e2e/README.md).
 * It does, for the VMIs on its node, the part of virt-handler (pkg/virt-handler/vm.go) that a VMI
 * with a containerDisk, no network interfaces and emulation needs to run:
 *
 *  1. containerDisk: once the volume container of the launcher pod runs (its container-disk binary
 *     made `disk_N.sock` in the pod's `container-disks` emptyDir), the disk file from that
 *     container's root filesystem (`/disk/*`, or `containerDisk.path`) is put into the same emptyDir
 *     as `disk_N.img` (N = index in spec.volumes). virt-handler bind-mounts it read-only; the stand-in
 *     COPIES it (owner and mode kept), since a bind mount made on the host would not propagate into
 *     the running compute container on this node (its run dir is not a shared mount).
 *  2. SyncVirtualMachine(vmi) on the launcher's command socket (`sockets/launcher-sock`, gRPC
 *     service Cmd from KubeVirt's cmd.proto), retried on timeouts: virt-launcher then defines and
 *     starts the domain itself (overlay on ephemeral-disks, XML, libvirt).
 *  3. once virt-launcher reports the domain Running: VMI status.phase Running (+ status.machine, as
 *     virt-handler's updateMachineType), by a JSON merge patch (KubeVirt's VMI CRD has no status
 *     subresource; virt-handler itself does a full Update). nodeName, activePods, the Ready condition
 *     and volumeStatus are virt-controller's (it sets them from the pod), not the handler's.
 *  4. on VMI deletion: ShutdownVirtualMachine, KillVirtualMachine once the VMI's grace period
 *     (spec.terminationGracePeriodSeconds, default 30) has passed, then phase Succeeded (domain
 *     shut down) or Failed (destroyed), as virt-handler's calculateVmPhaseForStatusReason; then
 *     virt-controller deletes the pod and removes its finalizer. virt-controller often gets there
 *     first (it marks the VMI Failed as soon as the pod is being deleted); a domain whose VMI is
 *     final or gone is killed, as virt-handler does with a domain left without its VMI.
 *
 * NOT done (virt-handler does it): networking (VMIs here have no interfaces), device plugins
 * (/dev/kvm: useEmulation), node labelling and heartbeat, hotplug, migration, cgroup and
 * SELinux adjustments, guest agent, the launcher's domain event stream (state is polled with
 * GetDomain instead), the REST console/VNC server.
 */
import {
  chownSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  copyFileSync,
  chmodSync,
} from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CoreV1Api, CustomObjectsApi, KubeConfig, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { z } from 'zod';
import {
  currentLauncherPod,
  LAUNCHER_LABEL_SELECTOR,
  PodSchema,
  VMI_REF,
  VmiSchema,
} from '../../../operator/src/kubevirt/launcher.ts';
import { launcherCmdClient, type LauncherCmdClient } from './launcher-cmd.ts';

export interface HandlerOptions {
  readonly kubeconfigPath: string;
  readonly nodeName: string;
  /** The kubelet's --root-dir (pods/<uid>/volumes/kubernetes.io~empty-dir/... below it). */
  readonly kubeletRoot: string;
  /** containerd's state dir (io.containerd.runtime.v2.task/k8s.io/<id>/init.pid below it). */
  readonly containerdState: string;
  /** A short directory of its own (unix socket paths are limited to 107 bytes). */
  readonly workDir: string;
  readonly protoFile: string;
  readonly log: (message: string, fields?: Record<string, unknown>) => void;
  readonly intervalMs?: number;
  /** Per-call deadline of SyncVirtualMachine (virt-handler: 20 s... one sync took that long under load). */
  readonly syncTimeoutMs?: number;
}

/**
 * The VMI and pod as the operator parses them (operator/src/kubevirt/launcher.ts), plus what only
 * the handler reads: the volumes, the grace period, the deletion, the phase history; the pod's uid
 * (its emptyDirs are named by it) and container statuses (the containerDisk's volume container).
 */
const VmiMetadata = VmiSchema.shape.metadata.extend({
  deletionTimestamp: z.union([z.string(), z.date()]).nullable().optional(),
});
const VmiSpec = VmiSchema.shape.spec.unwrap();
const VmiStatus = VmiSchema.shape.status.unwrap();
const VolumeSchema = z.looseObject({
  name: z.string(),
  containerDisk: z.looseObject({ path: z.string().optional() }).optional(),
});
export const HandlerVmiSchema = VmiSchema.extend({
  metadata: VmiMetadata,
  spec: VmiSpec.extend({
    volumes: z.array(VolumeSchema).optional(),
    terminationGracePeriodSeconds: z.number().int().nonnegative().nullable().optional(),
  }),
  status: VmiStatus.extend({
    phaseTransitionTimestamps: z.array(z.looseObject({ phase: z.string() })).optional(),
  }).optional(),
});
export type HandlerVmi = z.infer<typeof HandlerVmiSchema>;

const PodStatus = PodSchema.shape.status.unwrap();
export const HandlerPodSchema = PodSchema.extend({
  metadata: PodSchema.shape.metadata.extend({ uid: z.string() }),
  status: PodStatus.extend({
    containerStatuses: z
      .array(
        z.looseObject({
          name: z.string(),
          containerID: z.string().optional(),
          state: z.looseObject({ running: z.unknown().optional() }).optional(),
        }),
      )
      .optional(),
  }).optional(),
});
export type HandlerPod = z.infer<typeof HandlerPodSchema>;

/** virt-launcher's api.Domain as JSON (Go field names, no json tags): only what the handler reads. */
const DomainSchema = z.looseObject({
  Spec: z
    .looseObject({
      OS: z.looseObject({ Type: z.looseObject({ Machine: z.string().optional() }).optional() }).optional(),
      Devices: z
        .looseObject({
          Disks: z
            .array(
              z.looseObject({
                Target: z.looseObject({ Device: z.string().optional() }).optional(),
                Alias: z.looseObject({ Name: z.string().optional() }).nullable().optional(),
              }),
            )
            .optional(),
        })
        .optional(),
    })
    .optional(),
  Status: z.looseObject({ Status: z.string().optional(), Reason: z.string().optional() }).optional(),
});

const FINAL = new Set(['Succeeded', 'Failed']);

/**
 * The pod KubeVirt counts as the VMI's launcher: the operator's own lookup (currentLauncherPod:
 * controlled by the VMI, in status.activePods, on the VMI's node, Running), here with a pod being
 * deleted accepted (when no other is acceptable): its domain still runs, and is what a VMI's
 * deletion shuts down. The VMIs the handler syncs are on its own node (pass()).
 */
export function launcherPodOf(vmi: HandlerVmi, pods: readonly HandlerPod[]): HandlerPod | undefined {
  const chosen = currentLauncherPod(vmi, pods, { terminating: true });
  return pods.find((p) => p === chosen); // the same object, with the handler's fields typed
}

/** containerDisk volumes with their index in spec.volumes (what disk_N counts). */
export function containerDiskVolumes(vmi: HandlerVmi): { index: number; name: string; path: string | undefined }[] {
  return (vmi.spec.volumes ?? []).flatMap((v, index) =>
    v.containerDisk ? [{ index, name: v.name, path: v.containerDisk.path }] : [],
  );
}

export class HandlerStandIn {
  private readonly o: HandlerOptions;
  private readonly custom: CustomObjectsApi;
  private readonly core: CoreV1Api;
  private readonly busy = new Set<string>();
  /** Per VMI uid: the launcher client, the pod it talks to, the VMI as last seen. */
  private readonly clients = new Map<
    string,
    { pod: string; client: LauncherCmdClient; link: string; vmi: HandlerVmi }
  >();
  private readonly shutdownSent = new Set<string>();
  private stopped = false;
  private loop: Promise<void> | undefined;

  constructor(options: HandlerOptions) {
    this.o = options;
    const kc = new KubeConfig();
    kc.loadFromFile(options.kubeconfigPath);
    this.custom = kc.makeApiClient(CustomObjectsApi);
    this.core = kc.makeApiClient(CoreV1Api);
    mkdirSync(path.join(options.workDir, 's'), { recursive: true, mode: 0o700 });
  }

  start(): void {
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
    for (const c of this.clients.values()) c.client.close();
    this.clients.clear();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        await this.pass();
      } catch (e) {
        this.o.log('pass failed', { error: e instanceof Error ? e.message : String(e) });
      }
      await sleep(this.o.intervalMs ?? 1000);
    }
  }

  /** One level-triggered look at every VMI on this node; slow work runs per VMI in the background. */
  async pass(): Promise<void> {
    const list = z
      .object({ items: z.array(z.unknown()) })
      .parse(await this.custom.listClusterCustomObject({ ...VMI_REF }));
    const pods = (
      await this.core.listPodForAllNamespaces({
        labelSelector: LAUNCHER_LABEL_SELECTOR,
        fieldSelector: `spec.nodeName=${this.o.nodeName}`,
      })
    ).items.flatMap((p) => {
      const r = HandlerPodSchema.safeParse(p);
      return r.success ? [r.data] : [];
    });
    const seen = new Set<string>();
    for (const raw of list.items) {
      const r = HandlerVmiSchema.safeParse(raw);
      if (!r.success) continue;
      const vmi = r.data;
      seen.add(vmi.metadata.uid);
      if (vmi.status?.nodeName !== this.o.nodeName) continue;
      if (FINAL.has(vmi.status.phase ?? '')) {
        this.cleanup(vmi.metadata.uid);
        continue;
      }
      if (this.busy.has(vmi.metadata.uid)) continue;
      this.busy.add(vmi.metadata.uid);
      void this.syncVmi(vmi, pods)
        .catch((e: unknown) =>
          this.o.log('sync failed', {
            vmi: `${vmi.metadata.namespace}/${vmi.metadata.name}`,
            error: e instanceof Error ? e.message : String(e),
          }),
        )
        .finally(() => this.busy.delete(vmi.metadata.uid));
    }
    for (const uid of [...this.clients.keys()]) if (!seen.has(uid)) this.cleanup(uid);
  }

  /**
   * The VMI is final or gone (virt-controller marks it Failed and drops its finalizer as soon as the
   * pod is being deleted, often before this handler saw the deletion): a domain still running in its
   * launcher is killed, as virt-handler does with a domain whose VMI is gone; then forgotten.
   */
  private cleanup(uid: string): void {
    const c = this.clients.get(uid);
    if (c === undefined || this.busy.has(uid)) return;
    this.busy.add(uid);
    const id = `${c.vmi.metadata.namespace}/${c.vmi.metadata.name}`;
    void (async () => {
      try {
        const raw = await c.client.getDomain(5000);
        const state = raw !== undefined ? DomainSchema.parse(JSON.parse(raw)).Status?.Status : undefined;
        if (state !== undefined && state !== 'Shutoff' && state !== 'Crashed') {
          await c.client.kill(JSON.stringify(c.vmi), 10_000);
          this.o.log('domain killed', { vmi: id, why: 'VMI final or gone' });
        }
      } catch (e) {
        // The launcher is gone or going: its domain went with it.
        this.o.log('cleanup: launcher not reachable', { vmi: id, error: e instanceof Error ? e.message : String(e) });
      } finally {
        this.forget(uid);
        this.busy.delete(uid);
      }
    })();
  }

  private forget(uid: string): void {
    const c = this.clients.get(uid);
    if (c === undefined) return;
    c.client.close();
    rmSync(c.link, { force: true });
    this.clients.delete(uid);
    this.shutdownSent.delete(uid);
  }

  private emptyDir(pod: HandlerPod, volume: string): string {
    return path.join(this.o.kubeletRoot, 'pods', pod.metadata.uid, 'volumes', 'kubernetes.io~empty-dir', volume);
  }

  /** A client on the pod's launcher-sock (through a short symlink to its sockets emptyDir), once the socket exists. */
  private clientFor(vmi: HandlerVmi, pod: HandlerPod): LauncherCmdClient | undefined {
    const uid = vmi.metadata.uid;
    const known = this.clients.get(uid);
    if (known?.pod === pod.metadata.uid) {
      known.vmi = vmi;
      return known.client;
    }
    if (known) this.forget(uid);
    const sockets = this.emptyDir(pod, 'sockets');
    if (!existsSync(path.join(sockets, 'launcher-sock'))) return undefined;
    const link = path.join(this.o.workDir, 's', pod.metadata.uid.slice(0, 13));
    rmSync(link, { force: true });
    symlinkSync(sockets, link);
    const client = launcherCmdClient(this.o.protoFile, path.join(link, 'launcher-sock'));
    this.clients.set(uid, { pod: pod.metadata.uid, client, link, vmi });
    return client;
  }

  private async syncVmi(vmi: HandlerVmi, allPods: readonly HandlerPod[]): Promise<void> {
    const id = `${vmi.metadata.namespace}/${vmi.metadata.name}`;
    const pod = launcherPodOf(vmi, allPods);
    const deleting = vmi.metadata.deletionTimestamp !== undefined && vmi.metadata.deletionTimestamp !== null;
    if (deleting) {
      await this.shutdown(vmi, pod);
      return;
    }
    if (pod === undefined || pod.status?.phase !== 'Running') return;
    if (vmi.status?.phase !== 'Scheduled' && vmi.status?.phase !== 'Running') return;
    if (!this.placeContainerDisks(vmi, pod)) return;
    const client = this.clientFor(vmi, pod);
    if (client === undefined) return; // virt-launcher not ready yet (launcher-init-sock)
    const json = JSON.stringify(vmi);
    if (vmi.status.phase === 'Scheduled') {
      const t0 = Date.now();
      for (let attempt = 1; ; attempt++) {
        try {
          await client.sync(json, this.o.syncTimeoutMs ?? 20_000);
          this.o.log('SyncVirtualMachine ok', { vmi: id, pod: pod.metadata.name, attempt, ms: Date.now() - t0 });
          break;
        } catch (e) {
          const msg = e instanceof Error ? e.message : String(e);
          // Timeouts (a loaded machine) and a launcher still starting are retried; anything else next pass.
          if (attempt >= 6 || !/DEADLINE_EXCEEDED|UNAVAILABLE|Deadline exceeded/i.test(msg)) throw e;
          this.o.log('SyncVirtualMachine retry', { vmi: id, attempt, error: msg });
        }
      }
    }
    const raw = await client.getDomain(10_000);
    if (raw === undefined) return;
    const domain = DomainSchema.parse(JSON.parse(raw));
    const state = domain.Status?.Status;
    // virt-handler's calculateVmPhaseForStatusReason: Running/Blocked/PMSuspended/Paused -> Running.
    if (
      vmi.status.phase === 'Scheduled' &&
      (state === 'Running' || state === 'Paused' || state === 'Blocked' || state === 'PMSuspended')
    ) {
      const machine = domain.Spec?.OS?.Type?.Machine;
      // virt-handler's updateVolumeStatusesFromDomain: each volume's target device, by the disk's alias.
      const targets = new Map(
        (domain.Spec?.Devices?.Disks ?? []).flatMap((d) =>
          d.Alias?.Name && d.Target?.Device ? [[d.Alias.Name, d.Target.Device] as const] : [],
        ),
      );
      const volumeStatus = vmi.status.volumeStatus?.map((v) => ({
        ...v,
        ...(targets.has(v.name) ? { target: targets.get(v.name) } : {}),
      }));
      await this.patchStatus(vmi, {
        phase: 'Running',
        ...(machine ? { machine: { type: machine } } : {}),
        ...(volumeStatus ? { volumeStatus } : {}),
      });
      this.o.log('VMI Running', { vmi: id, pod: pod.metadata.name, domainState: state });
    }
  }

  /**
   * Puts each containerDisk's file into the pod's container-disks emptyDir as disk_N.img; true once
   * all are there. The source is the volume container's root filesystem, found from its containerd
   * task (init.pid -> /proc/<pid>/root), like virt-handler finds it from the container-disk socket.
   */
  private placeContainerDisks(vmi: HandlerVmi, pod: HandlerPod): boolean {
    const dir = this.emptyDir(pod, 'container-disks');
    let all = true;
    for (const v of containerDiskVolumes(vmi)) {
      const target = path.join(dir, `disk_${v.index}.img`);
      if (existsSync(target)) continue;
      if (!existsSync(path.join(dir, `disk_${v.index}.sock`))) {
        all = false; // the volume container's container-disk has not started yet
        continue;
      }
      const status = pod.status?.containerStatuses?.find((c) => c.name === `volume${v.name}`);
      const cid = status?.containerID?.replace(/^containerd:\/\//, '');
      if (cid === undefined || status?.state?.running === undefined) {
        all = false;
        continue;
      }
      const pid = readFileSync(
        path.join(this.o.containerdState, 'io.containerd.runtime.v2.task', 'k8s.io', cid, 'init.pid'),
        'utf8',
      ).trim();
      if (!/^\d+$/.test(pid)) throw new Error(`container ${cid}: bad init.pid ${pid}`);
      const root = `/proc/${pid}/root`;
      const source = v.path !== undefined ? path.join(root, v.path) : firstDiskFile(path.join(root, 'disk'));
      const st = statSync(source);
      const tmp = `${target}.tmp`;
      copyFileSync(source, tmp);
      chownSync(tmp, st.uid, st.gid);
      chmodSync(tmp, st.mode & 0o777);
      renameSync(tmp, target);
      this.o.log('containerDisk placed', {
        vmi: `${vmi.metadata.namespace}/${vmi.metadata.name}`,
        volume: v.name,
        target,
        bytes: st.size,
      });
    }
    return all;
  }

  private async shutdown(vmi: HandlerVmi, pod: HandlerPod | undefined): Promise<void> {
    const id = `${vmi.metadata.namespace}/${vmi.metadata.name}`;
    const client = pod !== undefined ? this.clientFor(vmi, pod) : undefined;
    let state: string | undefined;
    let reason: string | undefined;
    if (client !== undefined) {
      try {
        const raw = await client.getDomain(10_000);
        const d = raw !== undefined ? DomainSchema.parse(JSON.parse(raw)) : undefined;
        state = d?.Status?.Status;
        reason = d?.Status?.Reason;
      } catch {
        state = undefined; // the launcher is going away: nothing left to shut down
      }
    }
    const json = JSON.stringify(vmi);
    if (client !== undefined && state !== undefined && state !== 'Shutoff' && state !== 'Crashed') {
      const grace = (vmi.spec.terminationGracePeriodSeconds ?? 30) * 1000;
      const since = Date.parse(String(vmi.metadata.deletionTimestamp));
      if (grace > 0 && !this.shutdownSent.has(vmi.metadata.uid)) {
        await client.shutdown(json, 10_000);
        this.shutdownSent.add(vmi.metadata.uid);
        this.o.log('domain shutdown requested', { vmi: id });
      }
      if (grace === 0 || Date.now() - since > grace) {
        await client.kill(json, 10_000);
        this.o.log('domain killed', { vmi: id });
      }
      return; // the next pass sees the domain off
    }
    if (vmi.status?.phase === 'Running' || vmi.status?.phase === 'Scheduled') {
      // Shut off by the shutdown (Succeeded) or destroyed (Failed), as virt-handler decides it.
      const phase = state === 'Shutoff' && reason === 'Shutdown' ? 'Succeeded' : 'Failed';
      await this.patchStatus(vmi, { phase });
      this.o.log('VMI final', { vmi: id, phase, domainState: state ?? 'gone' });
    }
  }

  private async patchStatus(vmi: HandlerVmi, status: Record<string, unknown>): Promise<void> {
    const phase = status['phase'];
    const stamps =
      typeof phase === 'string'
        ? [
            ...(vmi.status?.phaseTransitionTimestamps ?? []),
            { phase, phaseTransitionTimestamp: new Date().toISOString() },
          ]
        : undefined;
    await this.custom.patchNamespacedCustomObject(
      {
        ...VMI_REF,
        namespace: vmi.metadata.namespace,
        name: vmi.metadata.name,
        body: { status: { ...status, ...(stamps ? { phaseTransitionTimestamps: stamps } : {}) } },
      },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
  }
}

function firstDiskFile(dir: string): string {
  const files = readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => e.name)
    .sort();
  const first = files[0];
  if (first === undefined) throw new Error(`no disk file in ${dir}`);
  return path.join(dir, first);
}
