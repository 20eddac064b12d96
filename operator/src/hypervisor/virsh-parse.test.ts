import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { chainAtGoal, computeGoal, resolveBase, virshBaseArg } from './chain.ts';
import { isPullComplete } from './completion.ts';
import { HypervisorError } from './errors.ts';
import {
  findDisk,
  OUTPUT_BOUNDS,
  parseBlockJobEventLine,
  parseBlockJobRaw,
  parseDomainDisks,
  parseDomstatsBlock,
  parseDuBytes,
  parseMonitorJobCompletedLine,
  parseMountPoint,
  parseStatFs,
  virshError,
} from './virsh-parse.ts';

// Captured from `virsh dumpxml` of a launcher stand-in domain (libvirt 9.0.0), paths rewritten.
const xml = readFileSync(new URL('./testdata/domain-libvirt-9.0.xml', import.meta.url), 'utf8');
const dir = '/var/run/kubevirt-ephemeral-disks/images';

describe('parseDomainDisks', () => {
  const disks = parseDomainDisks(xml);
  it('reads every disk with target, alias and its chain top first, with libvirt indexes', () => {
    expect(disks).toEqual([
      {
        target: 'vda',
        alias: 'ua-rootdisk',
        chain: [
          { position: 0, index: 2, path: `${dir}/rootdisk-2.qcow2`, format: 'qcow2' },
          { position: 1, index: 3, path: `${dir}/rootdisk-1.qcow2`, format: 'qcow2' },
          { position: 2, index: 4, path: `${dir}/rootdisk-0.qcow2`, format: 'qcow2' },
        ],
      },
      {
        target: 'vdb',
        alias: 'ua-flat',
        chain: [{ position: 0, index: 1, path: `${dir}/flat-0.qcow2`, format: 'qcow2' }],
      },
    ]);
  });
  it('finds a disk by KubeVirt name or by target', () => {
    expect(findDisk(disks, { name: 'rootdisk' })?.target).toBe('vda');
    expect(findDisk(disks, { target: 'vdb' })?.alias).toBe('ua-flat');
    expect(findDisk(disks, { name: 'vda' })).toBeUndefined();
    expect(findDisk(disks, { target: 'vdz' })).toBeUndefined();
  });
  it('skips cdroms without media and reads block and raw disks', () => {
    const d = parseDomainDisks(`<domain><devices>
      <disk type='file' device='cdrom'><target dev='sda'/></disk>
      <disk type='block' device='disk'><driver type='raw'/><source dev='/dev/vg/lv' index='1'/><backingStore/><target dev='vdc'/></disk>
    </devices></domain>`);
    expect(d).toEqual([{ target: 'vdc', chain: [{ position: 0, index: 1, path: '/dev/vg/lv', format: 'raw' }] }]);
  });
  it('reads a qcow2 data file (<dataStore>, libvirt 10.10+: KubeVirt changed block tracking) on the top and on a backing image', () => {
    // The form of libvirt's formatdomain documentation (and KubeVirt's CBT overlay, VEP 25).
    const d = parseDomainDisks(`<domain><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
        <source file='/run/kubevirt-private/libvirt/qemu/swtpm/rootdisk.qcow2' index='1'>
          <dataStore type='file'><format type='raw'/><source file='/run/kubevirt-private/vmi-disks/rootdisk/disk.img'/></dataStore>
        </source>
        <backingStore/><target dev='vda' bus='virtio'/><alias name='ua-rootdisk'/></disk>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/s/ovl.qcow2' index='3'/>
        <backingStore type='file' index='1'><format type='qcow2'/>
          <source file='/d/cbt.qcow2'><dataStore type='file'><format type='raw'/><source file='/d/disk.img'/></dataStore></source>
          <backingStore/></backingStore>
        <target dev='vdb' bus='virtio'/></disk>
    </devices></domain>`);
    expect(d).toEqual([
      {
        target: 'vda',
        alias: 'ua-rootdisk',
        chain: [
          {
            position: 0,
            index: 1,
            path: '/run/kubevirt-private/libvirt/qemu/swtpm/rootdisk.qcow2',
            format: 'qcow2',
            dataFile: { path: '/run/kubevirt-private/vmi-disks/rootdisk/disk.img', format: 'raw' },
          },
        ],
      },
      {
        target: 'vdb',
        chain: [
          { position: 0, index: 3, path: '/s/ovl.qcow2', format: 'qcow2' },
          {
            position: 1,
            index: 1,
            path: '/d/cbt.qcow2',
            format: 'qcow2',
            dataFile: { path: '/d/disk.img', format: 'raw' },
          },
        ],
      },
    ]);
  });
  it('rejects what is not a domain', () => {
    expect(() => parseDomainDisks('<network/>')).toThrow(HypervisorError);
  });
});

