/**
 * Real KubeVirt on a test-bed node: startKubevirt(cp, node, ...) installs KubeVirt's own CRDs, the
 * namespace `kubevirt` with a KubeVirt CR (developerConfiguration.useEmulation: true; status.phase
 * set, since no virt-operator runs to set it and virt-controller waits for it), labels the node as
 * virt-handler's node labeller would (kubevirt.io/schedulable, machine-type.node.kubevirt.io/q35),
 * and starts two processes:
 *  - the REAL virt-controller (built from the Go module proxy), `--kubeconfig` as ServiceAccount
 *    kubevirt/kubevirt-controller, `--launcher-image` the locally built virt-launcher image;
 *  - the handler stand-in (handler.ts; the one imitated piece) as kubevirt/kubevirt-handler.
 * Both are recorded in the node's record (node.json), so node.stop(), `npm run cluster -- down` and
 * the stale-node sweep stop them with the node. Not run: virt-api (no webhooks, no defaults: VMIs
 * need spec.domain.firmware.uuid and machine.type q35, see vmiManifest), virt-operator, virt-handler.
 *
 * RBAC shortcut: both ServiceAccounts are bound to cluster-admin (upstream's ClusterRoles come from
 * virt-operator's install strategy, which is not run here).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { z } from 'zod';
import type { ControlPlane } from '../cluster/control-plane.ts';
import { installCrds } from '../cluster/crds.ts';
import { freePorts } from '../support/ports.ts';
import { createServiceAccountKubeconfig } from '../cluster/service-account.ts';
import type { Node } from '../node/kubelet.ts';
import { writeNodeRecord } from '../node/node-state.ts';
import { startDaemon, type Daemon } from '../support/process.ts';
import { waitFor } from '../support/wait.ts';
import { tail } from '../support/tail.ts';
import { launcherCmdProto } from './launcher-cmd.ts';

export const KUBEVIRT_NS = 'kubevirt';
export const NODE_LABELS = { 'kubevirt.io/schedulable': 'true', 'machine-type.node.kubevirt.io/q35': 'true' } as const;

export interface KubevirtOptions {
  /** The virt-controller binary (ensureKubevirtBinaries().virtController). */
  readonly virtController: string;
  /** KubeVirt version of that build: its cmd.proto is what the handler stand-in speaks. */
  readonly version: string;
  /** The virt-launcher image name, as imported into the node's containerd. */
  readonly launcherImage: string;
  /** KubeVirt's CRDs (kubevirtCrdFiles()). */
  readonly crdFiles: readonly string[];
  /** Keep running after this process exits (the CLI). Default false. */
  readonly detached?: boolean;
  readonly log?: (message: string) => void;
}

export interface Kubevirt {
  readonly controller: Daemon;
  readonly handler: Daemon;
  readonly logs: { readonly controller: string; readonly handler: string };
  /** Milliseconds from startKubevirt() to virt-controller leading. */
  readonly startMs: number;
  stop(): Promise<void>;
}

const LeaseSchema = z.object({ spec: z.object({ holderIdentity: z.string().optional() }) });

