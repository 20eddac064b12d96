/**
 * npm run cluster -- up [--no-crds]   start etcd + kube-apiserver (kept running after this exits),
 *                                     install the CRDs, print the admin kubeconfig path
 * npm run cluster -- up --node        the same plus one Ready node (containerd, kubelet, controller-manager,
 *                                     scheduler: test/e2e/node), also kept running
 * npm run cluster -- up --kubevirt    the same plus real KubeVirt on that node (test/e2e/kubevirt: KubeVirt's
 *                                     CRDs, the real virt-controller, the handler stand-in); writes an example
 *                                     VMI manifest (<state>/example-vmi.yaml) to `kubectl create -f`
 * npm run cluster -- status           report (exit 0 when running and ready, and the node, if any, Ready; 3 otherwise)
 * npm run cluster -- down             stop the node (if any), then the control plane: no process, port,
 *                                     mount, bridge, iptables rule or cgroup left
 * npm run cluster -- build            only build/cache the binaries (ensureBinaries) and print their paths
 *
 * State and the admin kubeconfig live in <repo>/.cache/cluster/ (admin.kubeconfig); with --node,
 * <state>/node.json names the node's run dir (/var/tmp/bpnode-<id>), whose own node.json records
 * what the node runs and made (see test/e2e/node/node-state.ts).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { ensureBinaries } from './binaries.ts';
import { clusterClient } from './client.ts';
import { attachControlPlane, DEFAULT_STATE_DIR, startControlPlane, stopRecorded } from './control-plane.ts';
import { installCrds, operatorCrdFiles, projectCrdFiles } from './crds.ts';
import { isOurs } from '../support/process.ts';
import { ensureKubevirtBinaries } from '../kubevirt/binaries.ts';
import { kubevirtCrdFiles } from '../kubevirt/crds.ts';
import { ensureKubevirtImages } from '../kubevirt/images.ts';
import { startKubevirt, writeExampleVmi } from '../kubevirt/kubevirt.ts';
import { nodeApiserverArgs, nodeLeftovers, startNode } from '../node/kubelet.ts';
import { NODE_RUN_PREFIX, NODE_RUN_ROOT, readNodeRecord, teardownNode, type NodeRecord } from '../node/node-state.ts';

const NodePointer = z.object({ runDir: z.string() });

/** The CLI's node (<stateDir>/node.json -> its run dir), if one was started. */
function cliNode(stateDir: string): { runDir: string; record: NodeRecord | undefined } | undefined {
  try {
    const { runDir } = NodePointer.parse(JSON.parse(readFileSync(path.join(stateDir, 'node.json'), 'utf8')));
    return { runDir, record: readNodeRecord(runDir) };
  } catch {
    return undefined;
  }
}

/** Stops the CLI's node from its record and checks that nothing of it is left. */
async function stopCliNode(stateDir: string): Promise<string | undefined> {
  const n = cliNode(stateDir);
  if (!n) return undefined;
  const problems = n.record ? await teardownNode(n.record, { useApi: true }) : [];
  const left = n.record
    ? [...problems, ...(await nodeLeftovers(n.runDir, { cgroupRoot: n.record.cgroupRoot, containerd: n.record }))]
    : [];
  if (left.length > 0) throw new Error(`node stop left: ${left.join('; ')}`);
  rmSync(path.join(stateDir, 'node.json'), { force: true });
  return n.record ? `node ${n.record.name} (${n.runDir})` : undefined;
}

