/** Self-contained kubeconfig files (certificates embedded), for the admin and for service accounts. */
import { readFile, writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';

export type KubeconfigCredentials =
  | { readonly kind: 'cert'; readonly certFile: string; readonly keyFile: string }
  | { readonly kind: 'token'; readonly token: string };

export interface KubeconfigSpec {
  readonly server: string;
  /** The cluster CA: a file, or its base64 PEM. */
  readonly caFile?: string;
  readonly caData?: string;
  readonly user: string;
  readonly credentials: KubeconfigCredentials;
  readonly namespace?: string;
  readonly clusterName?: string;
}

const b64 = async (file: string): Promise<string> => (await readFile(file)).toString('base64');

export async function renderKubeconfig(spec: KubeconfigSpec): Promise<string> {
  if (!spec.caData && !spec.caFile) throw new Error('kubeconfig needs caFile or caData');
  const cluster = spec.clusterName ?? 'blockpull-e2e';
  const user =
    spec.credentials.kind === 'cert'
      ? {
          'client-certificate-data': await b64(spec.credentials.certFile),
          'client-key-data': await b64(spec.credentials.keyFile),
        }
      : { token: spec.credentials.token };
  const context = { cluster, user: spec.user, ...(spec.namespace ? { namespace: spec.namespace } : {}) };
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [
      {
        name: cluster,
        cluster: { server: spec.server, 'certificate-authority-data': spec.caData ?? (await b64(spec.caFile ?? '')) },
      },
    ],
    users: [{ name: spec.user, user }],
    contexts: [{ name: spec.user, context }],
    'current-context': spec.user,
    preferences: {},
  });
}

/** Writes the kubeconfig with mode 0600 (it holds credentials). */
export async function writeKubeconfig(file: string, spec: KubeconfigSpec): Promise<string> {
  await writeFile(file, await renderKubeconfig(spec), { mode: 0o600 });
  return file;
}