describe('chain goals', () => {
  const [disk] = parseDomainDisks(xml);
  if (disk === undefined) throw new Error('fixture');
  it('full pull: the top only', () => {
    const g = computeGoal(disk);
    expect(g.expectedPaths).toEqual([`${dir}/rootdisk-2.qcow2`]);
    expect(chainAtGoal(disk, g)).toBe(false);
    expect(chainAtGoal({ ...disk, chain: disk.chain.slice(0, 1) }, g)).toBe(true);
  });
  it('base by position or path keeps base and below; virsh names it target[index]', () => {
    const byPos = computeGoal(disk, { position: 2 });
    const byPath = computeGoal(disk, { path: `${dir}/rootdisk-0.qcow2` });
    expect(byPos).toEqual(byPath);
    expect(byPos.expectedPaths).toEqual([`${dir}/rootdisk-2.qcow2`, `${dir}/rootdisk-0.qcow2`]);
    expect(virshBaseArg(disk, resolveBase(disk, { position: 2 }))).toBe('vda[4]');
    expect(virshBaseArg(disk, { position: 1, path: '/x', format: 'qcow2' })).toBe('/x');
  });
  it('the active image or an unknown layer is not a base', () => {
    for (const base of [{ position: 0 }, { position: 3 }, { path: '/nope' }, { path: `${dir}/rootdisk-2.qcow2` }]) {
      expect(() => computeGoal(disk, base)).toThrow(expect.objectContaining({ code: 'InvalidBase' }));
    }
  });
  it('complete = no job AND chain at goal; never a finished-looking job', () => {
    const g = computeGoal(disk);
    const flat = { ...disk, chain: disk.chain.slice(0, 1) };
    expect(isPullComplete(null, flat, g)).toBe(true);
    expect(isPullComplete({ type: 'Block Pull', cur: 10, end: 10, bandwidth: 0 }, flat, g)).toBe(false);
    expect(isPullComplete({ type: 'Block Pull', cur: 10, end: 10, bandwidth: 0 }, disk, g)).toBe(false);
    expect(isPullComplete(null, disk, g)).toBe(false); // job gone, chain untouched: failed or canceled
    expect(isPullComplete(null, { ...flat, target: 'vdb' }, g)).toBe(false);
  });
});

describe('parseBlockJobRaw', () => {
  it('reads the observed --raw --bytes output', () => {
    expect(parseBlockJobRaw(' type=Block Pull\n bandwidth=1048576\n cur=1572864\n end=16777216\n\n')).toEqual({
      type: 'Block Pull',
      bandwidth: 1048576,
      cur: 1572864,
      end: 16777216,
    });
  });
  it('no job: a blank line', () => {
    expect(parseBlockJobRaw('\n')).toBeNull();
    expect(parseBlockJobRaw('')).toBeNull();
  });
  it('rejects garbage', () => {
    expect(() => parseBlockJobRaw('Block Pull: [ 10 %]')).toThrow(HypervisorError);
    expect(() => parseBlockJobRaw(' type=Block Pull\n cur=x\n end=1\n')).toThrow(HypervisorError);
  });
});

describe('parseBlockJobEventLine', () => {
  it('reads completed / failed / canceled / ready with or without timestamp', () => {
    expect(
      parseBlockJobEventLine(
        "2026-11-27 10:37:02.199+0000: event 'block-job-2' for domain 'ns_vm': Block Pull for vda completed",
      ),
    ).toEqual({
      domain: 'ns_vm',
      target: 'vda',
      kind: 'completed',
      jobType: 'Block Pull',
    });
    expect(parseBlockJobEventLine("event 'block-job-2' for domain 'a_b': Block Pull for sdb failed")?.kind).toBe(
      'failed',
    );
    expect(parseBlockJobEventLine("event 'block-job-2' for domain 'a_b': Block Pull for vdb canceled")?.kind).toBe(
      'canceled',
    );
    expect(parseBlockJobEventLine("event 'block-job-2' for domain 'a_b': Block Copy for vdb ready")).toMatchObject({
      kind: 'ready',
      jobType: 'Block Copy',
    });
  });
  it('ignores other lines', () => {
    expect(parseBlockJobEventLine('')).toBeNull();
    expect(parseBlockJobEventLine('events received: 1')).toBeNull();
    expect(parseBlockJobEventLine("event 'lifecycle' for domain 'a_b': Stopped Destroyed")).toBeNull();
  });
});

