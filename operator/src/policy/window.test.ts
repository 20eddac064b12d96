import { describe, expect, it } from 'vitest';
import { windowState } from './window.ts';

const at = (iso: string): Date => new Date(iso);

describe('windowState', () => {
  it('no window: always open', () => {
    expect(windowState(undefined, at('2026-12-07T12:00:00Z'))).toEqual({ kind: 'always' });
  });

  it.each([
    // [now, window, kind, nextChange]
    ['2026-12-07T10:30:00Z', { start: '09:00', end: '17:00', timeZone: 'UTC' }, 'open', '2026-12-07T17:00:00.000Z'],
    ['2026-12-07T08:59:30Z', { start: '09:00', end: '17:00', timeZone: 'UTC' }, 'closed', '2026-12-07T09:00:00.000Z'],
    ['2026-12-07T17:00:00Z', { start: '09:00', end: '17:00', timeZone: 'UTC' }, 'closed', '2026-12-08T09:00:00.000Z'],
    // Berlin is UTC+1 in December: 22:00-06:00 local is 21:00-05:00 UTC, over midnight.
    [
      '2026-12-07T21:30:00Z',
      { start: '22:00', end: '06:00', timeZone: 'Europe/Berlin' },
      'open',
      '2026-12-08T05:00:00.000Z',
    ],
    [
      '2026-12-07T20:00:00Z',
      { start: '22:00', end: '06:00', timeZone: 'Europe/Berlin' },
      'closed',
      '2026-12-07T21:00:00.000Z',
    ],
    // India is UTC+5:30: 01:00 local is 19:30 UTC the day before.
    [
      '2026-12-07T19:00:00Z',
      { start: '01:00', end: '02:00', timeZone: 'Asia/Kolkata' },
      'closed',
      '2026-12-07T19:30:00.000Z',
    ],
    // Nepal is UTC+5:45.
    [
      '2026-12-07T19:00:00Z',
      { start: '01:00', end: '02:00', timeZone: 'Asia/Kathmandu' },
      'closed',
      '2026-12-07T19:15:00.000Z',
    ],
  ] as const)('%s %j -> %s until %s', (now, w, kind, next) => {
    const s = windowState(w, at(now));
    expect(s.kind).toBe(kind);
    expect('nextChange' in s ? s.nextChange?.toISOString() : undefined).toBe(next);
  });

  it('days: a window over midnight belongs to the day it opens', () => {
    // 2026-12-11 is a Friday. Fri 22:00 - Sat 06:00 UTC is open, Sat 22:00 is not.
    const w = { start: '22:00', end: '06:00', timeZone: 'UTC', days: ['Fri' as const] };
    expect(windowState(w, at('2026-12-12T03:00:00Z'))).toEqual({
      kind: 'open',
      nextChange: at('2026-12-12T06:00:00Z'),
    });
    expect(windowState(w, at('2026-12-12T23:00:00Z'))).toEqual({
      kind: 'closed',
      nextChange: at('2026-12-18T22:00:00Z'),
    });
  });

  it('DST: the offset changes with the season (Berlin UTC+2 in July, UTC+1 in December)', () => {
    const w = { start: '09:00', end: '10:00', timeZone: 'Europe/Berlin' };
    expect(windowState(w, at('2026-07-01T06:00:00Z'))).toEqual({
      kind: 'closed',
      nextChange: at('2026-07-01T07:00:00Z'),
    });
    expect(windowState(w, at('2026-12-01T06:00:00Z'))).toEqual({
      kind: 'closed',
      nextChange: at('2026-12-01T08:00:00Z'),
    });
  });

  it('DST: clocks go forward over the window start (Berlin, 2026-03-29 02:00 -> 03:00): it opens at the jump', () => {
    // 02:30 local does not exist that night: the window 02:30-04:00 opens when the clock jumps to 03:00 (01:00 UTC).
    const w = { start: '02:30', end: '04:00', timeZone: 'Europe/Berlin' };
    expect(windowState(w, at('2026-03-29T00:30:00Z'))).toEqual({
      kind: 'closed',
      nextChange: at('2026-03-29T01:00:00Z'),
    });
  });

  it('DST: clocks go back (New York, 2026-11-01 02:00 -> 01:00): the window 01:00-01:30 opens twice that night', () => {
    const w = { start: '01:00', end: '01:30', timeZone: 'America/New_York' };
    // 01:00 EDT = 05:00 UTC; after the first 01:30 EDT (05:30 UTC) clocks go back; 01:00 EST = 06:00 UTC.
    expect(windowState(w, at('2026-11-01T05:10:00Z'))).toEqual({
      kind: 'open',
      nextChange: at('2026-11-01T05:30:00Z'),
    });
    expect(windowState(w, at('2026-11-01T05:40:00Z'))).toEqual({
      kind: 'closed',
      nextChange: at('2026-11-01T06:00:00Z'),
    });
  });

  it('an unknown time zone is InvalidWindow, never a crash', () => {
    const s = windowState({ start: '01:00', end: '02:00', timeZone: 'Mars/Olympus_Mons' }, at('2026-12-07T00:00:00Z'));
    expect(s).toMatchObject({ kind: 'invalid', reason: 'InvalidWindow' });
    expect('message' in s && s.message).toContain('Mars/Olympus_Mons');
  });

  it('a window that does not open within the horizon is WindowNeverOpens', () => {
    // Only on Sundays, looked at on a Monday with a horizon of 3 days.
    const w = { start: '01:00', end: '02:00', timeZone: 'UTC', days: ['Sun' as const] };
    const s = windowState(w, at('2026-12-07T12:00:00Z'), 3 * 86_400_000);
    expect(s).toMatchObject({ kind: 'invalid', reason: 'WindowNeverOpens' });
    expect(windowState(w, at('2026-12-07T12:00:00Z'))).toEqual({
      kind: 'closed',
      nextChange: at('2026-12-13T01:00:00Z'),
    });
  });

  it('a two-week scan is fast enough to run on every reconcile', () => {
    const w = { start: '01:00', end: '02:00', timeZone: 'Europe/Berlin', days: ['Sun' as const] };
    const t = performance.now();
    windowState(w, at('2026-12-07T12:00:00Z'));
    expect(performance.now() - t).toBeLessThan(200);
  });
});
