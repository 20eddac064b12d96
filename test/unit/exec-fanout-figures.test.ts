import { describe, expect, it } from 'vitest';
import {
  aggregateMiBps,
  counterByLabels,
  counterDelta,
  execCommandOf,
  extrapolate,
  perPull,
  windowFigures,
  type Sample,
} from '../e2e/bench/exec-fanout-figures.ts';

const s = (tS: number, running: number, operatorCpuS: number, extra: Partial<Sample> = {}): Sample => ({
  tS,
  running,
  operatorCpuS,
  apiserverCpuS: operatorCpuS * 2,
  rssMiB: 100 + running,
  sockets: 4 + 2 * running,
  ...extra,
});

describe('exec fan-out bench figures', () => {
  it('takes rates over the longest run of samples in the window, not over the ramps', () => {
    const samples = [s(0, 0, 0), s(1, 4, 0.5), s(2, 4, 0.6), s(3, 4, 0.8), s(4, 4, 1.0), s(5, 2, 3), s(6, 4, 3.1)];
    const w = windowFigures(samples, (x) => x.running === 4)!;
    expect(w.fromS).toBe(1);
    expect(w.toS).toBe(4);
    expect(w.seconds).toBe(3);
    expect(w.operatorCores).toBeCloseTo(0.5 / 3);
    expect(w.apiserverCores).toBeCloseTo(1 / 3);
    expect(w.meanRunning).toBe(4);
    expect(w.meanSockets).toBe(12);
    expect(w.maxRssMiB).toBe(104);
  });

  it('has no window with fewer than two qualifying samples', () => {
    expect(windowFigures([s(0, 0, 0), s(1, 4, 1), s(2, 0, 2)], (x) => x.running === 4)).toBeUndefined();
    expect(windowFigures([], () => true)).toBeUndefined();
  });

  it('per pull subtracts the idle figures, and extrapolates linearly from them', () => {
    const w = windowFigures([s(0, 10, 0), s(10, 10, 1)], () => true)!;
    const idle = { operatorCores: 0.01, apiserverCores: 0.02, rssMiB: 90, sockets: 4 };
    const p = perPull(w, idle);
    expect(p.operatorCoresPerPull).toBeCloseTo((0.1 - 0.01) / 10);
    expect(p.apiserverCoresPerPull).toBeCloseTo((0.2 - 0.02) / 10);
    expect(p.rssMiBPerPull).toBeCloseTo((110 - 90) / 10);
    expect(p.socketsPerPull).toBeCloseTo((24 - 4) / 10);
    const x = extrapolate(p, idle, 100);
    expect(x.operatorCores).toBeCloseTo(0.01 + 0.9);
    expect(x.fitsOneCore).toBe(true);
    expect(x.sockets).toBeCloseTo(4 + 200);
    expect(extrapolate({ ...p, operatorCoresPerPull: 0.01 }, idle, 100).fitsOneCore).toBe(false);
  });

  it('aggregate throughput runs from the common start to the last end', () => {
    expect(aggregateMiBps(300 * 1024 * 1024, 1_000, [2_000, 4_000, 3_000])).toBeCloseTo(100);
    expect(() => aggregateMiBps(1, 0, [])).toThrow(RangeError);
  });

  it('reads a counter by its labels from /metrics text, and its change', () => {
    const text = [
      '# HELP blockpull_status_writes_total Status subresource writes by kind',
      'blockpull_status_writes_total{kind="progress"} 12',
      'blockpull_status_writes_total{kind="final"} 2',
      'blockpull_status_writes_total_other 99',
      'blockpull_reconcile_total 7',
    ].join('\n');
    const after = counterByLabels(text, 'blockpull_status_writes_total');
    expect([...after]).toEqual([
      ['kind="progress"', 12],
      ['kind="final"', 2],
    ]);
    expect([...counterByLabels(text, 'blockpull_reconcile_total')]).toEqual([['', 7]]);
    const before = new Map([
      ['kind="progress"', 2],
      ['kind="final"', 2],
    ]);
    expect([...counterDelta(before, after)]).toEqual([['kind="progress"', 10]]);
  });

  it('names what an audited pods/exec request ran, through the wrapper', () => {
    const uri = (argv: string[]): string =>
      `/api/v1/namespaces/ns/pods/p/exec?${argv.map((a) => `command=${encodeURIComponent(a)}`).join('&')}&container=compute&stdin=true`;
    const wrap = ['sh', '-c', 'exec 3<&0\n"$@"', 'blockpull-exec'];
    const virsh = ['virsh', '-q', '-c', 'qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock'];
    expect(execCommandOf(uri([...wrap, ...virsh, 'blockjob', '--domain', 'd', '--raw']))).toBe('virsh blockjob');
    expect(execCommandOf(uri([...virsh, 'event', '--loop']))).toBe('virsh event');
    expect(execCommandOf(uri([...wrap, 'stat', '-f', '/x']))).toBe('stat');
    expect(execCommandOf(uri(['qemu-img', 'compare']))).toBe('qemu-img');
    expect(execCommandOf('/api/v1/namespaces/ns/pods/p/exec?container=compute')).toBeUndefined();
    expect(execCommandOf('/api/v1/namespaces/ns/pods/p/exec')).toBeUndefined();
  });
});
