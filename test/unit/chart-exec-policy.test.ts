// The chart's exec ValidatingAdmissionPolicy allows exactly what the operator runs. Its CEL is built
// from files/exec-policy.json; this test fails when that file is not what scripts/exec-policy.ts
// makes of the operator's constants, when the template carries a command word of its own, or
// when the virsh driver uses a subcommand the allow-list lacks (or the list holds one it never uses).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SPACE_COMMANDS, VIRSH_SUBCOMMANDS, virshArgv } from '../../operator/src/hypervisor/commands.ts';
import { KILL_ON_DISCONNECT_SCRIPT } from '../../operator/src/kubevirt/exec-runner.ts';
import { LAUNCHER_CONTAINER, ROOT_URI, SESSION_URI } from '../../operator/src/kubevirt/launcher.ts';
import {
  EXEC_POLICY_FILE,
  execPolicySource,
  execPolicyText,
  type ExecPolicySource,
} from '../../scripts/exec-policy.ts';

const root = join(import.meta.dirname, '..', '..');
const template = readFileSync(join(root, 'charts', 'blockpull-operator', 'templates', 'exec-policy.yaml'), 'utf8');
const file = readFileSync(EXEC_POLICY_FILE, 'utf8');
const source = JSON.parse(file) as ExecPolicySource;

describe('chart exec policy', () => {
  it('files/exec-policy.json is what scripts/exec-policy.ts generates (run: node scripts/exec-policy.ts)', () => {
    expect(file).toBe(execPolicyText());
    expect(source).toEqual(execPolicySource());
  });

  it('holds the operator constants: the container, the exact wrapper script, the URIs, the subcommands, the space tools', () => {
    expect(source.container).toBe(LAUNCHER_CONTAINER);
    expect(source.wrapper).toEqual(['sh', '-c', KILL_ON_DISCONNECT_SCRIPT, 'blockpull-exec']);
    expect(source.virsh).toEqual({
      binary: 'virsh',
      options: ['-q', '-c'],
      uris: [ROOT_URI, SESSION_URI],
      subcommands: [...VIRSH_SUBCOMMANDS],
    });
    expect(source.tools).toEqual(Object.values(SPACE_COMMANDS));
    // Nothing destructive slipped into the list.
    for (const bad of ['destroy', 'undefine', 'qemu-monitor-command', 'blockcommit', 'shutdown', 'reset'])
      expect(source.virsh.subcommands).not.toContain(bad);
  });

  it('the template builds its CEL from that file only, behind the values switch and the API capability', () => {
    expect(template).toMatch(
      /^\{\{- if and \.Values\.execPolicy\.enabled \(\.Capabilities\.APIVersions\.Has "admissionregistration\.k8s\.io\/v1\/ValidatingAdmissionPolicy"\) \}\}$/m,
    );
    expect(template).toContain('.Files.Get "files/exec-policy.json" | fromJson');
    // No command word of its own: every one comes from the file.
    const words = new Set([
      ...source.wrapper.slice(0, 2),
      ...source.wrapper.slice(3),
      source.virsh.binary,
      ...source.virsh.options,
      ...source.virsh.uris,
      ...source.virsh.subcommands,
      ...source.tools.flat(),
    ]);
    for (const w of words) expect(template, w).not.toContain(`"${w}"`);
    expect(template).not.toContain('qemu:///');
    expect(template).toContain('request.userInfo.username == %s');
    expect(template).toMatch(/operations: \["CONNECT"\]/);
    expect(template).toMatch(/resources: \["pods\/exec"\]/);
    expect(template).toMatch(/validationActions: \[Deny\]/);
  });

  it('the virsh driver uses every listed subcommand and no other', () => {
    const driver = readFileSync(join(root, 'operator', 'src', 'hypervisor', 'virsh-driver.ts'), 'utf8');
    const used = new Set([...driver.matchAll(/this\.#(?:virshRun|argv|look)\('([a-z-]+)'/g)].map((m) => m[1]));
    expect([...used].sort()).toEqual([...VIRSH_SUBCOMMANDS].sort());
    // The driver's argv goes through virshArgv, which refuses an unlisted subcommand at run time too.
    expect(driver).toContain('virshArgv(this.uri, subcommand, args, this.#virsh)');
    expect(() => virshArgv(ROOT_URI, 'destroy' as (typeof VIRSH_SUBCOMMANDS)[number], ['d'])).toThrow(
      /not in VIRSH_SUBCOMMANDS/,
    );
    expect(virshArgv(SESSION_URI, 'dumpxml', ['--domain', 'd'])).toEqual([
      'virsh',
      '-q',
      '-c',
      SESSION_URI,
      'dumpxml',
      '--domain',
      'd',
    ]);
  });
});
