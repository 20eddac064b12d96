import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { decodeInstallStrategy, dumpStrategyEnv, parseSingleCrd, strategyManifests } from './install-strategy.ts';

// The shape virt-operator's dumpInstallStrategyToBytes writes: objects of many kinds, CRDs marshalled
// by sigs.k8s.io/yaml (with creationTimestamp: null and an empty status).
const MANIFESTS = `---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: kubevirt-controller
  namespace: kubevirt
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  creationTimestamp: null
  labels:
    kubevirt.io: ""
  name: virtualmachineinstances.kubevirt.io
spec:
  group: kubevirt.io
  names:
    kind: VirtualMachineInstance
    plural: virtualmachineinstances
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
status:
  acceptedNames:
    kind: ""
    plural: ""
  conditions: null
  storedVersions: null
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: virtualmachines.kubevirt.io
spec:
  group: kubevirt.io
  names:
    kind: VirtualMachine
    plural: virtualmachines
  versions:
  - name: v1
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: virt-api
`;

function configMap(
  manifests: string,
  annotations: Record<string, string>,
  labels: Record<string, string> = { 'kubevirt.io/install-strategy': '' },
): unknown {
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: 'kubevirt-install-strategy-abcde', namespace: 'kubevirt', labels, annotations },
    data: { manifests },
  };
}

const gzipped = (text: string): string => gzipSync(Buffer.from(text)).toString('base64');

describe('decodeInstallStrategy', () => {
  it('decodes gzip+base64 and returns the CRDs in order, without status and creationTimestamp', () => {
    const s = decodeInstallStrategy(
      configMap(gzipped(MANIFESTS), {
        'kubevirt.io/install-strategy-cm-encoding': 'gzip+base64',
        'kubevirt.io/install-strategy-version': 'v1.7.0',
      }),
    );
    expect(s.version).toBe('v1.7.0');
    expect(s.kinds).toEqual({ ServiceAccount: 1, CustomResourceDefinition: 2, Deployment: 1 });
    expect(s.crds.map((c) => c.metadata.name)).toEqual([
      'virtualmachineinstances.kubevirt.io',
      'virtualmachines.kubevirt.io',
    ]);
    const vmi = s.crds[0] as Record<string, unknown> & { metadata: Record<string, unknown> };
    expect(vmi['status']).toBeUndefined();
    expect(vmi.metadata['creationTimestamp']).toBeUndefined();
    expect(vmi.metadata['labels']).toEqual({ 'kubevirt.io': '' });
    expect((vmi['spec'] as { scope: string }).scope).toBe('Namespaced');
  });
  it('reads a strategy stored without encoding as plain YAML', () => {
    expect(strategyManifests(configMap(MANIFESTS, {}))).toBe(MANIFESTS);
    expect(decodeInstallStrategy(configMap(MANIFESTS, {})).crds).toHaveLength(2);
  });
  it('refuses an unknown encoding, a ConfigMap that is not a strategy, and a strategy without CRDs', () => {
    expect(() =>
      strategyManifests(configMap(MANIFESTS, { 'kubevirt.io/install-strategy-cm-encoding': 'zstd' })),
    ).toThrow(/unknown encoding "zstd"/);
    expect(() => strategyManifests(configMap(MANIFESTS, {}, {}))).toThrow(/not an install strategy/);
    expect(() => decodeInstallStrategy(configMap('---\nkind: Service\nmetadata: {name: x}\n', {}))).toThrow(
      /no CustomResourceDefinition/,
    );
    expect(() => strategyManifests({ metadata: { name: 'x' }, data: {} })).toThrow();
  });
  it('refuses a CRD without versions and corrupt gzip', () => {
    const bad = MANIFESTS.replace('  - name: v1\n---\napiVersion: apps/v1', '  []\n---\napiVersion: apps/v1').replace(
      '  versions:\n  []',
      '  versions: []',
    );
    expect(() => decodeInstallStrategy(configMap(bad, {}))).toThrow();
    expect(() =>
      strategyManifests(configMap('bm90IGd6aXA=', { 'kubevirt.io/install-strategy-cm-encoding': 'gzip+base64' })),
    ).toThrow();
  });
});

describe('parseSingleCrd', () => {
  it('reads resource-generator --type=kv output and refuses anything but one CRD', () => {
    const kv = `---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: kubevirts.kubevirt.io\nspec:\n  group: kubevirt.io\n  names:\n    kind: KubeVirt\n    plural: kubevirts\n  versions:\n  - name: v1\n`;
    expect(parseSingleCrd(kv).spec.names.kind).toBe('KubeVirt');
    expect(() => parseSingleCrd(`${kv}${kv}`)).toThrow(/expected one CRD, got 2/);
    expect(() => parseSingleCrd('---\nkind: ConfigMap\n')).toThrow();
  });
});

describe('dumpStrategyEnv', () => {
  it("gives 1.8's TARGET_DEPLOYMENT_CONFIG JSON and 1.7.0's variables the same namespace and version", () => {
    const env = dumpStrategyEnv('v1.8.4', 'kubevirt-strategy-ab12');
    expect(env['TARGET_INSTALL_NAMESPACE']).toBe('kubevirt-strategy-ab12');
    expect(env['KUBEVIRT_VERSION']).toBe('v1.8.4');
    expect(JSON.parse(env['TARGET_DEPLOYMENT_CONFIG'] ?? '')).toEqual({
      namespace: 'kubevirt-strategy-ab12',
      registry: 'localhost/kubevirt',
      kubeVirtVersion: 'v1.8.4',
      virtOperatorImage: env['VIRT_OPERATOR_IMAGE'],
    });
    expect(env['VIRT_OPERATOR_IMAGE']).toBe('localhost/kubevirt/virt-operator:v1.8.4');
  });
});
