/**
 * Daemon processes for the control plane: each runs in its own process group (setsid via `detached`),
 * so a stop signals the whole group; liveness and identity come from /proc, so a stale run (a crashed
 * test, a CLI `up` from earlier) is recognized by pid + start time + command line before it is killed.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, readdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { processStartTime } from '../support/lock.ts';

export const daemonRecord = z.object({
  name: z.string(),
  pid: z.number().int().positive(),
  /** /proc/<pid>/stat start time, so a reused pid is never mistaken for ours. */
  start: z.string(),
  binary: z.string(),
  /** A string that must occur in the command line (the state dir), a second identity check. */
  marker: z.string(),
  logFile: z.string(),
});
export type DaemonRecord = z.infer<typeof daemonRecord>;

export function readCmdline(pid: number): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((s) => s !== '');
  } catch {
    return undefined;
  }
}

/** True if the process in the record still runs and is the one we started. */
export function isOurs(rec: DaemonRecord): boolean {
  if (processStartTime(rec.pid) !== rec.start) return false;
  const argv = readCmdline(rec.pid);
  return argv !== undefined && argv[0] === rec.binary && argv.some((a) => a.includes(rec.marker));
}

/** Starts `binary args` in a new process group with stdout+stderr appended to `logFile`. */
export function spawnDaemon(name: string, binary: string, args: readonly string[], logFile: string, marker: string): DaemonRecord {
  const fd = openSync(logFile, 'a');
  try {
    const child = spawn(binary, [...args], { detached: true, stdio: ['ignore', fd, fd] });
    if (child.pid === undefined) throw new Error(`could not start ${binary}`);
    child.on('error', () => undefined); // exit is observed through /proc
    child.unref();
    const start = processStartTime(child.pid);
    if (start === undefined) throw new Error(`${name} exited immediately; see ${logFile}`);
    return { name, pid: child.pid, start, binary, marker, logFile };
  } finally {
    closeSync(fd);
  }
}

function signalGroup(rec: DaemonRecord, signal: NodeJS.Signals): void {
  try {
    process.kill(-rec.pid, signal); // the group: the daemon and anything it forked
  } catch {
    try {
      process.kill(rec.pid, signal);
    } catch {
      // already gone
    }
  }
}

/** SIGKILL now, synchronously: for 'exit' and signal handlers, where nothing can be awaited. */
export function killNow(rec: DaemonRecord): void {
  if (isOurs(rec)) signalGroup(rec, 'SIGKILL');
}

/** True while any process of the daemon's group is left (group id = daemon pid, as it is a group leader). */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch {
    return false;
  }
  // kill(-pgid, 0) succeeds for zombies too: look for a live member.
  for (const pid of listPids()) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (f[2] === String(pgid) && f[0] !== 'Z' && f[0] !== 'X') return true;
    } catch {
      // raced with exit
    }
  }
  return false;
}

function listPids(): number[] {
  try {
    return readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number);
  } catch {
    return [];
  }
}

/** SIGTERM the daemon's group, SIGKILL after `graceMs`, and wait until no member is left. */
export async function stopDaemon(rec: DaemonRecord, graceMs = 10_000): Promise<void> {
  if (!isOurs(rec)) return; // gone, or the pid now belongs to someone else: never signal that
  signalGroup(rec, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (groupAlive(rec.pid) && Date.now() < deadline) await sleep(50);
  if (groupAlive(rec.pid)) {
    signalGroup(rec, 'SIGKILL');
    const hard = Date.now() + 10_000;
    while (groupAlive(rec.pid)) {
      if (Date.now() > hard) throw new Error(`${rec.name} (pid ${rec.pid}) survived SIGKILL`);
      await sleep(50);
    }
  }
}

/** Loopback TCP ports in LISTEN state (from /proc/net/tcp and tcp6). */
export function listeningPorts(): Set<number> {
  const out = new Set<number>();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] !== '0A') continue; // LISTEN
      const port = Number.parseInt(cols[1]?.split(':')[1] ?? '', 16);
      if (Number.isFinite(port)) out.add(port);
    }
  }
  return out;
}

export async function waitPortsFree(ports: readonly number[], timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const busy = ports.filter((p) => listeningPorts().has(p));
    if (busy.length === 0) return;
    if (Date.now() > deadline) throw new Error(`ports still listening after stop: ${busy.join(', ')}`);
    await sleep(50);
  }
}

/** `count` distinct free loopback ports (bound then released; callers retry on the rare race). */
export async function freePorts(count: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const s = net.createServer();
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(0, '127.0.0.1', resolve);
      });
      servers.push(s);
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}

/**
 * Live processes whose command line contains `needle` (e.g. a state dir: every daemon's flags name it),
 * optionally only those whose program's basename is in `programs` (e.g. etcd, kube-apiserver).
 */
export function processesMentioning(needle: string, programs?: readonly string[]): number[] {
  const out: number[] = [];
  for (const pid of listPids()) {
    if (pid === process.pid) continue;
    const argv = readCmdline(pid);
    if (!argv?.some((a) => a.includes(needle)) || processStartTime(pid) === undefined) continue;
    if (programs && !programs.includes(path.basename(argv[0] ?? ''))) continue;
    out.push(pid);
  }
  return out;
}
