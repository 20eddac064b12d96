/**
 * Unit tests of the pods/exec runner's own logic: V1Status parsing, and how the runner turns the
 * websocket lifecycle (status message, close, connect failure, timeout, abort) into results.
 * The socket here is a scripted EventEmitter standing in for client-node's websocket; a real
 * exec needs a kubelet (test/e2e/node).
 */
import { EventEmitter } from 'node:events';
import type { Readable, Writable } from 'node:stream';
import type { V1Status } from '@kubernetes/client-node';
import { KubeConfig } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import {
  ExecRunner,
  connectErrorMessage,
  KILL_ON_DISCONNECT_SCRIPT,
  NOT_FOUND_MARKER,
  STOPPED_EXIT_CODE,
  parseExecStatus,
  type ExecLike,
} from './exec-runner.ts';
import { RunOutputLimitError, RunTimeoutError, RunTransportError } from '../hypervisor/runner.ts';

describe('parseExecStatus', () => {
  it('Success is exit code 0', () => {
    expect(parseExecStatus({ metadata: {}, status: 'Success' })).toEqual({ kind: 'exit', exitCode: 0 });
  });
  it('NonZeroExitCode takes the ExitCode cause', () => {
    // what the kubelet sends for `sh -c "exit 3"` (k8s.io/apimachinery remotecommand)
    const st = {
      metadata: {},
      status: 'Failure',
      message: 'command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3',
      reason: 'NonZeroExitCode',
      details: { causes: [{ reason: 'ExitCode', message: '3' }] },
    };
    expect(parseExecStatus(st)).toEqual({ kind: 'exit', exitCode: 3 });
  });
  it('NonZeroExitCode without a usable ExitCode cause is an error', () => {
    expect(
      parseExecStatus({
        status: 'Failure',
        reason: 'NonZeroExitCode',
        details: { causes: [{ reason: 'ExitCode', message: 'x' }] },
      }).kind,
    ).toBe('error');
    expect(parseExecStatus({ status: 'Failure', reason: 'NonZeroExitCode' }).kind).toBe('error');
  });
  it('other failures are errors carrying the message', () => {
    const st = {
      status: 'Failure',
      message:
        'OCI runtime exec failed: exec failed: unable to start container process: exec: "virsh": executable file not found in $PATH',
      reason: 'InternalError',
    };
    const r = parseExecStatus(st);
    expect(r.kind).toBe('error');
    expect(r.kind === 'error' && r.message).toContain('executable file not found');
  });
  it('garbage is an error', () => {
    expect(parseExecStatus('nope').kind).toBe('error');
    expect(parseExecStatus({ status: 7 }).kind).toBe('error');
  });
});

interface Script {
  stdout?: string[];
  stderr?: string[];
  status?: unknown;
  /** Close the socket this many ms after open; undefined = never (until close()). */
  closeAfterMs?: number;
  connectError?: unknown;
  /** The websocket opens only after this many ms (an API server slow to upgrade the connection). */
  connectAfterMs?: number;
}

/** Delivers the scripted frames the way client-node's handler does: streams, then status, then close. */
function scriptedExec(
  script: Script,
  seen: { argv?: string[]; container?: string; closed: number; stdinEnded?: boolean },
): ExecLike {
  return {
    exec(
      _ns: string,
      _pod: string,
      container: string,
      command: string | string[],
      stdout: Writable | null,
      stderr: Writable | null,
      stdin: Readable | null,
      _tty: boolean,
      cb?: (s: V1Status) => void,
    ) {
      seen.argv = Array.isArray(command) ? command : [command];
      stdin?.on('data', () => undefined).on('end', () => (seen.stdinEnded = true));
      seen.container = container;
      // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- client-node rejects with the websocket's ErrorEvent, not an Error
      if (script.connectError !== undefined) return Promise.reject(script.connectError);
      const ws = Object.assign(new EventEmitter(), {
        readyState: 1,
        close() {
          if (ws.readyState >= 2) return;
          seen.closed++;
          ws.readyState = 3;
          setImmediate(() => ws.emit('close'));
        },
      });
      setImmediate(() => {
        for (const s of script.stdout ?? []) stdout?.write(Buffer.from(s));
        for (const s of script.stderr ?? []) stderr?.write(Buffer.from(s));
        if (script.status !== undefined) {
          stdout?.end();
          stderr?.end();
          cb?.(script.status as V1Status);
        }
        if (script.closeAfterMs !== undefined) setTimeout(() => ws.close(), script.closeAfterMs);
      });
      const delay = script.connectAfterMs;
      return delay === undefined
        ? Promise.resolve(ws)
        : new Promise<typeof ws>((res) => setTimeout(() => res(ws), delay));
    },
  };
}

