/**
 * kubectl against a cluster, for specs and helpers: clusterClient(kubeconfigPath, kubectlPath).
 * In a spec: `clusterClient(inject('kubeconfigPath'), inject('kubectlPath'))` (or test/e2e/setup/cluster.ts).
 */
import { spawn } from 'node:child_process';

export interface RunResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface KubectlOptions {
  /** Written to kubectl's stdin (for `-f -`). */
  readonly input?: string;
  /** Another kubeconfig (e.g. a service account's); default the client's. */
  readonly kubeconfig?: string;
  /** Kill kubectl after this long (default 120 s). */
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

export function runKubectl(kubectlPath: string, kubeconfigPath: string, args: readonly string[], options: KubectlOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(kubectlPath, ['--kubeconfig', options.kubeconfig ?? kubeconfigPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ exitCode: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    child.stdin.on('error', () => undefined); // kubectl may exit before reading all input
    child.stdin.end(options.input ?? '');
  });
}

export function clusterClient(kubeconfigPath: string, kubectlPath: string): ClusterClient {
  const kubectlResult = (args: readonly string[], options?: KubectlOptions): Promise<RunResult> => runKubectl(kubectlPath, kubeconfigPath, args, options);
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
