import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { publishedReplaces, replaceDirectives, requiredVersion } from '../cluster/go-mod.ts';
import { pinnedKubevirtModules, pinnedKubevirtVersion, pinnedKubevirtVersions } from './binaries.ts';
import {
  KUBEVIRT_COMMANDS,
  kubevirtLdflags,
  kubevirtPackage,
  LIBNBD_MODULE,
  LIBNBD_REPLACE_DIR,
  needsLibnbd,
  renderKubevirtGoMod,
} from './go-mod.ts';

// An excerpt of kubevirt.io/kubevirt v1.7.0's go.mod (its replace block's shapes).
const KUBEVIRT_GO_MOD = `module kubevirt.io/kubevirt

go 1.24.0

require (
	kubevirt.io/api v0.0.0-20251127123821-a94c0a4337ec
	kubevirt.io/client-go v0.0.0-00010101000000-000000000000
)

replace (
	github.com/openshift/api => github.com/openshift/api v0.0.0-20210105115604-44119421ec6b

	k8s.io/api => k8s.io/api v0.33.5
	k8s.io/klog => k8s.io/klog v0.4.0 // pinned

	kubevirt.io/api => ./staging/src/kubevirt.io/api
	kubevirt.io/client-go => ./staging/src/kubevirt.io/client-go
)

replace github.com/example/fork v1.0.0 => github.com/other/fork v1.0.1
replace example.com/never => ./FORBIDDEN_DEPENDENCY
`;

describe('replaceDirectives', () => {
  it('reads every directive with its versions, in file order', () => {
    expect(replaceDirectives(KUBEVIRT_GO_MOD)).toEqual([
      {
        module: 'github.com/openshift/api',
        target: 'github.com/openshift/api',
        targetVersion: 'v0.0.0-20210105115604-44119421ec6b',
      },
      { module: 'k8s.io/api', target: 'k8s.io/api', targetVersion: 'v0.33.5' },
      { module: 'k8s.io/klog', target: 'k8s.io/klog', targetVersion: 'v0.4.0' },
      { module: 'kubevirt.io/api', target: './staging/src/kubevirt.io/api' },
      { module: 'kubevirt.io/client-go', target: './staging/src/kubevirt.io/client-go' },
      {
        module: 'github.com/example/fork',
        version: 'v1.0.0',
        target: 'github.com/other/fork',
        targetVersion: 'v1.0.1',
      },
      { module: 'example.com/never', target: './FORBIDDEN_DEPENDENCY' },
    ]);
  });
  it('points staging directories at the published modules and keeps the other pins', () => {
    const r = publishedReplaces(KUBEVIRT_GO_MOD, 'v1.7.0');
    expect(r.find((d) => d.module === 'kubevirt.io/client-go')).toEqual({
      module: 'kubevirt.io/client-go',
      target: 'kubevirt.io/client-go',
      targetVersion: 'v1.7.0',
    });
    expect(r.find((d) => d.module === 'k8s.io/api')?.targetVersion).toBe('v0.33.5');
    expect(r.map((d) => d.module)).not.toContain('example.com/never');
    expect(r).toHaveLength(6);
  });
});

describe('renderKubevirtGoMod', () => {
  const mod = renderKubevirtGoMod('1.7.0', KUBEVIRT_GO_MOD);
  it('requires the release, replaces staging modules with the same version, keeps upstream pins', () => {
    expect(mod).toContain('require kubevirt.io/kubevirt v1.7.0\n');
    expect(mod).toMatch(/\tkubevirt\.io\/api\s+=> kubevirt\.io\/api v1\.7\.0\n/);
    expect(mod).toMatch(/\tkubevirt\.io\/client-go\s+=> kubevirt\.io\/client-go v1\.7\.0\n/);
    expect(mod).toMatch(/\tk8s\.io\/klog\s+=> k8s\.io\/klog v0\.4\.0\n/);
    expect(mod).toMatch(/\tgithub\.com\/example\/fork v1\.0\.0 => github\.com\/other\/fork v1\.0\.1\n/);
    expect(mod).not.toContain('staging');
    expect(mod).not.toContain('FORBIDDEN');
    for (const c of KUBEVIRT_COMMANDS) expect(mod).toContain(`\t${kubevirtPackage(c)}\n`);
  });
  it('builds resource-generator from tools/ and the rest from cmd/', () => {
    expect(mod).toContain('\tkubevirt.io/kubevirt/tools/resource-generator\n');
    expect(mod).toContain('\tkubevirt.io/kubevirt/cmd/virt-launcher\n');
  });
  it('refuses a go.mod without the staging layout', () => {
    expect(() => renderKubevirtGoMod('v1.7.0', 'module kubevirt.io/kubevirt\n')).toThrow(/unexpected layout/);
  });
  it('stamps the version like hack/version.sh', () => {
    expect(kubevirtLdflags('v1.7.0')).toBe(
      '-s -w -X kubevirt.io/client-go/version.gitVersion=v1.7.0 -X kubevirt.io/client-go/version.gitTreeState=clean -X kubevirt.io/client-go/version.buildDate=1970-01-01T00:00:00Z',
    );
  });
});

