/**
 * npm run cluster -- up [--no-crds]   start etcd + kube-apiserver (kept running after this exits),
 *                                     install the CRDs, print the admin kubeconfig path
 * npm run cluster -- status           report (exit 0 when running and ready, 3 otherwise)
 * npm run cluster -- down             stop it: no process, no port left
 * npm run cluster -- build            only build/cache the binaries (ensureBinaries) and print their paths
 *
 * State and the admin kubeconfig live in <repo>/.cache/cluster/ (admin.kubeconfig).
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ensureBinaries } from './binaries.ts';
import { clusterClient } from './client.ts';
import { attachControlPlane, DEFAULT_STATE_DIR, startControlPlane, stopRecorded } from './control-plane.ts';
import { installCrds, projectCrdFiles } from './crds.ts';

const out = (s: string): void => {
  process.stdout.write(`${s}\n`);
};

async function main(): Promise<number> {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: { 'no-crds': { type: 'boolean', default: false }, 'state-dir': { type: 'string' } },
  });
  const stateDir = path.resolve(values['state-dir'] ?? DEFAULT_STATE_DIR);
  const command = positionals[0];
  switch (command) {
    case 'up': {
      const existing = await attachControlPlane(stateDir);
      if (existing?.running && existing.ready) {
        out(`already running: ${existing.state.server}`);
        out(`kubeconfig: ${existing.state.kubeconfigPath}`);
        out(`export KUBECONFIG=${existing.state.kubeconfigPath}`);
        return 0;
      }
      const t0 = Date.now();
      const cp = await startControlPlane({ stateDir, detached: true });
      try {
        if (!values['no-crds']) await installCrds(clusterClient(cp.kubeconfigPath, cp.binaries.kubectl), await projectCrdFiles());
      } catch (err) {
        await cp.stop();
        throw err;
      }
      out(`control plane up in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${cp.server} (Kubernetes ${cp.binaries.versions.k8s}, etcd ${cp.binaries.versions.etcd})`);
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
      for (const p of s.state.processes) out(`${p.name.padEnd(15)} pid ${p.pid}`);
      out(`state:      ${s.running ? (s.ready ? 'running, ready' : 'running, NOT ready') : 'processes gone (run `down` to clean up, or `up`)'}`);
      return s.running && s.ready ? 0 : 3;
    }
    case 'down': {
      const r = await stopRecorded(stateDir);
      out(r.stopped.length > 0 ? `stopped: ${r.stopped.join(', ')}` : 'nothing was running');
      return 0;
    }
    case 'build': {
      const b = await ensureBinaries();
      out(`Kubernetes ${b.versions.k8s}: ${b.k8sBinDir}`);
      out(`etcd ${b.versions.etcd}: ${b.etcd}`);
      return 0;
    }
    default:
      process.stderr.write('usage: npm run cluster -- up [--no-crds] | status | down | build   [--state-dir DIR]\n');
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
