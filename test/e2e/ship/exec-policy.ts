// The chart's exec ValidatingAdmissionPolicy as the API server applies it: what it must let through
// and what it must refuse, and a probe that tells an admission denial from any later failure.
import { readFileSync } from 'node:fs';
import { KubeConfig } from '@kubernetes/client-node';
import { Agent, request } from 'undici';
import { z } from 'zod';
import { SPACE_COMMANDS, VIRSH_SUBCOMMANDS } from '../../../operator/src/hypervisor/commands.ts';
import { KILL_ON_DISCONNECT_PREFIX, KILL_ON_DISCONNECT_SCRIPT } from '../../../operator/src/kubevirt/exec-runner.ts';
import { ROOT_URI, SESSION_URI } from '../../../operator/src/kubevirt/launcher.ts';

/**
 * The policy's messages, written out here (not read from the chart), so that a policy that is
 * absent, renamed or refuses for another reason fails the specs.
 */
export const EXEC_POLICY_MESSAGES = {
  container: 'blockpull-operator exec policy: the operator may exec only into container "compute"',
  wrapper:
    "blockpull-operator exec policy: the command must be the operator's exec wrapper (sh -c <its fixed script> blockpull-exec <command>)",
  command:
    'blockpull-operator exec policy: the operator may run only virsh -q -c <qemu:///system|qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock> <dumpxml|blockpull|blockjob|domstats|event|qemu-monitor-event> ...',
} as const;
export type ExecPolicyMessage = keyof typeof EXEC_POLICY_MESSAGES;

export interface ExecCase {
  readonly what: string;
  readonly container: string;
  readonly command: readonly string[];
}
export interface DeniedExecCase extends ExecCase {
  readonly message: ExecPolicyMessage;
}

const wrapped = (...argv: string[]): string[] => [...KILL_ON_DISCONNECT_PREFIX, ...argv];

/** The commands the operator runs (every subcommand, both URIs, the space tools): admitted. */
export function allowedExecCases(domain: string): ExecCase[] {
  return [
    ...VIRSH_SUBCOMMANDS.map((sub) => ({
      what: `virsh ${sub} (session URI)`,
      container: 'compute',
      command: wrapped('virsh', '-q', '-c', SESSION_URI, sub, '--domain', domain),
    })),
    {
      what: 'virsh dumpxml (root URI)',
      container: 'compute',
      command: wrapped('virsh', '-q', '-c', ROOT_URI, 'dumpxml', '--domain', domain),
    },
    ...Object.entries(SPACE_COMMANDS).map(([name, prefix]) => ({
      what: `space tool ${name}`,
      container: 'compute',
      command: wrapped(...prefix, '/var/run/kubevirt-ephemeral-disks'),
    })),
  ];
}

