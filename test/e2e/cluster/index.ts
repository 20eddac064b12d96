/** The local control plane for tests and the demo (see control-plane.ts, binaries.ts, service-account.ts). */
export { ensureApiserverBinaries, ensureBinaries, type ApiserverBinaries, type ClusterBinaries } from './binaries.ts';
export {
  clusterClient,
  KubectlError,
  runKubectl,
  type ClusterClient,
  type KubectlOptions,
  type RunResult,
} from './client.ts';
export {
  attachControlPlane,
  DEFAULT_STATE_DIR,
  readAuditLog,
  startControlPlane,
  stopApiserver,
  stopRecorded,
  type AuditEvent,
  type AuditRule,
  type ControlPlane,
  type StartOptions,
  type StoppedApiserver,
} from './control-plane.ts';
export { installCrds, projectCrdFiles, VMI_CRD_FILE, VMIM_CRD_FILE } from './crds.ts';
export { createPki, issueCert, type Pki } from './certs.ts';
export { writeKubeconfig } from './kubeconfig.ts';
export { createServiceAccountKubeconfig } from './service-account.ts';
export { COMPAT_K8S_VERSION, compatK8sVersion, pinnedVersions, resolveVersions } from './versions.ts';
export { cacheRoot } from '../support/cache.ts';
