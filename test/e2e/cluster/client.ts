/**
 * kubectl against a cluster, for specs and helpers: clusterClient(kubeconfigPath, kubectlPath).
 * In a spec: `clusterClient(inject('kubeconfigPath'), inject('kubectlPath'))` (or test/e2e/setup/cluster.ts).
 */
import { run, type RunResult } from '../support/process.ts';

export type { RunResult };

export interface KubectlOptions {
  /** Written to kubectl's stdin (for `-f -`). */
  readonly input?: string;
  /** Another kubeconfig (e.g. a service account's); default the client's. */
  readonly kubeconfig?: string;
  /** Kill kubectl after this long and reject (default 120 s). */
  readonly timeoutMs?: number;
}

export class KubectlError extends Error {
  readonly result: RunResult;
  constructor(args: readonly string[], result: RunResult) {
    super(`kubectl ${args.join(' ')} exited ${result.exitCode}: ${result.stderr.trim() || result.stdout.trim()}`);
    this.name = 'KubectlError';
    this.result = result;
  }
}

export interface ClusterClient {
  readonly kubeconfigPath: string;
  readonly kubectlPath: string;
  /** Runs kubectl; rejects with KubectlError on a non-zero exit; resolves to stdout. */
  kubectl(args: readonly string[], options?: KubectlOptions): Promise<string>;
  /** Runs kubectl; a non-zero exit is returned, not thrown. */
  kubectlResult(args: readonly string[], options?: KubectlOptions): Promise<RunResult>;
}

/** kubectl with the rules of support/process.ts run(): a non-zero exit is returned, a timeout (default 120 s) rejects. */
export function runKubectl(
  kubectlPath: string,
  kubeconfigPath: string,
  args: readonly string[],
  options: KubectlOptions = {},
): Promise<RunResult> {
  return run([kubectlPath, '--kubeconfig', options.kubeconfig ?? kubeconfigPath, ...args], {
    allowExit: true,
    timeoutMs: options.timeoutMs ?? 120_000,
    ...(options.input !== undefined ? { input: options.input } : {}),
  });
}

export function clusterClient(kubeconfigPath: string, kubectlPath: string): ClusterClient {
  const kubectlResult = (args: readonly string[], options?: KubectlOptions): Promise<RunResult> =>
    runKubectl(kubectlPath, kubeconfigPath, args, options);
  return {
    kubeconfigPath,
    kubectlPath,
    kubectlResult,
    async kubectl(args, options) {
      const r = await kubectlResult(args, options);
      if (r.exitCode !== 0) throw new KubectlError(args, r);
      return r.stdout;
    },
  };
}
