/**
 * Run a process as a ServiceAccount, so RBAC is really enforced: createServiceAccountKubeconfig()
 * creates the namespace and the ServiceAccount if missing, mints a token with `kubectl create token`
 * (TokenRequest API, signed by the apiserver's service-account key) and writes a kubeconfig for it.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import { z } from 'zod';
import { REPO_ROOT } from '../support/paths.ts';
import type { ClusterClient } from './client.ts';
import { writeKubeconfig } from './kubeconfig.ts';

/** What the helper needs: an admin kubectl (a started ControlPlane, or clusterClient() in a spec). */
export interface ServiceAccountHost {
  kubectl(args: readonly string[], options?: { input?: string }): Promise<string>;
}

/** Server and CA of the current context, from the admin kubeconfig (works for any cluster, kind too). */
const minified = z.object({
  clusters: z
    .array(
      z.object({
        cluster: z.object({
          server: z.string().url(),
          'certificate-authority-data': z.string().optional(),
          'insecure-skip-tls-verify': z.boolean().optional(),
        }),
      }),
    )
    .length(1),
});

const dnsLabel = z.string().regex(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/, 'must be a DNS-1123 label');
const jwt = z.string().regex(/^[\w-]+\.[\w-]+\.[\w-]+$/, 'kubectl create token did not print a JWT');

export interface ServiceAccountKubeconfigOptions {
  /** Token lifetime (kubectl --duration), default 24h. */
  readonly duration?: string;
  /** Where to write the kubeconfig; default <repo>/.cache/service-accounts. */
  readonly dir?: string;
}

export async function createServiceAccountKubeconfig(
  cp: ServiceAccountHost,
  namespace: string,
  name: string,
  options: ServiceAccountKubeconfigOptions = {},
): Promise<string> {
  dnsLabel.parse(namespace);
  dnsLabel.parse(name);
  // apply is idempotent: namespace and account are created if missing and left alone otherwise.
  const manifest = [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace } },
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace } },
  ]
    .map((o) => stringify(o))
    .join('---\n');
  await cp.kubectl(['apply', '-f', '-'], { input: manifest });
  const token = jwt.parse(
    (await cp.kubectl(['create', 'token', name, '-n', namespace, `--duration=${options.duration ?? '24h'}`])).trim(),
  );
  const view = minified.parse(JSON.parse(await cp.kubectl(['config', 'view', '--raw', '--minify', '-o', 'json'])));
  const cluster = view.clusters[0]?.cluster;
  if (!cluster?.['certificate-authority-data'])
    throw new Error('the admin kubeconfig has no certificate-authority-data for its current cluster');
  const dir = options.dir ?? path.join(REPO_ROOT, '.cache', 'service-accounts');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return writeKubeconfig(path.join(dir, `${namespace}.${name}.kubeconfig`), {
    server: cluster.server,
    caData: cluster['certificate-authority-data'],
    user: `system:serviceaccount:${namespace}:${name}`,
    credentials: { kind: 'token', token },
    namespace,
  });
}

/**
 * `kubectl auth can-i <args>` as the kubeconfig's user: true for yes, false for no. Any other
 * outcome (a resource unknown to discovery, a server error) throws: a typo in a check must not
 * read as "denied".
 */
export async function canI(
  host: Pick<ClusterClient, 'kubectlResult'>,
  kubeconfig: string,
  args: readonly string[],
): Promise<boolean> {
  const r = await host.kubectlResult(['auth', 'can-i', ...args], { kubeconfig });
  const answer = r.stdout.trim();
  if (r.exitCode !== 0 && answer !== 'no') throw new Error(`kubectl auth can-i ${args.join(' ')}: ${r.stderr}`);
  return answer === 'yes';
}
