import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { LocalRunner } from './local-runner.ts';
import { RunOutputLimitError, RunTimeoutError, RunTransportError } from './runner.ts';

/** Running (a zombie left to an init that does not reap counts as dead). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z /.test(stat);
  } catch {
    return false;
  }
}

describe('LocalRunner (real processes)', () => {
  const r = new LocalRunner();
  it('returns stdout, stderr and a non-zero exit status without throwing; argv is not a shell', async () => {
    const res = await r.run(['sh', '-c', 'echo out; echo err >&2; exit 3']);
    expect(res).toEqual({ exitCode: 3, stdout: 'out\n', stderr: 'err\n' });
    const lit = await r.run(['echo', '$(id) ; rm -rf /']);
    expect(lit.stdout).toBe('$(id) ; rm -rf /\n');
  });
  it('a missing binary is a transport error', async () => {
    await expect(r.run(['/nonexistent/virsh'])).rejects.toBeInstanceOf(RunTransportError);
  });
  it('timeout kills the whole process group', async () => {
    const t0 = Date.now();
    // The grandchild writes its pid, then both sleep; the timeout must kill both.
    const p = r.run(['sh', '-c', 'sleep 30 & echo $!; wait'], { timeoutMs: 300 });
    await expect(p).rejects.toBeInstanceOf(RunTimeoutError);
    expect(Date.now() - t0).toBeLessThan(5000);
  });
  it('abort rejects with the reason and kills the child', async () => {
    const ac = new AbortController();
    const h = r.stream(['sh', '-c', 'sleep 30 & echo $!; wait']);
    const it = h.lines[Symbol.asyncIterator]();
    const first = await it.next();
    const grandchild = Number(first.value);
    expect(alive(grandchild)).toBe(true);
    h.stop();
    const res = await h.done;
    expect(res.exitCode).toBe(143);
    await new Promise((res2) => setTimeout(res2, 100));
    expect(alive(grandchild)).toBe(false);
    const p = r.run(['sleep', '30'], { signal: ac.signal });
    ac.abort(new Error('cancelled by test'));
    await expect(p).rejects.toThrow('cancelled by test');
  });
  it('streams lines as they come, including a last line without newline', async () => {
    const h = r.stream(['sh', '-c', 'echo a; sleep 0.2; printf "b\\nc"']);
    const lines: string[] = [];
    for await (const l of h.lines) lines.push(l);
    expect(lines).toEqual(['a', 'b', 'c']);
    expect((await h.done).exitCode).toBe(0);
  });
  it('runs with the given environment and working directory', async () => {
    const e = new LocalRunner({ env: { PATH: '/usr/bin:/bin', FOO: 'bar' }, cwd: '/tmp' });
    const res = await e.run(['sh', '-c', 'echo "$FOO $(pwd) ${HOME:-unset}"']);
    expect(res.stdout).toBe('bar /tmp unset\n');
  });
  it('output beyond maxOutputBytes kills the command and rejects with RunOutputLimitError (stdout and stderr)', async () => {
    const t0 = Date.now();
    // `yes` never ends on its own: only the limit stops it.
    const err: unknown = await r
      .run(['yes', 'flood'], { maxOutputBytes: 256 * 1024, timeoutMs: 20_000 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RunOutputLimitError);
    expect((err as RunOutputLimitError).what).toBe('stdout');
    expect(Date.now() - t0).toBeLessThan(10_000);
    const errs: unknown = await r
      .run(['sh', '-c', 'yes flood >&2'], { maxOutputBytes: 256 * 1024, timeoutMs: 20_000 })
      .catch((e: unknown) => e);
    expect(errs).toBeInstanceOf(RunOutputLimitError);
    expect((errs as RunOutputLimitError).what).toBe('stderr');
    // Up to the limit, output is returned whole.
    const exact = await r.run(['head', '-c', String(256 * 1024), '/dev/zero'], { maxOutputBytes: 256 * 1024 });
    expect(exact.stdout.length).toBe(256 * 1024);
    // The runner's own default applies to every call.
    await expect(
      new LocalRunner({ maxOutputBytes: 1024 }).run(['head', '-c', '2048', '/dev/zero']),
    ).rejects.toBeInstanceOf(RunOutputLimitError);
  });

  it('stream(): a line (or an unterminated flood) longer than the limit ends the stream; the command is killed', async () => {
    const h = r.stream(['sh', '-c', 'echo first; exec tr -d "\\n" </dev/zero'], { maxOutputBytes: 64 * 1024 });
    const lines: string[] = [];
    for await (const l of h.lines) lines.push(l);
    expect(lines).toEqual(['first']);
    const err: unknown = await h.done.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RunOutputLimitError);
    expect((err as RunOutputLimitError).what).toBe('a stdout line');
    // Short lines that nobody reads: bounded too.
    const u = r.stream(['yes', 'event'], { maxOutputBytes: 64 * 1024 });
    await expect(u.done).rejects.toThrow(/unread stdout lines of the command exceeded the limit of 65536 bytes/);
  });
});