describe('renderKubevirtGoMod for 1.8+ (libnbd)', () => {
  const upstream18 = KUBEVIRT_GO_MOD.replace(
    'kubevirt.io/client-go v0.0.0-00010101000000-000000000000\n',
    'kubevirt.io/client-go v0.0.0-00010101000000-000000000000\n\tlibguestfs.org/libnbd v1.25.2-5-g48df7c4d2b\n',
  );
  it('replaces libnbd with the local bindings only when upstream requires it', () => {
    const mod = renderKubevirtGoMod('v1.8.4', upstream18);
    expect(replaceDirectives(mod)).toContainEqual({ module: LIBNBD_MODULE, target: LIBNBD_REPLACE_DIR });
    expect(needsLibnbd(mod)).toBe(true);
    const mod17 = renderKubevirtGoMod('v1.7.0', KUBEVIRT_GO_MOD);
    expect(mod17).not.toContain(LIBNBD_MODULE);
    expect(needsLibnbd(mod17)).toBe(false);
  });
  it('does not take a replace of libnbd with another target for the local bindings', () => {
    expect(needsLibnbd(`replace ${LIBNBD_MODULE} => ../elsewhere\n`)).toBe(false);
  });
});

describe('committed KubeVirt wrapper modules', () => {
  it('go/ pins the default, go-v1.8/ the newest KubeVirt that builds here, each once', () => {
    expect(pinnedKubevirtVersion()).toBe('v1.7.0');
    expect(pinnedKubevirtVersions()).toEqual(['v1.7.0', 'v1.8.4']);
    expect(path.basename(pinnedKubevirtModules().get('v1.8.4') ?? '')).toBe('go-v1.8');
  });
  it('go-v1.8/ replaces libnbd with the local bindings and pins its staging modules', () => {
    const dir = path.join(import.meta.dirname, 'go-v1.8');
    const mod = readFileSync(path.join(dir, 'go.mod'), 'utf8');
    expect(requiredVersion(mod, 'kubevirt.io/kubevirt')).toBe('v1.8.4');
    expect(needsLibnbd(mod)).toBe(true);
    const byModule = new Map(replaceDirectives(mod).map((d) => [d.module, d]));
    expect(byModule.get('kubevirt.io/api')?.targetVersion).toBe('v1.8.4');
    expect(byModule.get('k8s.io/client-go')?.targetVersion).toBe('v0.34.2');
    for (const c of KUBEVIRT_COMMANDS) expect(mod).toContain(`\t${kubevirtPackage(c)}\n`);
    const sum = readFileSync(path.join(dir, 'go.sum'), 'utf8');
    expect(sum).toContain('kubevirt.io/kubevirt v1.8.4 h1:');
    // A directory replacement has no checksum: nothing of libnbd comes from the proxy.
    expect(sum).not.toContain(LIBNBD_MODULE);
  });

  const dir = path.join(import.meta.dirname, 'go');
  const mod = readFileSync(path.join(dir, 'go.mod'), 'utf8');
  it('pins one release and its published staging modules, with every command as a tool', () => {
    const v = requiredVersion(mod, 'kubevirt.io/kubevirt');
    expect(v).toBe('v1.7.0');
    const byModule = new Map(replaceDirectives(mod).map((d) => [d.module, d]));
    expect(byModule.get('kubevirt.io/api')?.targetVersion).toBe(v);
    expect(byModule.get('kubevirt.io/client-go')?.targetVersion).toBe(v);
    expect(byModule.get('k8s.io/client-go')?.targetVersion).toBe('v0.33.5');
    for (const c of KUBEVIRT_COMMANDS) expect(mod).toContain(`\t${kubevirtPackage(c)}\n`);
    const sum = readFileSync(path.join(dir, 'go.sum'), 'utf8');
    expect(sum).toContain(`kubevirt.io/kubevirt ${v} h1:`);
    expect(sum).toContain(`kubevirt.io/api ${v} h1:`);
    expect(sum).toContain('libvirt.org/go/libvirt ');
  });
});
