import { describe, expect, it } from 'vitest';
import { parseArgs, parseBandwidth, parseBase, parseDuration, UsageError } from './args.ts';

const usage = (argv: string[]): string => {
  try {
    parseArgs(argv);
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    return (err as Error).message;
  }
  throw new Error(`no usage error for ${argv.join(' ')}`);
};

describe('parseArgs', () => {
  it('start: every flag, kubectl globals anywhere, the default name', () => {
    expect(
      parseArgs([
        '-n',
        'tenant',
        'start',
        'vm1',
        '--disk=rootdisk',
        '--base',
        '2',
        '--bandwidth',
        '50Mi',
        '--paused',
        '--wait',
        '--timeout',
        '5m',
        '--context',
        'prod',
      ]),
    ).toEqual({
      globals: { allNamespaces: false, namespace: 'tenant', context: 'prod' },
      command: {
        verb: 'start',
        vmi: 'vm1',
        disk: 'rootdisk',
        name: 'vm1-rootdisk',
        base: { position: 2 },
        bandwidth: '50Mi',
        paused: true,
        wait: true,
        timeoutMs: 300_000,
      },
    });
    expect(
      parseArgs([
        'start',
        'vm1',
        '--disk',
        'd',
        '--name',
        'flatten-d',
        '--base',
        '/var/lib/images/base.qcow2',
        '--bandwidth',
        '1048576',
        '--kubeconfig',
        '/tmp/kc',
      ]).command,
    ).toEqual({
      verb: 'start',
      vmi: 'vm1',
      disk: 'd',
      name: 'flatten-d',
      base: { path: '/var/lib/images/base.qcow2' },
      bandwidth: 1048576,
      paused: false,
      wait: false,
    });
    expect(parseArgs(['start', 'vm1', '--disk', 'd', '--kubeconfig=/tmp/kc']).globals).toEqual({
      allNamespaces: false,
      kubeconfig: '/tmp/kc',
    });
  });

  it('status: name, -A, -w, -o in their short and long forms', () => {
    expect(parseArgs(['status']).command).toEqual({ verb: 'status', watch: false });
    expect(parseArgs(['status', 'bp1', '-w', '-o', 'yaml', '--namespace=ns1'])).toEqual({
      globals: { allNamespaces: false, namespace: 'ns1' },
      command: { verb: 'status', name: 'bp1', watch: true, output: 'yaml' },
    });
    expect(parseArgs(['status', '-A', '--watch', '-ojson'])).toEqual({
      globals: { allNamespaces: true },
      command: { verb: 'status', watch: true, output: 'json' },
    });
    expect(parseArgs(['--all-namespaces', 'status']).globals.allNamespaces).toBe(true);
  });

  it('pause, resume, abort, wait: one name; --timeout as kubectl writes durations', () => {
    expect(parseArgs(['pause', 'bp1']).command).toEqual({ verb: 'pause', name: 'bp1' });
    expect(parseArgs(['resume', 'bp1']).command).toEqual({ verb: 'resume', name: 'bp1' });
    expect(parseArgs(['abort', 'bp1', '--timeout', '30s']).command).toEqual({
      verb: 'abort',
      name: 'bp1',
      timeoutMs: 30_000,
    });
    expect(parseArgs(['wait', 'bp1', '--timeout=1m30s']).command).toEqual({
      verb: 'wait',
      name: 'bp1',
      timeoutMs: 90_000,
    });
    expect(parseArgs(['wait', 'bp1']).command).toEqual({ verb: 'wait', name: 'bp1' });
  });

  it('plan: a VMI, optionally one disk, base, bandwidth and timeout', () => {
    expect(parseArgs(['plan', 'vm1']).command).toEqual({ verb: 'plan', vmi: 'vm1' });
    expect(
      parseArgs(['plan', 'vm1', '--disk', 'root', '--base', '2', '--bandwidth', '50Mi', '--timeout', '2m']).command,
    ).toEqual({
      verb: 'plan',
      vmi: 'vm1',
      disk: 'root',
      base: { position: 2 },
      bandwidth: '50Mi',
      timeoutMs: 120_000,
    });
    expect(() => parseArgs(['plan'])).toThrow(/plan takes one VMI name/);
    expect(() => parseArgs(['plan', 'vm1', '--paused'])).toThrow();
  });

  it('help: no verb, help VERB, VERB --help', () => {
    expect(parseArgs([]).command).toEqual({ verb: 'help' });
    expect(parseArgs(['help', 'start']).command).toEqual({ verb: 'help', topic: 'start' });
    expect(parseArgs(['wait', '-h']).command).toEqual({ verb: 'help', topic: 'wait' });
  });

  it('refuses what does not make sense, saying what is wrong', () => {
    expect(usage(['frobnicate'])).toMatch(/unknown verb "frobnicate"/);
    expect(usage(['start', 'vm1'])).toMatch(/start needs --disk/);
    expect(usage(['start', '--disk', 'd'])).toMatch(/start takes one VMI name/);
    expect(usage(['start', 'VM_1', '--disk', 'd'])).toMatch(/invalid VMI name "VM_1"/);
    expect(usage(['start', 'vm1', '--disk', 'd', '--base', '0'])).toMatch(/invalid --base "0"/);
    expect(usage(['start', 'vm1', '--disk', 'd', '--base', 'relative/path'])).toMatch(/invalid --base/);
    expect(usage(['start', 'vm1', '--disk', 'd', '--bandwidth', '5 MB'])).toMatch(/invalid --bandwidth/);
    expect(usage(['start', 'vm1', '--disk', 'd', '--timeout', '5s'])).toMatch(/--timeout goes with --wait/);
    expect(usage(['status', '-o', 'wide'])).toMatch(/unknown output format "wide"/);
    expect(usage(['status', 'bp1', '-A'])).toMatch(/a name and -A do not go together/);
    expect(usage(['wait'])).toMatch(/wait takes one BlockPull name/);
    expect(usage(['wait', 'a', 'b'])).toMatch(/wait takes one BlockPull name/);
    expect(usage(['wait', 'a', '--timeout', 'soon'])).toMatch(/invalid duration "soon"/);
    expect(usage(['pause', 'bp1', '--watch'])).toMatch(/unknown flag --watch for pause/);
    expect(usage(['abort', 'bp1', '-A'])).toMatch(/-A\/--all-namespaces is for status only/);
    expect(usage(['status', '-n'])).toMatch(/flag -n needs a value/);
    expect(usage(['status', '-n', 'Bad_NS'])).toMatch(/invalid namespace "Bad_NS"/);
    expect(usage(['start', 'vm1', '--disk', 'd', '--paused=maybe'])).toMatch(/flag --paused takes no value/);
  });
});

describe('value parsers', () => {
  it('durations', () => {
    expect(parseDuration('0')).toBe(0);
    expect(parseDuration('10')).toBe(10_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('2h')).toBe(7_200_000);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(() => parseDuration('5x')).toThrow(UsageError);
    expect(() => parseDuration('')).toThrow(UsageError);
  });

  it('base: a position from 1 to 255 or an absolute path', () => {
    expect(parseBase('1')).toEqual({ position: 1 });
    expect(parseBase('255')).toEqual({ position: 255 });
    expect(() => parseBase('256')).toThrow(UsageError);
    expect(parseBase('/a')).toEqual({ path: '/a' });
    expect(() => parseBase('/')).toThrow(UsageError);
  });

  it('bandwidth: what the CRD accepts, up to its bound', () => {
    expect(parseBandwidth('0')).toBe(0);
    expect(parseBandwidth('1.5Gi')).toBe('1.5Gi');
    expect(parseBandwidth('1024Ti')).toBe('1024Ti');
    expect(() => parseBandwidth('1025Ti')).toThrow(/at most 1024Ti/);
    expect(() => parseBandwidth('-1')).toThrow(UsageError);
  });
});
