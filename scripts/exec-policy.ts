/**
 * The source of the Helm chart's exec ValidatingAdmissionPolicy,
 * charts/blockpull-operator/files/exec-policy.json, generated from the operator's own constants:
 * the container, the exec wrapper (KILL_ON_DISCONNECT_PREFIX), the libvirt URIs, the virsh
 * subcommands and the space tools (operator/src/hypervisor/commands.ts). The template
 * (templates/exec-policy.yaml) builds its CEL from this file; test/unit/chart-exec-policy.test.ts
 * fails when the file is not what this script writes.
 *
 *   node scripts/exec-policy.ts           write the file
 *   node scripts/exec-policy.ts --check   exit 1 when the file differs
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  SPACE_COMMANDS,
  VIRSH_BINARY,
  VIRSH_GLOBAL_OPTIONS,
  VIRSH_SUBCOMMANDS,
} from '../operator/src/hypervisor/commands.ts';
import { KILL_ON_DISCONNECT_PREFIX } from '../operator/src/kubevirt/exec-runner.ts';
import { LAUNCHER_CONTAINER, ROOT_URI, SESSION_URI } from '../operator/src/kubevirt/launcher.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const EXEC_POLICY_FILE = path.join(REPO, 'charts', 'blockpull-operator', 'files', 'exec-policy.json');

export interface ExecPolicySource {
  readonly generatedBy: string;
  /** object.container must be this. */
  readonly container: string;
  /** object.command[0..3] must be exactly these. */
  readonly wrapper: readonly string[];
  /** object.command[4..]: `virsh <options[0]> <options[1]> <one of uris> <one of subcommands> ...` */
  readonly virsh: {
    readonly binary: string;
    readonly options: readonly string[];
    readonly uris: readonly string[];
    readonly subcommands: readonly string[];
  };
  /** ...or one of these prefixes, then exactly one operand (a path). */
  readonly tools: readonly (readonly string[])[];
}

export function execPolicySource(): ExecPolicySource {
  return {
    generatedBy: 'scripts/exec-policy.ts from the operator constants; do not edit (node scripts/exec-policy.ts)',
    container: LAUNCHER_CONTAINER,
    wrapper: [...KILL_ON_DISCONNECT_PREFIX],
    virsh: {
      binary: VIRSH_BINARY,
      options: [...VIRSH_GLOBAL_OPTIONS],
      uris: [ROOT_URI, SESSION_URI],
      subcommands: [...VIRSH_SUBCOMMANDS],
    },
    tools: Object.values(SPACE_COMMANDS).map((c) => [...c]),
  };
}

export function execPolicyText(): string {
  return `${JSON.stringify(execPolicySource(), null, 2)}\n`;
}

function main(): void {
  const text = execPolicyText();
  if (process.argv.includes('--check')) {
    if (readFileSync(EXEC_POLICY_FILE, 'utf8') !== text) {
      process.stderr.write(`${EXEC_POLICY_FILE} is out of date: run node scripts/exec-policy.ts\n`);
      process.exit(1);
    }
    return;
  }
  writeFileSync(EXEC_POLICY_FILE, text);
  process.stdout.write(`wrote ${path.relative(REPO, EXEC_POLICY_FILE)}\n`);
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
