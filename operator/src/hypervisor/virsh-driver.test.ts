/**
 * VirshDriver argv: commands are run by a real LocalRunner (real virsh against libvirt's built-in
 * test driver, test:///default) through a recorder that keeps the argv each command was given.
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { LocalRunner } from './local-runner.ts';
import type { CommandRunner, RunOptions, RunResult, StreamHandle } from './runner.ts';
import { VirshDriver } from './virsh-driver.ts';

class RecordingRunner implements CommandRunner {
  readonly description = 'recording local';
  readonly argvs: string[][] = [];
  readonly #inner = new LocalRunner();
  run(argv: readonly string[], options?: RunOptions): Promise<RunResult> {
    this.argvs.push([...argv]);
    return this.#inner.run(argv, options);
  }
  stream(argv: readonly string[], options?: RunOptions): StreamHandle {
    this.argvs.push([...argv]);
    return this.#inner.stream(argv, options);
  }
}

const hasVirsh = spawnSync('virsh', ['--version']).status === 0;
const URI = 'test:///default';

describe('VirshDriver.abort', () => {
  it('says --abort explicitly (with --async), not --async alone', async () => {
    const runner = new RecordingRunner();
    const driver = new VirshDriver(runner, URI, { virsh: hasVirsh ? 'virsh' : '/nonexistent/virsh' });
    await driver.abort('test', 'vda').catch(() => undefined);
    expect(runner.argvs).toEqual([[hasVirsh ? 'virsh' : '/nonexistent/virsh', '-q', '-c', URI, 'blockjob', '--domain', 'test', '--path', 'vda', '--abort', '--async']]);
  });

  it.skipIf(!hasVirsh)('virsh accepts the argv and calls virDomainBlockJobAbort (test driver: not supported there)', async () => {
    const driver = new VirshDriver(new RecordingRunner(), URI);
    // The test driver parses every option and then reports the API it lacks: an option virsh
    // did not accept would fail earlier with "command 'blockjob' doesn't support option".
    await expect(driver.abort('test', 'vda')).rejects.toThrow(/virDomainBlockJobAbort/);
    const bogus = new LocalRunner();
    const res = await bogus.run(['virsh', '-q', '-c', URI, 'blockjob', '--domain', 'test', '--path', 'vda', '--abort', '--bogus']);
    expect(res.stderr).toMatch(/doesn't support option --bogus/);
  });
});