/** Node Ready condition as the API server reports it. */
async function nodeReady(kubeconfigPath: string, kubectl: string, name: string): Promise<string> {
  const r = await clusterClient(kubeconfigPath, kubectl).kubectlResult(
    ['get', 'node', name, '-o', 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'],
    { timeoutMs: 10_000 },
  );
  return r.exitCode === 0 ? r.stdout.trim() || 'Unknown' : 'absent';
}

const out = (s: string): void => {
  process.stdout.write(`${s}\n`);
};

async function main(): Promise<number> {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: {
      'no-crds': { type: 'boolean', default: false },
      node: { type: 'boolean', default: false },
      kubevirt: { type: 'boolean', default: false },
      'state-dir': { type: 'string' },
    },
  });
  // Real KubeVirt runs on a node.
  const withNode = values.node || values.kubevirt;
  const stateDir = path.resolve(values['state-dir'] ?? DEFAULT_STATE_DIR);
  const command = positionals[0];
  switch (command) {
    case 'up': {
      const existing = await attachControlPlane(stateDir);
      if (existing?.running && existing.ready) {
        const node = cliNode(stateDir)?.record;
        if (withNode && !node) {
          process.stderr.write(
            `a control plane without a node runs in ${stateDir}; run \`npm run cluster -- down\` first\n`,
          );
          return 1;
        }
        out(`already running: ${existing.state.server}${node ? ` with node ${node.name} (${node.runDir})` : ''}`);
        out(`kubeconfig: ${existing.state.kubeconfigPath}`);
        out(`export KUBECONFIG=${existing.state.kubeconfigPath}`);
        return 0;
      }
      const t0 = Date.now();
      // A node left from an earlier `up --node` whose control plane is gone: remove it first.
      const staleNode = await stopCliNode(stateDir);
      if (staleNode) out(`stopped a stale ${staleNode}`);
      // KubeVirt's binaries and images first (minutes when cold), before anything runs.
      const kvBuild = values.kubevirt
        ? { bins: await ensureKubevirtBinaries(), images: await ensureKubevirtImages() }
        : undefined;
      const cp = await startControlPlane({
        stateDir,
        detached: true,
        ...(withNode ? { extraApiserverArgs: nodeApiserverArgs(stateDir) } : {}),
      });
      try {
        // With --kubevirt, KubeVirt's own CRDs replace the hand-written test VMI/VMIM CRDs.
        const crds = kvBuild ? await operatorCrdFiles() : await projectCrdFiles();
        if (!values['no-crds']) await installCrds(clusterClient(cp.kubeconfigPath, cp.binaries.kubectl), crds);
        if (withNode) {
          // The pointer first: a CLI killed while the node starts still leaves `down` something to find.
          const runDir = path.join(NODE_RUN_ROOT, `${NODE_RUN_PREFIX}${randomBytes(3).toString('hex')}`);
          writeFileSync(path.join(stateDir, 'node.json'), JSON.stringify({ runDir }));
          const images = kvBuild ? [kvBuild.images.launcher, kvBuild.images.containerDisk] : [];
          const node = await startNode(cp, { runDir, detached: true, images });
          out(`node ${node.name} (${node.ip}) Ready in ${(node.startMs / 1000).toFixed(1)} s; run dir ${node.runDir}`);
          if (kvBuild) {
            // virt-controller and the handler stand-in are recorded in the node's record: `down` stops them with it.
            const crdFiles = await kubevirtCrdFiles({ cluster: cp, binaries: kvBuild.bins });
            const kv = await startKubevirt(cp, node, {
              virtController: kvBuild.bins.virtController,
              version: kvBuild.bins.version,
              launcherImage: kvBuild.images.launcher.name,
              crdFiles,
              detached: true,
            });
            const example = path.join(stateDir, 'example-vmi.yaml');
            writeExampleVmi(example, {
              namespace: 'default',
              name: 'vm1',
              containerDiskImage: kvBuild.images.containerDisk.name,
              runtimeUser: 107,
              uuid: randomUUID(),
            });
            out(
              `KubeVirt ${kvBuild.bins.version}: virt-controller and the handler stand-in up in ${(kv.startMs / 1000).toFixed(1)} s (logs: ${path.dirname(kv.logs.controller)})`,
            );
            out(`example VMI: kubectl create -f ${example}`);
          }
        }
      } catch (err) {
        await stopCliNode(stateDir).catch((e: unknown) => process.stderr.write(`${String(e)}\n`));
        await cp.stop();
        throw err;
      }
      out(
        `control plane up in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${cp.server} (Kubernetes ${cp.binaries.versions.k8s}, etcd ${cp.binaries.versions.etcd})`,
      );
      out(`kubeconfig: ${cp.kubeconfigPath}`);
      out(`kubectl:    ${cp.binaries.kubectl}`);
      out(`logs:       ${path.join(stateDir, 'logs')}`);
      out(`export KUBECONFIG=${cp.kubeconfigPath}`);
      return 0;
    }
    case 'status': {
      const s = await attachControlPlane(stateDir);
      if (!s) {
        out(`not running (no state in ${stateDir})`);
        return 3;
      }
      out(`server:     ${s.state.server}`);
      out(`kubeconfig: ${s.state.kubeconfigPath}`);
      out(`started:    ${s.state.startedAt}`);
      for (const p of s.state.processes) out(`${p.name.padEnd(23)} pid ${p.pid}`);
      out(
        `state:      ${s.running ? (s.ready ? 'running, ready' : 'running, NOT ready') : 'processes gone (run `down` to clean up, or `up`)'}`,
      );
      const n = cliNode(stateDir);
      let nodeOk = true;
      if (n) {
        if (!n.record) {
          out(`node:       none recorded in ${n.runDir} (run \`down\`)`);
          nodeOk = false;
        } else {
          for (const d of n.record.daemons) out(`${d.name.padEnd(23)} pid ${d.pid}${isOurs(d) ? '' : ' (gone)'}`);
          const ready =
            s.running && s.ready
              ? await nodeReady(s.state.kubeconfigPath, n.record.controlPlane.kubectl, n.record.name)
              : 'unknown (no API server)';
          // containerd, controller-manager, scheduler, kubelet (+ virt-controller and the handler stand-in with --kubevirt)
          const allUp = n.record.daemons.length >= 4 && n.record.daemons.every((d) => isOurs(d));
          out(
            `node:       ${n.record.name} Ready=${ready}${allUp ? '' : ', some of its processes are gone'} (run dir ${n.runDir})`,
          );
          nodeOk = allUp && ready === 'True';
        }
      }
      return s.running && s.ready && nodeOk ? 0 : 3;
    }
    case 'down': {
      const node = await stopCliNode(stateDir);
      const r = await stopRecorded(stateDir);
      const stopped = [...(node ? [node] : []), ...r.stopped];
      out(stopped.length > 0 ? `stopped: ${stopped.join(', ')}` : 'nothing was running');
      return 0;
    }
    case 'build': {
      const b = await ensureBinaries();
      out(`Kubernetes ${b.versions.k8s}: ${b.k8sBinDir}`);
      out(`etcd ${b.versions.etcd}: ${b.etcd}`);
      return 0;
    }
    default:
      process.stderr.write(
        'usage: npm run cluster -- up [--no-crds] [--node] [--kubevirt] | status | down | build   [--state-dir DIR]\n',
      );
      return 2;
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
