/**
 * The commands the virsh driver runs next to the VM, stated once. The driver builds every argv
 * from these constants (it cannot run a virsh subcommand that is not listed here), and the Helm
 * chart's exec ValidatingAdmissionPolicy allows exactly these shapes: its source,
 * charts/blockpull-operator/files/exec-policy.json, is generated from this file and the exec
 * wrapper by scripts/exec-policy.ts, and a unit test fails when the two differ.
 */

/** The virsh binary as the driver runs it in a launcher's `compute` container (found on PATH). */
export const VIRSH_BINARY = 'virsh';

/** Global options before the URI: quiet, then `-c <uri>`. */
export const VIRSH_GLOBAL_OPTIONS = ['-q', '-c'] as const;

/** Every virsh subcommand the driver uses. */
export const VIRSH_SUBCOMMANDS = [
  'dumpxml',
  'blockpull',
  'blockjob',
  'domstats',
  'event',
  'qemu-monitor-event',
] as const;
export type VirshSubcommand = (typeof VIRSH_SUBCOMMANDS)[number];

/**
 * The space tools of the pre-flight check, each a fixed prefix followed by exactly one path
 * (after `--`, so a path is never read as an option).
 */
export const SPACE_COMMANDS = {
  /** Free and total blocks of the filesystem holding the path: `stat -f -c '%a %S %b' -- <path>`. */
  statFs: ['stat', '-f', '-c', '%a %S %b', '--'],
  /** The mount point of the path: `stat -c %m -- <path>`. */
  mountPoint: ['stat', '-c', '%m', '--'],
  /** Bytes used under a mount point, one filesystem: `du -s -B1 -x -- <mount point>`. */
  usage: ['du', '-s', '-B1', '-x', '--'],
} as const satisfies Record<string, readonly string[]>;
export type SpaceCommand = keyof typeof SPACE_COMMANDS;

/** argv of a virsh command: `virsh -q -c <uri> <subcommand> <args...>`; refuses a subcommand not listed. */
export function virshArgv(
  uri: string,
  subcommand: VirshSubcommand,
  args: readonly string[],
  virsh: string = VIRSH_BINARY,
): string[] {
  if (!(VIRSH_SUBCOMMANDS as readonly string[]).includes(subcommand))
    throw new RangeError(`virsh ${subcommand} is not in VIRSH_SUBCOMMANDS`);
  return [virsh, ...VIRSH_GLOBAL_OPTIONS, uri, subcommand, ...args];
}

/** argv of a space tool on one path. */
export function spaceArgv(command: SpaceCommand, path: string): string[] {
  return [...SPACE_COMMANDS[command], path];
}