describe('virshError', () => {
  const cases: [string, string][] = [
    ["error: failed to get domain 'ns_missing'\n", 'DomainNotFound'],
    ["error: invalid argument: disk 'vdz' not found in domain\n", 'DiskNotFound'],
    ["error: Operation not supported: disk 'vda' already in active block job\n", 'DiskBusy'],
    [
      "error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/x/libvirt-sock': No such file or directory\n",
      'Unreachable',
    ],
    ['error: internal error: unable to execute QEMU command\n', 'CommandFailed'],
    // An abort of a job that has already ended: a code of its own (the abort is then done).
    ["error: Requested operation is not valid: No active block job on disk 'vda'\n", 'NoJob'],
    ["error: invalid argument: no active block job on device 'drive-ua-rootdisk'\n", 'NoJob'],
  ];
  it.each(cases)('%s -> %s', (stderr, code) => {
    expect(virshError(['virsh', 'blockpull'], 1, stderr).code).toBe(code);
  });
});

describe('pre-flight space parsers (bounded, zod)', () => {
  // Captured from `virsh domstats --block --backing` of a launcher stand-in (libvirt 9.0.0), paths rewritten.
  const domstats = `Domain: 'scr_vm'
  block.count=3
  block.0.name=vda
  block.0.path=/d/fs-small/small-2.qcow2
  block.0.backingIndex=1
  block.0.rd.reqs=0
  block.0.wr.bytes=0
  block.0.allocation=0
  block.0.capacity=268435456
  block.0.physical=1314816
  block.1.name=vda
  block.1.path=/d/images/small-1.qcow2
  block.1.backingIndex=2
  block.1.allocation=0
  block.1.capacity=268435456
  block.1.physical=68423680
  block.2.name=vda
  block.2.path=/d/images/small-0.qcow2
  block.2.backingIndex=3
  block.2.allocation=0
  block.2.capacity=268435456
  block.2.physical=67375104
`;
  it('domstats: one entry per image with path, backingIndex and sizes', () => {
    const stats = parseDomstatsBlock(domstats);
    expect(stats).toHaveLength(3);
    expect(stats[1]).toEqual({
      name: 'vda',
      path: '/d/images/small-1.qcow2',
      backingIndex: 2,
      allocation: 0,
      capacity: 268435456,
      physical: 68423680,
    });
    expect(() => parseDomstatsBlock('  block.0.name=vda\n  block.0.physical=-1\n')).toThrow(HypervisorError);
    expect(() => parseDomstatsBlock('x'.repeat(OUTPUT_BOUNDS.domstats + 1))).toThrow(/exceeds the bound/);
  });
  it('stat -f: free and total blocks x block size', () => {
    expect(parseStatFs('3775 4096 4096\n')).toEqual({ availableBytes: 3775 * 4096, totalBytes: 4096 * 4096 });
    expect(() => parseStatFs('3775 4096\n')).toThrow(HypervisorError);
    expect(() => parseStatFs('a b c\n')).toThrow(HypervisorError);
    expect(() => parseStatFs('1 0 1\n')).toThrow(HypervisorError);
    expect(() => parseStatFs('5 1 4\n')).toThrow(HypervisorError); // more free than total
    expect(() => parseStatFs(`${'9'.repeat(5000)} 1 1`)).toThrow(/exceeds the bound/);
  });
  it('stat -c %m and du -s -B1', () => {
    expect(parseMountPoint('/var/run/kubevirt-ephemeral-disks\n')).toBe('/var/run/kubevirt-ephemeral-disks');
    expect(() => parseMountPoint('relative\n')).toThrow(HypervisorError);
    expect(() => parseMountPoint('/a\n/b\n')).toThrow(HypervisorError);
    expect(parseDuBytes('1314816\t/var/run/kubevirt-ephemeral-disks\n')).toBe(1314816);
    expect(() => parseDuBytes('du: cannot read\n')).toThrow(HypervisorError);
  });
  it("qemu-monitor-event BLOCK_JOB_COMPLETED: a stream's error becomes a failed event with the error text", () => {
    // Observed (libvirt 9.0.0, QEMU 7.2) when the active image's filesystem filled up.
    const line =
      '2026-12-01 03:04:09.887+0000: event BLOCK_JOB_COMPLETED for domain \'scr_vm\': {"device":"pull-vda-libvirt-1-format","len":268435456,"offset":16252928,"speed":0,"type":"stream","error":"No space left on device"}';
    expect(parseMonitorJobCompletedLine(line)).toEqual({
      domain: 'scr_vm',
      target: 'vda',
      kind: 'failed',
      jobType: 'Block Pull',
      error: 'No space left on device',
    });
    expect(parseMonitorJobCompletedLine(line.replace(',"error":"No space left on device"', ''))).toBeNull();
    expect(parseMonitorJobCompletedLine(line.replace('"type":"stream"', '"type":"commit"'))).toBeNull();
    expect(
      parseMonitorJobCompletedLine(
        '2026-12-01 03:04:09.887+0000: event JOB_STATUS_CHANGE for domain \'scr_vm\': {"status":"null","id":"pull-vda-libvirt-1-format"}',
      ),
    ).toBeNull();
    expect(parseMonitorJobCompletedLine("event BLOCK_JOB_COMPLETED for domain 'a': {not json}")).toBeNull();
  });
});