/** What the operator never runs: refused at admission, each with the message of the rule it breaks. */
export function deniedExecCases(domain: string): DeniedExecCase[] {
  const virsh = (...args: string[]) => wrapped('virsh', '-q', '-c', SESSION_URI, ...args);
  return [
    { what: 'virsh destroy', container: 'compute', command: virsh('destroy', domain), message: 'command' },
    { what: 'virsh undefine', container: 'compute', command: virsh('undefine', domain), message: 'command' },
    {
      what: 'virsh qemu-monitor-command',
      container: 'compute',
      command: virsh('qemu-monitor-command', domain, '--hmp', 'info block'),
      message: 'command',
    },
    {
      what: 'virsh blockcommit',
      container: 'compute',
      command: virsh('blockcommit', domain, 'vda'),
      message: 'command',
    },
    {
      what: 'virsh with commands in one word ("dumpxml; destroy")',
      container: 'compute',
      command: virsh(`dumpxml ${domain}; destroy ${domain}`),
      message: 'command',
    },
    { what: 'virsh without a subcommand', container: 'compute', command: virsh(), message: 'command' },
    {
      what: 'virsh without -q',
      container: 'compute',
      command: wrapped('virsh', '-c', SESSION_URI, 'dumpxml', '--domain', domain),
      message: 'command',
    },
    {
      what: 'virsh on another URI',
      container: 'compute',
      command: wrapped('virsh', '-q', '-c', 'qemu+tcp://attacker.example/system', 'dumpxml', '--domain', domain),
      message: 'command',
    },
    {
      what: 'stat with a second path',
      container: 'compute',
      command: wrapped(...SPACE_COMMANDS.statFs, '/a', '/b'),
      message: 'command',
    },
    { what: 'du without -x', container: 'compute', command: wrapped('du', '-s', '-B1', '--', '/'), message: 'command' },
    { what: 'sh -c inside the wrapper', container: 'compute', command: wrapped('sh', '-c', 'id'), message: 'command' },
    { what: 'cat a file', container: 'compute', command: wrapped('cat', '/etc/shadow'), message: 'command' },
    { what: 'sh (no wrapper)', container: 'compute', command: ['sh'], message: 'wrapper' },
    {
      what: 'virsh without the wrapper',
      container: 'compute',
      command: ['virsh', '-q', '-c', SESSION_URI, 'dumpxml', '--domain', domain],
      message: 'wrapper',
    },
    {
      what: 'the wrapper with a changed script',
      container: 'compute',
      command: [
        'sh',
        '-c',
        `${KILL_ON_DISCONNECT_SCRIPT}\nid`,
        'blockpull-exec',
        'virsh',
        '-q',
        '-c',
        SESSION_URI,
        'dumpxml',
        '--domain',
        domain,
      ],
      message: 'wrapper',
    },
    { what: 'the wrapper without a command', container: 'compute', command: wrapped(), message: 'wrapper' },
    { what: 'no command at all', container: 'compute', command: [], message: 'wrapper' },
    {
      what: 'another container',
      container: 'volumerootdisk',
      command: wrapped('virsh', '-q', '-c', SESSION_URI, 'dumpxml', '--domain', domain),
      message: 'container',
    },
    {
      what: 'no container named',
      container: '',
      command: wrapped('virsh', '-q', '-c', SESSION_URI, 'dumpxml', '--domain', domain),
      message: 'container',
    },
  ];
}

const StatusBody = z.looseObject({
  kind: z.literal('Status'),
  code: z.number().optional(),
  reason: z.string().optional(),
  message: z.string().optional(),
});

export interface ExecAdmission {
  readonly status: number;
  readonly reason: string;
  readonly message: string;
}

/**
 * Asks the API server for a pods/exec with the credentials of `kubeconfigPath`, as a plain GET
 * without an upgrade: admission runs first (a denial is a 403 whose Status carries the policy's
 * message); a request it admits fails later, with another status (the pod has no node, or the
 * kubelet wants an upgrade), and never runs a command.
 */
export async function probeExec(
  kubeconfigPath: string,
  namespace: string,
  pod: string,
  c: ExecCase,
): Promise<ExecAdmission> {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfigPath);
  const cluster = kc.getCurrentCluster();
  const token = kc.getCurrentUser()?.token;
  if (!cluster || token === undefined) throw new Error(`${kubeconfigPath}: no cluster or no token`);
  const ca =
    cluster.caData !== undefined
      ? Buffer.from(cluster.caData, 'base64')
      : cluster.caFile !== undefined
        ? readFileSync(cluster.caFile)
        : undefined;
  const params: [string, string][] = [
    ['stdout', 'true'],
    ['stderr', 'true'],
    ...c.command.map((a): [string, string] => ['command', a]),
  ];
  if (c.container !== '') params.push(['container', c.container]);
  const query = new URLSearchParams(params);
  const agent = new Agent({ connect: ca === undefined ? {} : { ca } });
  try {
    const r = await request(`${cluster.server}/api/v1/namespaces/${namespace}/pods/${pod}/exec?${query.toString()}`, {
      method: 'GET',
      dispatcher: agent,
      headers: { authorization: `Bearer ${token}` },
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    });
    const text = await r.body.text();
    let body: z.infer<typeof StatusBody> | undefined;
    try {
      body = StatusBody.parse(JSON.parse(text));
    } catch {
      body = undefined;
    }
    return { status: r.statusCode, reason: body?.reason ?? '', message: body?.message ?? text };
  } finally {
    await agent.close();
  }
}

/** A 403 from the chart's policy with the given message. */
export function isPolicyDenial(a: ExecAdmission, message: ExecPolicyMessage): boolean {
  return (
    a.status === 403 &&
    a.reason === 'Forbidden' &&
    a.message.includes('ValidatingAdmissionPolicy') &&
    a.message.includes(EXEC_POLICY_MESSAGES[message])
  );
}
