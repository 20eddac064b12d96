import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { LocalRunner } from './local-runner.ts';
import { RunTimeoutError, RunTransportError } from './runner.ts';

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
});
