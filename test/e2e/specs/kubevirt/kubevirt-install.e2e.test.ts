/**
 * KubeVirt's own CRDs (virt-operator's install strategy + the KubeVirt CRD from upstream's
 * resource-generator) are accepted and Established by our Kubernetes 1.34 API server, and serve
 * KubeVirt objects. Runs on a control plane of its own: the global e2e cluster carries the
 * hand-written test VMI CRD other specs rely on, which these CRDs would replace.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';
import { startControlPlane, type ControlPlane } from '../../cluster/control-plane.ts';
import { installCrds } from '../../cluster/crds.ts';
import { ensureKubevirtBinaries, type KubevirtBinaries } from '../../kubevirt/binaries.ts';
import { dumpInstallStrategyCrds, kubevirtCrdFiles } from '../../kubevirt/crds.ts';

const log = (m: string): void => {
  process.stderr.write(`[kubevirt-install] ${m}\n`);
};

let cp: ControlPlane;
let bins: KubevirtBinaries;
let stateDir: string;

beforeAll(async () => {
  const t0 = Date.now();
  bins = await ensureKubevirtBinaries({ log });
  log(
    `KubeVirt binaries ${bins.version} ready in ${((Date.now() - t0) / 1000).toFixed(1)} s (recorded build time ${bins.buildSeconds ?? '?'} s)`,
  );
  stateDir = await mkdtemp(path.join(os.tmpdir(), 'bp-kubevirt-install-'));
  cp = await startControlPlane({ stateDir, log });
});

afterAll(async () => {
  await cp?.stop();
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
});

const crdList = z.object({
  items: z.array(
    z.object({
      metadata: z.object({ name: z.string() }),
      spec: z.object({
        group: z.string(),
        names: z.object({ kind: z.string() }),
        versions: z.array(z.object({ name: z.string(), served: z.boolean(), storage: z.boolean() })),
      }),
      status: z
        .object({ conditions: z.array(z.object({ type: z.string(), status: z.string() })).optional() })
        .optional(),
    }),
  ),
});

describe('KubeVirt CRDs from KubeVirt itself', () => {
  it('virt-operator --dump-install-strategy yields the 16 CRDs of its install strategy', async () => {
    const t0 = Date.now();
    const crds = await dumpInstallStrategyCrds(bins, cp, log);
    log(`dump + decode: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const names = crds.map((c) => c.metadata.name);
    expect(names).toHaveLength(16);
    expect(names).toContain('virtualmachineinstances.kubevirt.io');
    expect(names).toContain('virtualmachineinstancemigrations.kubevirt.io');
    expect(names).not.toContain('kubevirts.kubevirt.io');
    // the temporary namespace is gone (or going)
    const ns = await cp.kubectl([
      'get',
      'namespaces',
      '-o',
      'jsonpath={range .items[?(@.status.phase=="Active")]}{.metadata.name}{"\\n"}{end}',
    ]);
    expect(ns.split('\n').filter((n) => n.startsWith('kubevirt-strategy-'))).toEqual([]);
  });

  it('17 CRD files are accepted and Established by the 1.34 API server', async () => {
    const files = await kubevirtCrdFiles({ cluster: cp, binaries: bins, log });
    expect(files).toHaveLength(17);
    const t0 = Date.now();
    await installCrds(cp, files, 120);
    log(`apply + Established of ${files.length} CRDs: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const fileNames = await Promise.all(
      files.map(
        async (f) =>
          z.object({ metadata: z.object({ name: z.string() }) }).parse(parse(await readFile(f, 'utf8'))).metadata.name,
      ),
    );
    const served = crdList
      .parse(JSON.parse(await cp.kubectl(['get', 'crd', '-o', 'json'])))
      .items.filter((c) => c.spec.group.endsWith('kubevirt.io'));
    expect(served.map((c) => c.metadata.name).sort()).toEqual([...fileNames].sort());
    for (const crd of served) {
      expect(crd.status?.conditions?.find((c) => c.type === 'Established')?.status, crd.metadata.name).toBe('True');
    }
    const vmi = served.find((c) => c.metadata.name === 'virtualmachineinstances.kubevirt.io');
    expect(vmi?.spec.versions.find((v) => v.storage)?.name).toBe('v1');
  });

  it('serves a KubeVirt CR and a VMI, and rejects what the real schema rejects', async () => {
    await cp.kubectl(['create', 'namespace', 'kubevirt']);
    const kv = {
      apiVersion: 'kubevirt.io/v1',
      kind: 'KubeVirt',
      metadata: { name: 'kubevirt', namespace: 'kubevirt' },
      spec: { configuration: { developerConfiguration: { useEmulation: true } } },
    };
    await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(kv) });
    const got = JSON.parse(await cp.kubectl(['get', 'kubevirt', '-n', 'kubevirt', 'kubevirt', '-o', 'json'])) as {
      spec?: { configuration?: { developerConfiguration?: { useEmulation?: boolean } } };
    };
    expect(got.spec?.configuration?.developerConfiguration?.useEmulation).toBe(true);
    const vmi = {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'vm1', namespace: 'default' },
      spec: {
        domain: {
          devices: { disks: [{ name: 'rootdisk', disk: { bus: 'virtio' } }] },
          resources: { requests: { memory: '64Mi' } },
          machine: { type: 'q35' },
        },
        volumes: [{ name: 'rootdisk', containerDisk: { image: 'localhost/blockpull/kubevirt-containerdisk:test' } }],
      },
    };
    await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(vmi) });
    const image = await cp.kubectl(['get', 'vmi', 'vm1', '-o', 'jsonpath={.spec.volumes[0].containerDisk.image}']);
    expect(image).toBe('localhost/blockpull/kubevirt-containerdisk:test');
    // KubeVirt's schema types disks[].disk.bus as a string: an object there is refused by the server.
    const bad = structuredClone(vmi);
    bad.metadata.name = 'vm2';
    (bad.spec.domain.devices.disks[0] as { disk: unknown }).disk = { bus: { nested: true } };
    const r = await cp.kubectlResult(['apply', '-f', '-'], { input: JSON.stringify(bad) });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/bus/);
  });
});
