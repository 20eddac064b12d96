import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  etcdVersionFromDependencies,
  k8sLdflags,
  localReplacedModules,
  normalizeVersion,
  renderEtcdGoMod,
  renderK8sGoMod,
  requiredVersion,
  stagingVersion,
} from './go-mod.ts';

// Excerpts of the real files (k8s.io/kubernetes v1.34.4 go.mod, go.etcd.io/etcd/server/v3 v3.6.5 go.mod).
const K8S_GO_MOD = `module k8s.io/kubernetes

go 1.24.0

require (
	go.etcd.io/etcd/client/v3 v3.6.4
	k8s.io/api v0.0.0
	k8s.io/klog/v2 v2.130.1
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/apiextensions-apiserver => ./staging/src/k8s.io/apiextensions-apiserver
	k8s.io/client-go => ./staging/src/k8s.io/client-go // a comment
)

replace k8s.io/sample-controller => ./staging/src/k8s.io/sample-controller
replace github.com/example/fork v1.0.0 => github.com/other/fork v1.0.1
`;

const ETCD_GO_MOD = `module go.etcd.io/etcd/server/v3

go 1.24

replace (
	go.etcd.io/etcd/api/v3 => ../api
	go.etcd.io/etcd/client/pkg/v3 => ../client/pkg
	go.etcd.io/etcd/client/v3 => ../client/v3
	go.etcd.io/etcd/pkg/v3 => ../pkg
)

// Bad imports are sometimes causing attempts to pull that code.
replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY

replace go.etcd.io/tests/v3 => ./FORBIDDEN_DEPENDENCY
`;

describe('localReplacedModules', () => {
  it('lists the staging modules of k8s.io/kubernetes (block and single-line), not module-to-module replaces', () => {
    expect(localReplacedModules(K8S_GO_MOD)).toEqual([
      'k8s.io/api',
      'k8s.io/apiextensions-apiserver',
      'k8s.io/client-go',
      'k8s.io/sample-controller',
    ]);
  });
  it('skips FORBIDDEN_DEPENDENCY placeholders in etcd', () => {
    expect(localReplacedModules(ETCD_GO_MOD)).toEqual([
      'go.etcd.io/etcd/api/v3',
      'go.etcd.io/etcd/client/pkg/v3',
      'go.etcd.io/etcd/client/v3',
      'go.etcd.io/etcd/pkg/v3',
    ]);
  });
});

describe('versions', () => {
  it('maps k8s v1.Y.Z to staging v0.Y.Z', () => {
    expect(stagingVersion('v1.34.4')).toBe('v0.34.4');
    expect(stagingVersion('1.35.0')).toBe('v0.35.0');
    expect(() => stagingVersion('v2.0.0')).toThrow(/not a v1/);
  });
  it('normalizes and rejects', () => {
    expect(normalizeVersion(' 3.6.5 ', 'etcd')).toBe('v3.6.5');
    expect(() => normalizeVersion('v1.34.4-rc.0', 'k8s')).toThrow(/invalid k8s version/);
    expect(() => normalizeVersion('latest', 'k8s')).toThrow();
  });
  it('reads required versions in both require forms', () => {
    expect(requiredVersion(K8S_GO_MOD, 'k8s.io/klog/v2')).toBe('v2.130.1');
    expect(requiredVersion('require k8s.io/kubernetes v1.34.4\n', 'k8s.io/kubernetes')).toBe('v1.34.4');
    expect(requiredVersion(K8S_GO_MOD, 'k8s.io/kubernetes')).toBeUndefined();
  });
  it('reads the etcd version from build/dependencies.yaml', () => {
    const deps = `dependencies:\n  # etcd\n  - name: "etcd"\n    version: 3.6.5\n    refPaths:\n  - name: "etcd-image"\n    version: 3.6.4\n`;
    expect(etcdVersionFromDependencies(deps)).toBe('v3.6.5');
    expect(() => etcdVersionFromDependencies('dependencies: []\n')).toThrow(/no "etcd"/);
  });
});

describe('rendering', () => {
  it('renders a k8s wrapper with one replace per staging module and the five tools', () => {
    const mod = renderK8sGoMod('v1.34.4', localReplacedModules(K8S_GO_MOD));
    expect(mod).toContain('require k8s.io/kubernetes v1.34.4\n');
    expect(mod).toMatch(/\tk8s\.io\/client-go\s+=> k8s\.io\/client-go v0\.34\.4\n/);
    expect(mod.match(/=>/g)).toHaveLength(4);
    for (const c of ['kube-apiserver', 'kubectl', 'kubelet', 'kube-controller-manager', 'kube-scheduler']) {
      expect(mod).toContain(`\tk8s.io/kubernetes/cmd/${c}\n`);
    }
  });
  it('renders an etcd wrapper pinned to one version', () => {
    const mod = renderEtcdGoMod('3.6.5', localReplacedModules(ETCD_GO_MOD));
    expect(mod).toContain('require go.etcd.io/etcd/server/v3 v3.6.5\n');
    expect(mod).toMatch(/go\.etcd\.io\/etcd\/api\/v3\s+=> go\.etcd\.io\/etcd\/api\/v3 v3\.6\.5/);
    expect(mod).not.toContain('FORBIDDEN');
    expect(mod).toContain('tool go.etcd.io/etcd/server/v3\n');
  });
  it('sets the reported version in both version packages', () => {
    const f = k8sLdflags('v1.34.4');
    expect(f).toContain('-X k8s.io/component-base/version.gitVersion=v1.34.4');
    expect(f).toContain('-X k8s.io/client-go/pkg/version.gitMinor=34');
    expect(f.startsWith('-s -w')).toBe(true);
  });
});

describe('committed wrapper modules', () => {
  const dir = path.join(import.meta.dirname, 'go');
  it('replace every staging module with the v0 version of the required k8s release', () => {
    const mod = readFileSync(path.join(dir, 'k8s', 'go.mod'), 'utf8');
    const k8s = requiredVersion(mod, 'k8s.io/kubernetes');
    expect(k8s).toMatch(/^v1\.\d+\.\d+$/);
    const targets = [...mod.matchAll(/^\t(k8s\.io\/\S+)\s+=>\s+(\S+) (v\S+)$/gm)];
    expect(targets.length).toBeGreaterThanOrEqual(30);
    for (const [, from, to, v] of targets) {
      expect(to).toBe(from);
      expect(v).toBe(stagingVersion(k8s ?? ''));
    }
    expect(readFileSync(path.join(dir, 'k8s', 'go.sum'), 'utf8')).toContain(`k8s.io/kubernetes ${k8s} h1:`);
  });
  it('pin etcd consistently', () => {
    const mod = readFileSync(path.join(dir, 'etcd', 'go.mod'), 'utf8');
    const v = requiredVersion(mod, 'go.etcd.io/etcd/server/v3');
    expect(v).toMatch(/^v3\.\d+\.\d+$/);
    for (const [, , version] of mod.matchAll(/^\t(go\.etcd\.io\/etcd\/\S+)\s+=>\s+\S+ (v\S+)$/gm))
      expect(version).toBe(v);
    expect(readFileSync(path.join(dir, 'etcd', 'go.sum'), 'utf8')).toContain(`go.etcd.io/etcd/server/v3 ${v} h1:`);
  });
});