// Recorded from Debian 13's libvirt 11.3.0 / QEMU 10.0.13 (libvirtd in a trixie debootstrap chroot,
// qemu:///system, TCG, paused vCPUs; the same chain and aliases as the 9.0 capture): `virsh -q`
// dumpxml before and after a pull, `blockjob vda --raw --bytes` during it and with no job,
// `event --event block-job-2 --loop --timestamp`, `qemu-monitor-event --event BLOCK_JOB_COMPLETED
// --loop --timestamp`, `domstats --block` during the pull (test/e2e/kubevirt/README.md says how).
describe('libvirt 11.3 output (Debian 13), as the parsers read libvirt 9.0', () => {
  const fixture = (name: string): string => readFileSync(new URL(`./testdata/${name}`, import.meta.url), 'utf8');
  it('dumpxml: the same disks, chain and indexes as 9.0 shows them; one image after the pull', () => {
    expect(parseDomainDisks(fixture('domain-libvirt-11.3.xml'))).toEqual(parseDomainDisks(xml));
    expect(parseDomainDisks(fixture('domain-libvirt-11.3-pulled.xml'))[0]).toEqual({
      target: 'vda',
      alias: 'ua-rootdisk',
      chain: [{ position: 0, index: 2, path: `${dir}/rootdisk-2.qcow2`, format: 'qcow2' }],
    });
  });
  it('blockjob --raw --bytes during a pull and with none', () => {
    expect(parseBlockJobRaw(fixture('blockjob-raw-libvirt-11.3.txt'))).toEqual({
      type: 'Block Pull',
      bandwidth: 1048576,
      cur: 1572864,
      end: 67108864,
    });
    expect(fixture('blockjob-raw-none-libvirt-11.3.txt')).toBe('');
    expect(parseBlockJobRaw(fixture('blockjob-raw-none-libvirt-11.3.txt'))).toBeNull();
  });
  it('the block-job-2 event line of a completed pull', () => {
    expect(parseBlockJobEventLine(fixture('event-block-job-2-libvirt-11.3.txt').trim())).toEqual({
      domain: 'ns1_vm1',
      target: 'vda',
      kind: 'completed',
      jobType: 'Block Pull',
    });
  });
  it("QEMU's BLOCK_JOB_COMPLETED of a successful pull: no failure read into it (its device names the target)", () => {
    const line = fixture('qemu-monitor-event-libvirt-11.3.txt').trim();
    expect(line).toContain('"device":"pull-vda-libvirt-2-format"');
    expect(parseMonitorJobCompletedLine(line)).toBeNull();
    const failed = line.replace('"type":"stream"', '"type":"stream","error":"No space left on device"');
    expect(parseMonitorJobCompletedLine(failed)).toMatchObject({ target: 'vda', kind: 'failed' });
  });
  it('domstats --block during the pull', () => {
    expect(parseDomstatsBlock(fixture('domstats-block-libvirt-11.3.txt'))[0]).toEqual({
      name: 'vda',
      path: `${dir}/rootdisk-2.qcow2`,
      backingIndex: 2,
      allocation: 1900544,
      capacity: 67108864,
      physical: 1839104,
    });
  });
});
