import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, errorMessage, forBlockPull, forBlockPullKey } from './log.ts';

function capture() {
  const lines: Record<string, unknown>[] = [];
  const dest = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n'))
        if (l.trim() !== '') lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { lines, dest };
}

describe('logger', () => {
  it('writes JSON lines with level labels, time and app', () => {
    const { lines, dest } = capture();
    const log = createLogger({ level: 'debug', destination: dest });
    log.debug({ x: 1 }, 'hello');
    log.trace('dropped');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'debug', app: 'blockpull-operator', x: 1, msg: 'hello' });
    expect(typeof lines[0]?.['time']).toBe('string');
  });

  it('binds the BlockPull to every line of a child logger, and serialises errors', () => {
    const { lines, dest } = capture();
    const log = forBlockPull(createLogger({ destination: dest }), 'ns1', 'bp-a').child({ component: 'reconcile' });
    log.info('started');
    log.error({ err: new Error('boom') }, 'failed');
    forBlockPullKey(createLogger({ destination: dest }), 'ns2/bp-b').warn('w');
    expect(lines[0]).toMatchObject({
      blockpull: 'ns1/bp-a',
      namespace: 'ns1',
      name: 'bp-a',
      component: 'reconcile',
      msg: 'started',
    });
    expect(lines[1]).toMatchObject({ blockpull: 'ns1/bp-a', level: 'error' });
    expect((lines[1]?.['err'] as { message: string }).message).toBe('boom');
    expect(lines[2]).toMatchObject({ blockpull: 'ns2/bp-b', namespace: 'ns2', name: 'bp-b', level: 'warn' });
  });
});

describe('errorMessage', () => {
  it("gives an Error's message and any other thrown value's string form", () => {
    expect(errorMessage(new TypeError('bad input'))).toBe('bad input');
    expect(errorMessage('plain string')).toBe('plain string');
    expect(errorMessage(42)).toBe('42');
    expect(errorMessage(undefined)).toBe('undefined');
  });
});
