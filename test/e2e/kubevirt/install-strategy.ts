/**
 * Decoding virt-operator's install strategy (pure, unit-tested).
 *
 * `virt-operator --dump-install-strategy` (pkg/virt-operator/application.go) creates a ConfigMap
 * `kubevirt-install-strategy-*` labelled `kubevirt.io/install-strategy` whose `data.manifests` is every
 * object the operator would install, as a multi-document YAML; annotation
 * `kubevirt.io/install-strategy-cm-encoding: gzip+base64` says it is gzipped and base64-encoded
 * (pkg/virt-operator/resource/generate/install/strategy.go: encodeManifests / decodeManifests; without
 * the annotation the YAML is stored as it is). The CRDs in it are what the operator applies.
 */
import { gunzipSync } from 'node:zlib';
import { parseAllDocuments } from 'yaml';
import { z } from 'zod';

export const INSTALL_STRATEGY_LABEL = 'kubevirt.io/install-strategy';
export const ENCODING_ANNOTATION = 'kubevirt.io/install-strategy-cm-encoding';
export const VERSION_ANNOTATION = 'kubevirt.io/install-strategy-version';
export const GZIP_BASE64 = 'gzip+base64';
/** Bound on the decoded manifests (v1.7.0's are 3.7 MB). */
const MAX_MANIFEST_BYTES = 64 * 1024 * 1024;

const strategyConfigMap = z.object({
  metadata: z.object({
    name: z.string(),
    labels: z.record(z.string(), z.string()).optional(),
    annotations: z.record(z.string(), z.string()).optional(),
  }),
  data: z.object({ manifests: z.string().min(1) }),
});

const crdShape = z.looseObject({
  apiVersion: z.literal('apiextensions.k8s.io/v1'),
  kind: z.literal('CustomResourceDefinition'),
  metadata: z.looseObject({ name: z.string().regex(/^[a-z0-9.-]+$/) }),
  spec: z.looseObject({
    group: z.string(),
    names: z.looseObject({ kind: z.string(), plural: z.string() }),
    versions: z.array(z.unknown()).min(1),
  }),
});
export type CrdObject = z.infer<typeof crdShape>;

export interface DecodedStrategy {
  /** The KubeVirt version the strategy was made for (annotation), if recorded. */
  readonly version: string | undefined;
  /** Count of objects by kind. */
  readonly kinds: Readonly<Record<string, number>>;
  /** The CRDs, in the strategy's order, without status and creationTimestamp. */
  readonly crds: readonly CrdObject[];
}

/** The manifests text of an install-strategy ConfigMap (decoded per its encoding annotation). */
export function strategyManifests(configMap: unknown): string {
  const cm = strategyConfigMap.parse(configMap);
  if (cm.metadata.labels?.[INSTALL_STRATEGY_LABEL] === undefined)
    throw new Error(`ConfigMap ${cm.metadata.name} lacks label ${INSTALL_STRATEGY_LABEL}: not an install strategy`);
  const encoding = cm.metadata.annotations?.[ENCODING_ANNOTATION];
  if (encoding === undefined || encoding === '') return cm.data.manifests;
  if (encoding !== GZIP_BASE64)
    throw new Error(`install strategy ${cm.metadata.name}: unknown encoding ${JSON.stringify(encoding)}`);
  const gz = Buffer.from(cm.data.manifests, 'base64');
  return gunzipSync(gz, { maxOutputLength: MAX_MANIFEST_BYTES }).toString('utf8');
}

/** The objects of an install-strategy ConfigMap, and its CRDs. */
export function decodeInstallStrategy(configMap: unknown): DecodedStrategy {
  const cm = strategyConfigMap.parse(configMap);
  const text = strategyManifests(configMap);
  const kinds: Record<string, number> = {};
  const crds: CrdObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0)
      throw new Error(`install strategy ${cm.metadata.name}: YAML error: ${doc.errors[0]?.message ?? ''}`);
    const obj: unknown = doc.toJS({ maxAliasCount: 0 });
    if (obj === null || obj === undefined) continue;
    const kind = z.object({ kind: z.string() }).safeParse(obj);
    const k = kind.success ? kind.data.kind : '(none)';
    kinds[k] = (kinds[k] ?? 0) + 1;
    if (k !== 'CustomResourceDefinition') continue;
    const crd = crdShape.parse(obj);
    const { status: _status, ...rest } = crd as CrdObject & { status?: unknown };
    const { creationTimestamp: _ts, ...metadata } = rest.metadata as CrdObject['metadata'] & {
      creationTimestamp?: unknown;
    };
    crds.push({ ...rest, metadata });
  }
  if (crds.length === 0) throw new Error(`install strategy ${cm.metadata.name} holds no CustomResourceDefinition`);
  return { version: cm.metadata.annotations?.[VERSION_ANNOTATION], kinds, crds };
}

/**
 * The environment of `virt-operator --dump-install-strategy` for `version`, writing into `namespace`.
 * TARGET_DEPLOYMENT_CONFIG (JSON of pkg/virt-operator/util KubeVirtDeploymentConfig) is what
 * virt-operator's own install-strategy Job passes (strategy_job.go). 1.7.0 also read the
 * deprecated TARGET_INSTALL_NAMESPACE + VIRT_OPERATOR_IMAGE + KUBEVIRT_VERSION instead; 1.8 reads
 * only the JSON (install/strategy.go GetConfigFromEnv: else "no config provided"). Both are set.
 */
export function dumpStrategyEnv(version: string, namespace: string): Record<string, string> {
  const operatorImage = `localhost/kubevirt/virt-operator:${version}`;
  const config = {
    namespace,
    registry: 'localhost/kubevirt',
    kubeVirtVersion: version,
    virtOperatorImage: operatorImage,
  };
  return {
    VIRT_OPERATOR_IMAGE: operatorImage,
    KUBEVIRT_VERSION: version,
    TARGET_INSTALL_NAMESPACE: namespace,
    TARGET_DEPLOYMENT_CONFIG: JSON.stringify(config),
  };
}

/** Parses resource-generator's `--type=kv` output: exactly one CRD (the KubeVirt CR's). */
export function parseSingleCrd(text: string): CrdObject {
  const docs = parseAllDocuments(text)
    .map((d) => d.toJS({ maxAliasCount: 0 }) as unknown)
    .filter((o) => o !== null && o !== undefined);
  if (docs.length !== 1) throw new Error(`expected one CRD, got ${docs.length} documents`);
  return crdShape.parse(docs[0]);
}