export async function startKubevirt(cp: ControlPlane, node: Node, o: KubevirtOptions): Promise<Kubevirt> {
  const t0 = Date.now();
  const log = o.log ?? ((m: string) => process.stderr.write(`[kubevirt] ${m}\n`));
  const dir = path.join(node.runDir, 'kubevirt');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const protoFile = await launcherCmdProto(o.version);
  await installCrds(cp, o.crdFiles);

  // Namespace, ServiceAccounts (cluster-admin, see above), KubeVirt CR.
  const sa = async (name: string): Promise<string> => {
    const kc = await createServiceAccountKubeconfig(cp, KUBEVIRT_NS, name, { dir, duration: '48h' });
    const binding = {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: `blockpull-testbed-${name}` },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' },
      subjects: [{ kind: 'ServiceAccount', name, namespace: KUBEVIRT_NS }],
    };
    await cp.kubectl(['apply', '-f', '-'], { input: stringify(binding) });
    return kc;
  };
  const controllerKc = await sa('kubevirt-controller');
  const handlerKc = await sa('kubevirt-handler');
  const kv = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'KubeVirt',
    metadata: { name: 'kubevirt', namespace: KUBEVIRT_NS },
    spec: { configuration: { developerConfiguration: { useEmulation: true, featureGates: [] } } },
  };
  await cp.kubectl(['apply', '-f', '-'], { input: stringify(kv) });
  // virt-operator would set the phase; virt-controller's config watcher ignores a KubeVirt CR without one.
  await patchKubevirtPhase(cp);
  await cp.kubectl([
    'label',
    'node',
    node.name,
    '--overwrite',
    ...Object.entries(NODE_LABELS).map(([k, v]) => `${k}=${v}`),
  ]);

  const detached = o.detached ?? false;
  const [port] = (await freePorts(1)) as [number];
  const controllerLog = path.join(dir, 'virt-controller.log');
  const handlerLog = path.join(dir, 'handler-standin.log');
  const daemons: Daemon[] = [];
  const record = (d: Daemon): Daemon => {
    daemons.push(d);
    node.record.daemons.push(d.record);
    writeNodeRecord(node.record);
    return d;
  };
  const onExit = (): void => {
    for (const d of daemons) d.child.kill('SIGKILL');
  };
  if (!detached) process.on('exit', onExit);
  const stop = async (): Promise<void> => {
    for (const d of [...daemons].reverse()) await d.stop(10_000);
    process.removeListener('exit', onExit);
  };
  try {
    const controller = record(
      await startDaemon(
        'virt-controller',
        [
          o.virtController,
          `--kubeconfig=${controllerKc}`,
          `--launcher-image=${o.launcherImage}`,
          '--listen=127.0.0.1',
          `--port=${port}`,
          '--v=2',
        ],
        controllerLog,
        { keepRunning: detached, marker: node.runDir },
      ),
    );
    const handler = record(
      await startDaemon(
        'handler-standin',
        [
          process.execPath,
          path.join(import.meta.dirname, 'handler-main.ts'),
          '--kubeconfig',
          handlerKc,
          '--node',
          node.name,
          '--kubelet-root',
          path.join(node.runDir, 'kubelet'),
          '--containerd-state',
          path.join(node.runDir, 'containerd', 'state'),
          '--work-dir',
          dir,
          '--proto',
          protoFile,
        ],
        handlerLog,
        { keepRunning: detached, marker: node.runDir },
      ),
    );
    await waitFor(
      'virt-controller leading',
      120_000,
      async () => {
        for (const d of daemons) if (!d.isRunning()) throw new Error(`${d.name} exited:\n${tail(d.logPath, 40)}`);
        const r = await cp.kubectlResult(['-n', KUBEVIRT_NS, 'get', 'lease', 'virt-controller', '-o', 'json'], {
          timeoutMs: 10_000,
        });
        return r.exitCode === 0 && (LeaseSchema.parse(JSON.parse(r.stdout)).spec.holderIdentity ?? '') !== '';
      },
      500,
    ).catch((e: unknown) => {
      throw new Error(
        `${e instanceof Error ? e.message : String(e)}\n--- virt-controller log:\n${tail(controllerLog, 40)}`,
      );
    });
    const startMs = Date.now() - t0;
    log(`virt-controller leading and handler stand-in running in ${(startMs / 1000).toFixed(1)} s (logs in ${dir})`);
    return { controller, handler, logs: { controller: controllerLog, handler: handlerLog }, startMs, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

async function patchKubevirtPhase(cp: ControlPlane): Promise<void> {
  const patch = JSON.stringify({ status: { phase: 'Deployed' } });
  const args = ['-n', KUBEVIRT_NS, 'patch', 'kubevirts.kubevirt.io', 'kubevirt', '--type=merge', '-p', patch];
  const viaStatus = await cp.kubectlResult([...args, '--subresource=status']);
  if (viaStatus.exitCode !== 0) await cp.kubectl(args);
  const phase = (
    await cp.kubectl(['-n', KUBEVIRT_NS, 'get', 'kubevirts.kubevirt.io', 'kubevirt', '-o', 'jsonpath={.status.phase}'])
  ).trim();
  if (phase !== 'Deployed') throw new Error(`KubeVirt CR status.phase is "${phase}" after the patch`);
}

export interface VmiOptions {
  readonly namespace: string;
  readonly name: string;
  /** containerDisk image, as imported into the node's containerd. */
  readonly containerDiskImage: string;
  /** The launcher's user: 107 (non-root, KubeVirt's default since 1.0) or 0 (root). */
  readonly runtimeUser: 0 | 107;
  /** Domain firmware uuid (virt-api would default it). */
  readonly uuid: string;
  readonly diskName?: string;
  readonly terminationGracePeriodSeconds?: number;
}

/**
 * A VMI with one containerDisk, no network, as virt-api would have admitted it: machine q35 and a
 * firmware uuid set (no virt-api fills them in here), status.runtimeUser set (virt-api's mutating
 * webhook sets it: 107 unless the Root feature gate applies).
 */
export function vmiManifest(o: VmiOptions): Record<string, unknown> {
  const disk = o.diskName ?? 'rootdisk';
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: o.name, namespace: o.namespace },
    spec: {
      terminationGracePeriodSeconds: o.terminationGracePeriodSeconds ?? 0,
      domain: {
        machine: { type: 'q35' },
        firmware: { uuid: o.uuid },
        cpu: { cores: 1 },
        memory: { guest: '64Mi' },
        resources: { requests: { memory: '64Mi' } },
        devices: {
          autoattachPodInterface: false,
          autoattachSerialConsole: true,
          disks: [{ name: disk, disk: { bus: 'virtio' } }],
        },
      },
      volumes: [{ name: disk, containerDisk: { image: o.containerDiskImage, imagePullPolicy: 'IfNotPresent' } }],
    },
    status: { runtimeUser: o.runtimeUser },
  };
}

/** Writes what a user of `npm run cluster -- up --kubevirt` needs to create a VMI (an example manifest). */
export function writeExampleVmi(file: string, o: VmiOptions): void {
  writeFileSync(file, stringify(vmiManifest(o)));
}

/** virt-launcher's libvirt URI inside `compute` (KubeVirt's pkg/virt-launcher: root, or the session daemon of uid 107). */
export function launcherUri(runtimeUser: number): string {
  return runtimeUser === 0 ? 'qemu:///system' : 'qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock';
}
