/**
 * One launcher stand-in recipe (test/e2e/launcher/recipe.ts) for both stand-ins: the host stand-in
 * builds its chains from planChain, the launcher pod gets the same commands and domain XML through
 * its environment, and the pod image's entrypoint makes no chain or domain of its own.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { launcherPodManifest } from '../e2e/node/launcher-pod.ts';
import { domainXml, planChain, podRecipe, POD_DISK_DATA, targetName } from '../e2e/launcher/recipe.ts';

const disks = [
  { name: 'rootdisk', layers: 3, sizeMiB: 128, allocatedMiB: 64 },
  { name: 'data', layers: 1, sizeMiB: 32 },
];

describe('launcher stand-in recipe', () => {
  it('gives the pod the commands and the domain the host stand-in uses for the same disks', () => {
    const r = podRecipe({ namespace: 'ns1', vmiName: 'vm1', disks });
    const host = disks.map((d) => planChain({ dir: path.join(POD_DISK_DATA, d.name), ...d }));
    const expected = disks.flatMap((d, i) => [
      ['rm', '-rf', '--', path.join(POD_DISK_DATA, d.name)],
      ['mkdir', '-p', '--', path.join(POD_DISK_DATA, d.name)],
      ...host[i]!.layers.flatMap((l) => l.commands),
    ]);
    expect(r.commands).toEqual(expected);
    // What the entrypoint reads: one command per line, arguments separated by tabs.
    expect(r.steps.split('\n').map((line) => line.split('\t'))).toEqual(expected);
    expect(r.domainXml).toBe(
      domainXml(
        'ns1_vm1',
        64,
        host.map((h, i) => ({ chain: h.chain, target: targetName(i), alias: `ua-${disks[i]!.name}` })),
      ),
    );
    expect(r.domainXml).toContain(`<source file='${POD_DISK_DATA}/rootdisk/rootdisk-2.qcow2'/>`);
  });

  it('lays out the data as documented: the top shadows 1 MiB, the backing layers share the rest', () => {
    const p = planChain({ dir: '/d', name: 'x', layers: 3, sizeMiB: 128, allocatedMiB: 64 });
    expect(p.chain).toEqual(['/d/x-2.qcow2', '/d/x-1.qcow2', '/d/x-0.qcow2']);
    expect(p.writes).toEqual([
      { position: 2, offset: 0, length: 32 * 2 ** 20, pattern: 0x12 },
      { position: 2, offset: 0, length: 2 ** 20, pattern: 0x12 },
      { position: 1, offset: 32 * 2 ** 20, length: 32 * 2 ** 20, pattern: 0x11 },
      { position: 1, offset: 0, length: 2 ** 20, pattern: 0x11 },
      { position: 0, offset: 0, length: 2 ** 20, pattern: 0x10 },
    ]);
    expect(p.pullBytes).toBe(63 * 2 ** 20);
    expect(p.layers[1]!.commands[0]).toEqual([
      'qemu-img',
      'create',
      '-q',
      '-f',
      'qcow2',
      '-F',
      'qcow2',
      '-b',
      '/d/x-0.qcow2',
      '/d/x-1.qcow2',
      '128M',
    ]);
  });

  it('puts the recipe into the launcher pod, whose entrypoint has no recipe of its own', () => {
    const pod = launcherPodManifest({
      namespace: 'ns1',
      podName: 'virt-launcher-vm1-abcde',
      vmiName: 'vm1',
      vmiUid: 'u',
      image: 'img',
      disks,
    }) as {
      spec: { containers: { env: { name: string; value: string }[] }[] };
    };
    const env = Object.fromEntries(pod.spec.containers[0]!.env.map((e) => [e.name, e.value]));
    const r = podRecipe({ namespace: 'ns1', vmiName: 'vm1', disks });
    expect(env['LAUNCHER_STEPS']).toBe(r.steps);
    expect(env['LAUNCHER_DOMAIN_XML']).toBe(r.domainXml);
    const script = readFileSync(
      path.join(import.meta.dirname, '..', 'e2e', 'images', 'launcher', 'launcher-standin.sh'),
      'utf8',
    );
    const code = script
      .split('\n')
      .filter((l) => !l.trimStart().startsWith('#'))
      .join('\n');
    expect(code).not.toMatch(/qemu-img create|qemu-io -f|<domain/);
    expect(code).toContain('"$LAUNCHER_STEPS"');
  });

  it('refuses a step argument the entrypoint could not read back', () => {
    expect(() =>
      podRecipe({ namespace: 'ns1', vmiName: 'vm1', disks: [{ name: 'a\tb', layers: 1, sizeMiB: 8 }] }),
    ).toThrow(/tab or newline/);
  });
});
