/**
 * PKI for a local control plane, made with the openssl CLI (argv, no shell): one CA; serving certs for
 * etcd and kube-apiserver; client certs for the apiserver->etcd link and for the admin (O=system:masters);
 * a service-account signing key pair. ECDSA P-256 keys: fast to generate, accepted everywhere here.
 */
import { run } from '../support/process.ts';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';

async function openssl(args: readonly string[], cwd: string): Promise<void> {
  try {
    await run(['openssl', ...args], { cwd });
  } catch (err) {
    const e = err as { stderr?: string; message: string; code?: unknown };
    if (e.code === 'ENOENT') throw new Error('openssl not found: apt-get install -y openssl', { cause: err });
    throw new Error(`openssl ${args.join(' ')}: ${e.stderr?.trim() || e.message}`, { cause: err });
  }
}

export interface Pki {
  readonly dir: string;
  readonly caCert: string;
  readonly caKey: string;
  readonly etcdServerCert: string;
  readonly etcdServerKey: string;
  readonly etcdClientCert: string;
  readonly etcdClientKey: string;
  readonly apiserverCert: string;
  readonly apiserverKey: string;
  readonly adminCert: string;
  readonly adminKey: string;
  /** The apiserver's client cert for kubelets (logs, exec, port-forward). */
  readonly kubeletClientCert: string;
  readonly kubeletClientKey: string;
  readonly serviceAccountKey: string;
  readonly serviceAccountPub: string;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** Issues `<name>.crt`/`<name>.key` signed by the CA in `dir`. */
export async function issueCert(
  dir: string,
  name: string,
  subject: string,
  usage: 'server' | 'client' | 'both',
  sans: readonly string[] = [],
): Promise<{ cert: string; key: string }> {
  const eku = usage === 'server' ? 'serverAuth' : usage === 'client' ? 'clientAuth' : 'serverAuth,clientAuth';
  const ext = [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature,keyEncipherment',
    `extendedKeyUsage=${eku}`,
    ...(sans.length > 0 ? [`subjectAltName=${sans.join(',')}`] : []),
  ].join('\n');
  await writeFile(path.join(dir, `${name}.ext`), `${ext}\n`);
  await openssl(['req', '-new', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject], dir);
  await openssl(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-set_serial',
      `0x${Date.now().toString(16)}${Math.floor(Math.random() * 0xffff).toString(16)}`,
      '-days',
      '365',
      '-out',
      `${name}.crt`,
      '-extfile',
      `${name}.ext`,
    ],
    dir,
  );
  await rm(path.join(dir, `${name}.csr`), { force: true });
  await rm(path.join(dir, `${name}.ext`), { force: true });
  return { cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
}

/** Creates a fresh PKI in `dir` (mode 0700). */
export async function createPki(dir: string): Promise<Pki> {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await openssl(
    [
      'req',
      '-x509',
      '-new',
      ...EC,
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
      '-days',
      '3650',
      '-subj',
      '/CN=blockpull-e2e-ca',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign,digitalSignature',
    ],
    dir,
  );
  const local = ['DNS:localhost', 'IP:127.0.0.1'];
  const [etcdServer, etcdClient, apiserver, admin, kubeletClient] = await Promise.all([
    issueCert(dir, 'etcd-server', '/CN=etcd', 'both', local),
    issueCert(dir, 'etcd-client', '/CN=kube-apiserver-etcd-client', 'client'),
    issueCert(dir, 'apiserver', '/CN=kube-apiserver', 'server', [
      ...local,
      'DNS:kubernetes',
      'DNS:kubernetes.default',
      'DNS:kubernetes.default.svc',
      'DNS:kubernetes.default.svc.cluster.local',
      'IP:10.0.0.1',
    ]),
    issueCert(dir, 'admin', '/O=system:masters/CN=blockpull-e2e-admin', 'client'),
    issueCert(dir, 'apiserver-kubelet-client', '/O=system:masters/CN=kube-apiserver-kubelet-client', 'client'),
  ]);
  await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-out', 'sa.key'], dir);
  await openssl(['pkey', '-in', 'sa.key', '-pubout', '-out', 'sa.pub'], dir);
  return {
    dir,
    caCert: path.join(dir, 'ca.crt'),
    caKey: path.join(dir, 'ca.key'),
    etcdServerCert: etcdServer.cert,
    etcdServerKey: etcdServer.key,
    etcdClientCert: etcdClient.cert,
    etcdClientKey: etcdClient.key,
    apiserverCert: apiserver.cert,
    apiserverKey: apiserver.key,
    adminCert: admin.cert,
    adminKey: admin.key,
    kubeletClientCert: kubeletClient.cert,
    kubeletClientKey: kubeletClient.key,
    serviceAccountKey: path.join(dir, 'sa.key'),
    serviceAccountPub: path.join(dir, 'sa.pub'),
  };
}
