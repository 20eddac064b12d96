/**
 * What a node started by startNode() owns, written to `<runDir>/node.json` as it is created, so that
 * everything can be torn down from the record alone: by node.stop(), by `npm run cluster -- down`
 * (the node keeps running after `up --node` exits), and by the stale-run sweep of the next start
 * when the process that started a node died without stopping it (SIGKILL, OOM, a killed CI job).
 *
 * Ownership: a test node is owned by the process that started it (pid + /proc start time); it is
 * stale once that process is gone. A detached node (the CLI's) is owned by its control plane's state
 * dir; it is stale once that control plane no longer runs (or runs another server). Other runs'
 * nodes are never touched.
 */
import {
  existsSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmdirSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { runKubectl } from '../cluster/client.ts';
import { processStartTime, withLock } from '../support/lock.ts';
import { daemonRecord, isOurs, run, stopDaemon } from '../support/process.ts';
import { teardownContainerd } from './containerd.ts';
import { unmountAllUnder, mountsUnder } from '../support/mounts.ts';

/** Node run dirs are `<NODE_RUN_ROOT>/bpnode-<id>` (short: unix socket paths are limited to 107 bytes). */
export const NODE_RUN_ROOT = '/var/tmp';
export const NODE_RUN_PREFIX = 'bpnode-';
const CGROUP_FS = '/sys/fs/cgroup';

export const nodeRecordSchema = z.object({
  version: z.literal(1),
  id: z.string().regex(/^[a-z0-9]{1,10}$/),
  name: z.string(),
  runDir: z.string(),
  cgroupRoot: z.string().startsWith('/blockpull-'),
  bridge: z.string(),
  network: z.string(),
  /** Test nodes: the process that started the node. */
  owner: z.object({ pid: z.number().int().positive(), start: z.string() }),
  /** Detached (CLI) nodes outlive their starter; they belong to their control plane instead. */
  detached: z.boolean(),
  controlPlane: z.object({ stateDir: z.string(), server: z.string(), kubeconfigPath: z.string(), kubectl: z.string() }),
  /** The DNAT rule (iptables -t nat argv after -A/-D) once added. */
  dnatRule: z.array(z.string()).optional(),
  /** In start order: containerd, kube-controller-manager, kube-scheduler, kubelet. */
  daemons: z.array(daemonRecord),
});
export type NodeRecord = z.infer<typeof nodeRecordSchema>;

export function nodeRecordPath(runDir: string): string {
  return join(runDir, 'node.json');
}

export function writeNodeRecord(record: NodeRecord): void {
  const file = nodeRecordPath(record.runDir);
  writeFileSync(`${file}.tmp`, JSON.stringify(record, null, 2), { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
}

export function readNodeRecord(runDir: string): NodeRecord | undefined {
  try {
    const parsed = nodeRecordSchema.safeParse(JSON.parse(readFileSync(nodeRecordPath(runDir), 'utf8')));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** v1 hierarchies (and the unified one) mounted under /sys/fs/cgroup. */
export function cgroupHierarchies(): string[] {
  if (!existsSync(CGROUP_FS)) return [];
  return readdirSync(CGROUP_FS)
    .map((d) => join(CGROUP_FS, d))
    .filter((d) => {
      try {
        return statSync(d).isDirectory() && existsSync(join(d, 'cgroup.procs'));
      } catch {
        return false;
      }
    });
}

/** Pids in a cgroup tree (any depth). */
function cgroupPids(dir: string): number[] {
  if (!existsSync(dir)) return [];
  const pids: number[] = [];
  try {
    for (const l of readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n'))
      if (/^\d+$/.test(l)) pids.push(Number(l));
  } catch {
    /* raced with removal */
  }
  for (const entry of readdirSync(dir, { withFileTypes: true }))
    if (entry.isDirectory()) pids.push(...cgroupPids(join(dir, entry.name)));
  return pids;
}

/** rmdir every cgroup below dir (deepest first), then dir. Returns the ones that could not be removed. */
export function removeCgroupTree(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const failed: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) failed.push(...removeCgroupTree(join(dir, entry.name)));
  }
  try {
    rmdirSync(dir);
  } catch {
    failed.push(dir);
  }
  return failed;
}

export interface TeardownOptions {
  /**
   * Ask the API server first to delete the node's pods (so the kubelet tears sandboxes down itself)
   * and afterwards the Node object. Off for the sweep: the owner is gone and so, usually, is its API server.
   */
  readonly useApi?: boolean;
}

/**
 * Stop everything a node record names and remove what it made. Idempotent; safe for a half-started
 * node. Returns problems that could not be fixed (empty = clean).
 */
export async function teardownNode(rec: NodeRecord, options: TeardownOptions = {}): Promise<string[]> {
  const errors: string[] = [];
  const kubectl = (args: readonly string[], timeoutMs: number): Promise<unknown> =>
    runKubectl(rec.controlPlane.kubectl, rec.controlPlane.kubeconfigPath, args, { timeoutMs }).catch(() => undefined);
  const kubelet = rec.daemons.find((d) => d.name === 'kubelet');
  if (options.useApi && kubelet && isOurs(kubelet)) {
    await kubectl(
      [
        'delete',
        'pods',
        '--all-namespaces',
        '--all',
        `--field-selector=spec.nodeName=${rec.name}`,
        '--grace-period=1',
        '--wait=true',
        '--timeout=60s',
      ],
      90_000,
    );
  }
  // kubelet, scheduler, controller-manager (reverse start order); containerd last, with its tasks.
  for (const d of [...rec.daemons].reverse()) if (d.name !== 'containerd') await stopDaemon(d, 10_000);
  if (rec.dnatRule) {
    const exists = await run(['iptables', '-t', 'nat', '-C', ...rec.dnatRule], { allowExit: true });
    if (exists.exitCode === 0) {
      const r = await run(['iptables', '-t', 'nat', '-D', ...rec.dnatRule], { allowExit: true });
      if (r.exitCode !== 0) errors.push(`iptables rule ${rec.dnatRule.join(' ')}: ${r.stderr.trim()}`);
    }
  }
  if (options.useApi) await kubectl(['delete', 'node', rec.name, '--wait=false'], 20_000);
  await teardownContainerd({
    runDir: join(rec.runDir, 'containerd'),
    bridge: rec.bridge,
    network: rec.network,
    process: rec.daemons.find((d) => d.name === 'containerd'),
  });
  // Anything still in the node's cgroups (containers whose runtime state was lost): kill it.
  for (const h of cgroupHierarchies()) {
    for (const pid of new Set(cgroupPids(join(h, rec.cgroupRoot)))) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  await unmountAllUnder(rec.runDir);
  // kubelet's /var/log/containers symlinks into our pod logs dir
  if (existsSync('/var/log/containers')) {
    for (const f of readdirSync('/var/log/containers')) {
      const p = join('/var/log/containers', f);
      try {
        if (readlinkSync(p).startsWith(`${rec.runDir}/`)) unlinkSync(p);
      } catch {
        /* not a link */
      }
    }
  }
  for (const h of cgroupHierarchies()) {
    const dir = join(h, rec.cgroupRoot);
    // a killed process leaves its cgroup a moment later
    for (let i = 0; i < 50 && removeCgroupTree(dir).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
    errors.push(...removeCgroupTree(dir).map((c) => `cgroup ${c}`));
  }
  if (mountsUnder(rec.runDir).length === 0) rmSync(rec.runDir, { recursive: true, force: true });
  else errors.push(`mounts left under ${rec.runDir}: ${mountsUnder(rec.runDir).join(', ')}`);
  return errors;
}

/** Why a recorded node is stale (its owner is gone), or undefined while it is in use. */
export function staleReason(rec: NodeRecord): string | undefined {
  if (!rec.detached) {
    if (rec.owner.pid === process.pid && processStartTime(process.pid) === rec.owner.start) return undefined;
    return processStartTime(rec.owner.pid) === rec.owner.start ? undefined : `its owner (pid ${rec.owner.pid}) is gone`;
  }
  // Detached: alive as long as its control plane runs the same server.
  let state: unknown;
  try {
    state = JSON.parse(readFileSync(join(rec.controlPlane.stateDir, 'state.json'), 'utf8'));
  } catch {
    return `its control plane (${rec.controlPlane.stateDir}) is not recorded any more`;
  }
  const parsed = z.object({ server: z.string(), processes: z.array(daemonRecord) }).safeParse(state);
  if (!parsed.success || parsed.data.server !== rec.controlPlane.server)
    return `its control plane (${rec.controlPlane.stateDir}) was replaced`;
  if (!parsed.data.processes.every((p) => isOurs(p)))
    return `its control plane (${rec.controlPlane.stateDir}) is not running`;
  return undefined;
}

/**
 * Stale-run sweep: tears down every node under NODE_RUN_ROOT whose owner is gone (see staleReason).
 * A run dir without a readable record is left alone (being created, or not ours to judge). Two
 * concurrent sweeps take turns per run dir (a lock file beside it). Returns the run dirs swept.
 */
export async function sweepStaleNodes(options: { root?: string; log?: (m: string) => void } = {}): Promise<string[]> {
  const root = options.root ?? NODE_RUN_ROOT;
  const log = options.log ?? (() => undefined);
  let names: string[];
  try {
    names = readdirSync(root, { withFileTypes: true })
      .filter((d) => d.isDirectory() && d.name.startsWith(NODE_RUN_PREFIX))
      .map((d) => d.name);
  } catch {
    return [];
  }
  const swept: string[] = [];
  for (const name of names) {
    const runDir = join(root, name);
    const first = readNodeRecord(runDir);
    if (!first || first.runDir !== runDir || !staleReason(first)) continue;
    await withLock(
      `${runDir}.sweep.lock`,
      async () => {
        const rec = readNodeRecord(runDir); // another sweep may have done it meanwhile
        const why = rec && staleReason(rec);
        if (!rec || !why) return;
        log(`sweeping stale node ${runDir}: ${why}`);
        const problems = await teardownNode(rec, { useApi: false });
        if (problems.length > 0) log(`sweep of ${runDir} left: ${problems.join('; ')}`);
        swept.push(runDir);
      },
      { timeoutMs: 180_000 },
    );
  }
  return swept;
}
