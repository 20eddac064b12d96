import { describe, expect, it } from 'vitest';
import type { BlockJobDriver } from '../hypervisor/types.ts';
import { launcherCaches, oneObjectApi, testReconciler } from '../../../test/unit/support/reconciler.ts';
import {
  blockPullFixture,
  launcherFixture,
  runningStatusFixture,
  TWO_IMAGE_CHAIN,
} from '../../../test/unit/support/launcher.ts';
import { NODE_LOOK_SPACING_MS } from './slots.ts';

/**
 * A running pull's next progress look is spaced by the pulls running on its node (slots.ts,
 * progressLookIntervalMs): with a short statusUpdateIntervalMs, one pull on the node is looked at
 * every NODE_LOOK_SPACING_MS, not every statusUpdateIntervalMs.
 */
describe('Reconciler: progress looks spaced per node', () => {
  it('one running pull on its node, statusUpdateIntervalMs 100 and a 50 ms poll: the next look in NODE_LOOK_SPACING_MS', async () => {
    const chain = [...TWO_IMAGE_CHAIN];
    const status = runningStatusFixture(chain);
    const api = oneObjectApi({ ...blockPullFixture('5'), status });
    const driver: BlockJobDriver = {
      getDisk: () => Promise.resolve({ target: 'vda', alias: 'ua-rootdisk', chain }),
      getJob: () => Promise.resolve({ type: 'Block Pull', cur: 10, end: 100, bandwidth: 0 }),
      startPull: () => Promise.reject(new Error('already running')),
      setBandwidth: () => Promise.resolve(),
      abort: () => Promise.resolve(),
      watchEvents: () => ({ stop: () => undefined }),
    };
    const { vmi, pod } = launcherFixture('node1');
    const r = testReconciler({
      clients: api.clients,
      ...launcherCaches(vmi, pod),
      drivers: { kind: 'local', driverFor: () => Promise.resolve(driver) },
      statusUpdateIntervalMs: 100,
      pollIntervalMs: 50,
    });
    await r.reconcile('ns/p'); // adopts the running job, subscribes to its events
    expect(await r.reconcile('ns/p')).toEqual({ requeueAfterMs: NODE_LOOK_SPACING_MS });
  });
});