function runner(script: Script, killOnDisconnect = false) {
  const seen = { closed: 0 } as { argv?: string[]; container?: string; closed: number; stdinEnded?: boolean };
  const r = new ExecRunner({
    kc: new KubeConfig(),
    namespace: 'ns',
    pod: 'virt-launcher-x',
    exec: scriptedExec(script, seen),
    killOnDisconnect,
    stopGraceMs: 50,
  });
  return { r, seen };
}

describe('ExecRunner', () => {
  it('collects stdout/stderr and the exit code; passes argv unchanged to container compute', async () => {
    const { r, seen } = runner({
      stdout: ['Block Pull ', 'started\n'],
      stderr: ['warn\n'],
      status: { status: 'Success' },
      closeAfterMs: 0,
    });
    expect(r.description).toBe('exec ns/virt-launcher-x/compute');
    const res = await r.run(['virsh', '-c', 'qemu:///system', 'blockpull', 'ns_vm; rm -rf /', 'vda']);
    expect(res).toEqual({ exitCode: 0, stdout: 'Block Pull started\n', stderr: 'warn\n' });
    expect(seen.argv).toEqual(['virsh', '-c', 'qemu:///system', 'blockpull', 'ns_vm; rm -rf /', 'vda']);
    expect(seen.container).toBe('compute');
  });

  it('by default wraps argv in the kill-on-disconnect script (argv as positional parameters) and ends stdin on stop', async () => {
    const { r, seen } = runner({}, true);
    const h = r.stream(['virsh', 'event', '--domain', 'ns_vm; reboot']);
    await new Promise((res) => setTimeout(res, 10));
    expect(seen.argv).toEqual([
      'sh',
      '-c',
      KILL_ON_DISCONNECT_SCRIPT,
      'blockpull-exec',
      'virsh',
      'event',
      '--domain',
      'ns_vm; reboot',
    ]);
    expect(KILL_ON_DISCONNECT_SCRIPT).toContain('"$@"');
    h.stop();
    await new Promise((res) => setTimeout(res, 10));
    expect(seen.stdinEnded).toBe(true); // the wrapper's lifeline is cut first
    expect(seen.closed).toBe(0); // the socket only after the grace period
    expect((await h.done).exitCode).toBe(STOPPED_EXIT_CODE);
    expect(seen.closed).toBe(1);
  });

  it('a refused connect (an ErrorEvent, not an Error) is a RunTransportError that says what the server answered', async () => {
    const refused = {
      type: 'error',
      message: 'Unexpected server response: 403',
      error: new Error('Unexpected server response: 403'),
    };
    const { r } = runner({ connectError: refused });
    await expect(r.run(['virsh', 'list'])).rejects.toThrow(/cannot exec virsh: Unexpected server response: 403$/);
    expect(connectErrorMessage(new Error('boom'))).toBe('boom');
    expect(connectErrorMessage('text')).toBe('text');
  });

  it("the wrapper's not-found report is a RunTransportError; an ordinary 127 is an exit code", async () => {
    const notFound = {
      status: 'Failure',
      reason: 'NonZeroExitCode',
      details: { causes: [{ reason: 'ExitCode', message: '127' }] },
    };
    const a = runner({ stderr: [`${NOT_FOUND_MARKER}: virsh\n`], status: notFound, closeAfterMs: 0 }, true);
    await expect(a.r.run(['virsh', 'list'])).rejects.toThrow(RunTransportError);
    const b = runner({ stderr: ['sh: foo: not found\n'], status: notFound, closeAfterMs: 0 }, true);
    expect((await b.r.run(['sh', '-c', 'foo'])).exitCode).toBe(127);
  });

  it('returns a non-zero exit code instead of throwing', async () => {
    const { r } = runner({
      stderr: ["error: failed to get domain 'x'\n"],
      status: {
        status: 'Failure',
        reason: 'NonZeroExitCode',
        details: { causes: [{ reason: 'ExitCode', message: '1' }] },
      },
      closeAfterMs: 0,
    });
    const res = await r.run(['virsh', 'dominfo', 'x']);
    expect(res.exitCode).toBe(1);
    expect(res.stderr).toContain('failed to get domain');
  });

  it('other failures and a close without status are RunTransportError', async () => {
    const a = runner({
      status: { status: 'Failure', reason: 'InternalError', message: 'executable file not found' },
      closeAfterMs: 0,
    });
    await expect(a.r.run(['virsh'])).rejects.toThrow(RunTransportError);
    const b = runner({ closeAfterMs: 0 });
    await expect(b.r.run(['virsh'])).rejects.toThrow(/closed without an exit status/);
  });

  it('a refused websocket (pod not found) is a RunTransportError', async () => {
    const { r } = runner({ connectError: new Error('Unexpected server response: 404') });
    const err: unknown = await r.run(['virsh']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RunTransportError);
    expect((err as Error).message).toContain('404');
  });

  it('timeout closes the socket and rejects with RunTimeoutError', async () => {
    const { r, seen } = runner({ stdout: ['partial'] });
    await expect(r.run(['virsh', 'blockjob'], { timeoutMs: 30 })).rejects.toThrow(RunTimeoutError);
    expect(seen.closed).toBe(1);
  });

  it('a timeout while the websocket is still connecting rejects at once; the late socket is closed', async () => {
    for (const wrap of [true, false]) {
      const { r, seen } = runner({ connectAfterMs: 400 }, wrap);
      const t0 = performance.now();
      await expect(r.run(['virsh', 'blockjob'], { timeoutMs: 30 })).rejects.toThrow(RunTimeoutError);
      expect(performance.now() - t0, `wrapper ${wrap}`).toBeLessThan(300);
      await new Promise((res) => setTimeout(res, 450));
      expect(seen.closed, `wrapper ${wrap}: the socket that opened after the timeout is closed`).toBe(1);
    }
  });

  it('abort closes the socket and rejects with the reason', async () => {
    const { r, seen } = runner({});
    const ac = new AbortController();
    const p = r.run(['sleep', '100'], { signal: ac.signal });
    setTimeout(() => ac.abort(new Error('shutting down')), 10);
    await expect(p).rejects.toThrow('shutting down');
    expect(seen.closed).toBe(1);
    const pre = new AbortController();
    pre.abort(new Error('already'));
    await expect(r.run(['x'], { signal: pre.signal })).rejects.toThrow('already');
  });

  it('stream() yields lines as they come and ends with the exit code', async () => {
    const { r } = runner({
      stdout: ["event 'block-job-2' for domain 'd': Block Pull for vda completed\nsec", 'ond\nlast'],
      status: { status: 'Success' },
      closeAfterMs: 5,
    });
    const h = r.stream(['virsh', 'event', '--loop']);
    const lines: string[] = [];
    for await (const l of h.lines) lines.push(l);
    expect(lines).toEqual(["event 'block-job-2' for domain 'd': Block Pull for vda completed", 'second', 'last']);
    expect((await h.done).exitCode).toBe(0);
  });

  it('stream(): a transport failure ends the lines and rejects done, without an unhandled rejection', async () => {
    const { r } = runner({
      stdout: ['a\n'],
      status: { status: 'Failure', reason: 'InternalError', message: 'container is in CONTAINER_EXITED state' },
      closeAfterMs: 0,
    });
    const h = r.stream(['virsh', 'event', '--loop']);
    const lines: string[] = [];
    for await (const l of h.lines) lines.push(l); // only the lines are consumed here
    expect(lines).toEqual(['a']);
    await new Promise((res) => setTimeout(res, 20)); // vitest fails the run on an unhandled rejection
    await expect(h.done).rejects.toThrow(/CONTAINER_EXITED/);
  });

  it('stream().stop() ends a long command', async () => {
    const { r, seen } = runner({ stdout: ['one\n'] });
    const h = r.stream(['virsh', 'event', '--loop']);
    const it = h.lines[Symbol.asyncIterator]();
    expect((await it.next()).value).toBe('one');
    h.stop();
    h.stop();
    expect((await it.next()).done).toBe(true);
    expect((await h.done).exitCode).toBe(STOPPED_EXIT_CODE);
    expect(seen.closed).toBe(1);
  });

  it('output beyond maxOutputBytes: the command is ended (stdin, then the socket) and run() rejects with RunOutputLimitError', async () => {
    const chunk = 'x'.repeat(16 * 1024);
    for (const which of ['stdout', 'stderr'] as const) {
      // 1 MiB in 16 KiB chunks and no exit status: a launcher that floods and never ends.
      const flood = Array.from({ length: 64 }, () => chunk);
      const { r, seen } = runner(which === 'stdout' ? { stdout: flood } : { stderr: flood }, true);
      const err: unknown = await r
        .run(['virsh', 'dumpxml', 'd'], { maxOutputBytes: 64 * 1024 })
        .catch((e: unknown) => e);
      expect(err, which).toBeInstanceOf(RunOutputLimitError);
      expect((err as RunOutputLimitError).what).toBe(which);
      expect((err as Error).message).toMatch(
        new RegExp(
          `^${which} of the command exceeded the limit of 65536 bytes; the command was killed: virsh dumpxml d`,
        ),
      );
      expect(seen.stdinEnded, which).toBe(true);
      expect(seen.closed, which).toBe(1);
    }
    // Within the limit nothing changes; the runner's own default applies when the call gives none.
    const ok = runner({ stdout: [chunk], status: { status: 'Success' }, closeAfterMs: 0 });
    expect((await ok.r.run(['virsh', 'dumpxml', 'd'], { maxOutputBytes: 64 * 1024 })).stdout).toBe(chunk);
    const seen = { closed: 0 };
    const small = new ExecRunner({
      kc: new KubeConfig(),
      namespace: 'ns',
      pod: 'p',
      exec: scriptedExec({ stdout: [chunk, chunk] }, seen),
      killOnDisconnect: false,
      maxOutputBytes: 20_000,
    });
    await expect(small.run(['virsh', 'dumpxml', 'd'])).rejects.toThrow(RunOutputLimitError);
  });

  it('stream(): a line longer than maxOutputBytes ends the lines, stops the command and rejects done', async () => {
    const { r, seen } = runner({ stdout: ['ok\n', 'y'.repeat(10_000), 'y'.repeat(10_000), '\nnever\n'] }, true);
    const h = r.stream(['virsh', 'event', '--loop'], { maxOutputBytes: 8 * 1024 });
    const lines: string[] = [];
    for await (const l of h.lines) lines.push(l);
    expect(lines).toEqual(['ok']);
    const err: unknown = await h.done.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RunOutputLimitError);
    expect((err as RunOutputLimitError).what).toBe('a stdout line');
    expect(seen.stdinEnded).toBe(true);
    // Lines nobody reads pile up only to the limit too.
    const unread = runner({ stdout: Array.from({ length: 100 }, () => `${'z'.repeat(1000)}\n`) }, true);
    const u = unread.r.stream(['virsh', 'event', '--loop'], { maxOutputBytes: 8 * 1024 });
    await expect(u.done).rejects.toThrow(/unread stdout lines of the command exceeded the limit of 8192 bytes/);
  });
});
