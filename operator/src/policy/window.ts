/**
 * A policy's window: the hours in which its pulls may run, in an IANA time zone, optionally on
 * some days only. Pure (the caller passes `now`). The local clock comes from Intl (the zone data
 * Node ships), so daylight saving time is followed: on the night clocks go forward, local times
 * in the gap do not exist and a window edge inside it is crossed when the clock jumps over it.
 */
import { DAYS, type Day, type Window } from '../api/policy-types.ts';

export type WindowState =
  | { readonly kind: 'always' }
  | { readonly kind: 'open' | 'closed'; readonly nextChange?: Date }
  | { readonly kind: 'invalid'; readonly reason: 'InvalidWindow' | 'WindowNeverOpens'; readonly message: string };

const MINUTE = 60_000;
const QUARTER = 15 * MINUTE;
/** How far ahead the next change is looked for: two weeks, so a day-restricted window is seen twice. */
export const WINDOW_HORIZON_MS = 15 * 24 * 60 * MINUTE;

const formats = new Map<string, Intl.DateTimeFormat>();

/** The zone's formatter; undefined for a zone Intl does not know. */
function formatter(timeZone: string): Intl.DateTimeFormat | undefined {
  let f = formats.get(timeZone);
  if (f !== undefined) return f;
  try {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
    });
  } catch {
    return undefined;
  }
  formats.set(timeZone, f);
  return f;
}

/** The zone's offset from UTC at `t`, in ms (local = t + offset). */
function offsetAt(f: Intl.DateTimeFormat, t: number): number {
  const p: Record<string, number> = {};
  for (const part of f.formatToParts(new Date(t))) if (part.type !== 'literal') p[part.type] = Number(part.value);
  const local = Date.UTC(p.year!, p.month! - 1, p.day, p.hour, p.minute);
  return local - Math.floor(t / MINUTE) * MINUTE;
}

/** Local day (0 = Mon) and minute of the day at `t`, for a zone offset. */
function localClock(t: number, offset: number): { day: number; minutes: number } {
  const local = new Date(t + offset);
  return { day: (local.getUTCDay() + 6) % 7, minutes: local.getUTCHours() * 60 + local.getUTCMinutes() };
}

function minutesOf(hhmm: string): number {
  const [h, m] = hhmm.split(':').map(Number);
  return h! * 60 + m!;
}

/** Is the window open at this local time? A window over midnight belongs to the day it opens. */
function openAt(w: Window, clock: { day: number; minutes: number }): boolean {
  const start = minutesOf(w.start);
  const end = minutesOf(w.end);
  const onDay = (d: number): boolean => w.days === undefined || w.days.includes(DAYS[d] as Day);
  if (start < end) return clock.minutes >= start && clock.minutes < end && onDay(clock.day);
  return (clock.minutes >= start && onDay(clock.day)) || (clock.minutes < end && onDay((clock.day + 6) % 7));
}

/**
 * Whether the window is open at `now` and when that next changes (looked for minute by minute
 * over `horizonMs`; the zone's offset is read once a quarter hour, the finest step any zone's
 * offset changes by). Closed without an opening within the horizon: WindowNeverOpens.
 */
export function windowState(w: Window | undefined, now: Date, horizonMs = WINDOW_HORIZON_MS): WindowState {
  if (w === undefined) return { kind: 'always' };
  const f = formatter(w.timeZone);
  if (f === undefined)
    return {
      kind: 'invalid',
      reason: 'InvalidWindow',
      message: `window.timeZone ${JSON.stringify(w.timeZone)} is not an IANA time zone this operator knows (e.g. Europe/Berlin, America/New_York, UTC)`,
    };
  let quarter = Number.NaN;
  let offset = 0;
  const isOpen = (t: number): boolean => {
    const q = Math.floor(t / QUARTER);
    if (q !== quarter) {
      quarter = q;
      offset = offsetAt(f, q * QUARTER);
    }
    return openAt(w, localClock(t, offset));
  };
  const t0 = now.getTime();
  const open = isOpen(t0);
  const first = Math.floor(t0 / MINUTE) * MINUTE + MINUTE;
  for (let t = first; t <= t0 + horizonMs; t += MINUTE) {
    if (isOpen(t) !== open) return { kind: open ? 'open' : 'closed', nextChange: new Date(t) };
  }
  if (open) return { kind: 'open' };
  const days = w.days === undefined ? 'every day' : w.days.join(', ');
  return {
    kind: 'invalid',
    reason: 'WindowNeverOpens',
    message: `the window ${w.start}-${w.end} ${w.timeZone} (${days}) does not open within ${Math.round(horizonMs / 86_400_000)} days`,
  };
}
