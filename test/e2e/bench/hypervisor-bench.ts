/**
 * Benchmark: full pull of a 3-layer chain with 2 GiB allocated, through the operator's virsh
 * driver (startPull + waitForPullCompletion: events + 0.5 s polling, confirmed by the chain)
 * versus `virsh blockpull --wait` on an identical chain, in one run, same domain, same daemon.
 *
 *   node test/e2e/bench/hypervisor-bench.ts [--allocated-mib 2048] [--size-mib 3072] [--layers 3] [--virsh-first]
 *
 * Prints one JSON line with both timings. Stops everything it started, also on failure.
 */
import { run } from '../support/process.ts';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { computeGoal } from '../../../operator/src/hypervisor/chain.ts';
import { waitForPullCompletion } from '../blockjob/wait-for-pull.ts';
import { VirshDriver } from '../../../operator/src/hypervisor/virsh-driver.ts';
import { startLauncher, type Launcher } from '../launcher/launcher.ts';

const MiB = 1024 * 1024;

const { values } = parseArgs({
  options: {
    'allocated-mib': { type: 'string', default: '2048' },
    'size-mib': { type: 'string', default: '3072' },
    layers: { type: 'string', default: '3' },
    'virsh-first': { type: 'boolean', default: false },
  },
});
const allocatedMiB = Number(values['allocated-mib']);
const sizeMiB = Number(values['size-mib']);
const layers = Number(values.layers);

let launcher: Launcher | undefined;
const cleanup = async (): Promise<void> => {
  const l = launcher;
  launcher = undefined;
  await l?.stop();
};
process.once('SIGINT', () => void cleanup().finally(() => process.exit(130)));
process.once('SIGTERM', () => void cleanup().finally(() => process.exit(143)));

try {
  const tBuild = performance.now();
  launcher = await startLauncher({
    namespace: 'bench',
    vmiName: 'vm',
    disks: [
      { name: 'driver', layers, sizeMiB, allocatedMiB },
      { name: 'virsh', layers, sizeMiB, allocatedMiB },
    ],
    memoryMiB: 64,
  });
  const l = launcher;
  const buildS = (performance.now() - tBuild) / 1000;
  const [a, b] = l.disks;
  if (a === undefined || b === undefined) throw new Error('launcher has no disks');
  const driver = new VirshDriver(l.runner, l.uri);

  // Write back dirty pages (the freshly built images, the previous pull) so that neither
  // measurement pays for the other's writeback.
  const settle = async (): Promise<void> => {
    await run(['sync']);
  };
  const viaDriver = async (): Promise<{ seconds: number; eventsSeen: number }> => {
    await settle();
    // Start, then wait as the controller does (events + polling, confirmed by the chain).
    const goal = computeGoal(await driver.getDisk(l.domain, { name: a.name }));
    const t = performance.now();
    await driver.startPull(l.domain, a.target, {});
    const res = await waitForPullCompletion(driver, l.domain, goal, { pollIntervalMs: 500, timeoutMs: 1_800_000 });
    const seconds = (performance.now() - t) / 1000;
    if (res.disk.chain.length !== 1) throw new Error('driver pull did not flatten the chain');
    return { seconds, eventsSeen: res.eventsSeen };
  };
  const viaVirsh = async (): Promise<number> => {
    // Plain virsh, blocking until the job is done.
    await settle();
    const t = performance.now();
    const r = await l.runner.run(
      ['virsh', '-q', '-c', l.uri, 'blockpull', '--domain', l.domain, '--path', b.target, '--wait'],
      { timeoutMs: 1_800_000 },
    );
    const seconds = (performance.now() - t) / 1000;
    if (r.exitCode !== 0) throw new Error(`virsh blockpull --wait failed: ${r.stderr}`);
    const after = await driver.getDisk(l.domain, { name: b.name });
    if (after.chain.length !== 1) throw new Error('virsh pull did not flatten the chain');
    return seconds;
  };
  let virshS: number;
  let res: { seconds: number; eventsSeen: number };
  if (values['virsh-first']) {
    virshS = await viaVirsh();
    res = await viaDriver();
  } else {
    res = await viaDriver();
    virshS = await viaVirsh();
  }
  const driverS = res.seconds;

  // Sanity: both flattened images hold the same data (the chains were identical).
  await l.flush(a.name);
  await l.flush(b.name);
  await run(['qemu-img', 'compare', '-U', '-q', '-f', 'qcow2', '-F', 'qcow2', a.chain[0] ?? '', b.chain[0] ?? '']);

  console.log(
    JSON.stringify({
      bench: 'hypervisor full pull',
      layers,
      sizeMiB,
      allocatedMiB,
      pulledMiB: Math.round(a.pullBytes / MiB),
      buildSeconds: Number(buildS.toFixed(1)),
      driverSeconds: Number(driverS.toFixed(2)),
      virshWaitSeconds: Number(virshS.toFixed(2)),
      driverMiBps: Number((a.pullBytes / MiB / driverS).toFixed(1)),
      virshMiBps: Number((b.pullBytes / MiB / virshS).toFixed(1)),
      eventsSeen: res.eventsSeen,
      order: values['virsh-first'] ? 'virsh,driver' : 'driver,virsh',
      loadAverage1m: Number((loadavg()[0] ?? 0).toFixed(1)),
    }),
  );
} finally {
  await cleanup();
}
