/**
 * decide() as the tests call it: one observation that may also carry the settings (they are
 * given to the Decider once in the product, see decide.ts), with the settings the tests share as
 * defaults. A look without a `space` is one whose pre-flight found nothing to check (as with a
 * driver that cannot measure), so that a test about something else reaches the start.
 */
import {
  Decider,
  type Decision,
  type DecideSettings,
  type FactsWanted,
  type Observation,
  type SlotUsage,
} from '../../../operator/src/controller/decide.ts';

export const TEST_SETTINGS: DecideSettings = {
  pollIntervalMs: 500,
  waitRequeueMs: 5_000,
  spaceMarginBytes: 0,
  spaceMarginPercent: 0,
  maxConcurrentPulls: 4,
  maxPullsPerNode: 2,
};

type SlotsWithLimits = SlotUsage & Partial<Pick<DecideSettings, 'maxConcurrentPulls' | 'maxPullsPerNode'>>;

/** An observation with, optionally, settings beside it (and the slot limits beside the slot counts). */
export type TestObservation = Omit<Observation, 'slots' | 'space'> &
  Partial<DecideSettings> & { readonly slots: SlotsWithLimits; readonly space?: Observation['space'] | 'not measured' };

const SETTING_KEYS = Object.keys(TEST_SETTINGS) as (keyof DecideSettings)[];

function split(o: TestObservation): { obs: Observation; decider: Decider } {
  const settings: Record<string, number> = { ...TEST_SETTINGS };
  const { maxConcurrentPulls, maxPullsPerNode, ...counts } = o.slots;
  if (maxConcurrentPulls !== undefined) settings['maxConcurrentPulls'] = maxConcurrentPulls;
  if (maxPullsPerNode !== undefined) settings['maxPullsPerNode'] = maxPullsPerNode;
  const rest: Record<string, unknown> = { ...o, slots: counts };
  for (const k of SETTING_KEYS) {
    const v = (o as Partial<DecideSettings>)[k];
    if (v !== undefined) settings[k] = v;
    delete rest[k];
  }
  if (o.space === 'not measured') delete rest['space'];
  else if (o.space === undefined) rest['space'] = { kind: 'unknown', reason: 'not measured in this test' };
  return { obs: rest as unknown as Observation, decider: new Decider(settings as unknown as DecideSettings) };
}

export function decide(o: TestObservation): Decision {
  const { obs, decider } = split(o);
  return decider.decide(obs);
}

export function factsWanted(o: TestObservation): FactsWanted {
  const { obs, decider } = split(o);
  return decider.factsWanted(obs);
}

export function decideActionError(o: TestObservation, decided: Decision, err: unknown): Decision | undefined {
  const { obs, decider } = split(o);
  return decider.actionError(obs, decided, err);
}
