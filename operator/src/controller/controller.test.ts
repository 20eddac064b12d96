/**
 * Controller.run when an informer fails to start: the informers already started are stopped
 * before run() rejects (no list/watch loops, watchdog timers or restarts left behind). Real
 * WatchdogInformers against an API server address nothing listens on (no cluster needed); the
 * VMI informer's start is made to fail.
 */
import { describe, expect, it, vi } from 'vitest';
import { WatchdogInformer, type InformerHandlers } from '../kube/informer.ts';
import { testKubeConfig } from '../../../test/unit/support/kubeconfig.ts';
import { testController } from '../../../test/unit/support/reconciler.ts';

describe('Controller.run', () => {
  it('an informer that fails to start: the others are stopped, then run() rejects with its error', async () => {
    const controller = testController(testKubeConfig());
    // API discovery of the optional kinds answers at once here (nothing served): the test is about the informers.
    controller.discoverWatches = () => Promise.resolve();
    const calls: string[] = [];
    const informers = {
      blockpulls: controller.blockPulls,
      vmis: controller.vmis,
      migrations: controller.migrations,
      pods: controller.pods,
    };
    for (const [name, inf] of Object.entries(informers)) {
      const start = inf.start.bind(inf);
      const stop = inf.stop.bind(inf);
      inf.start = async () => {
        calls.push(`start ${name}`);
        if (name === 'vmis') throw new Error('VMI informer cannot start');
        await start();
      };
      inf.stop = async () => {
        calls.push(`stop ${name}`);
        await stop();
      };
    }
    const ac = new AbortController();
    const run = controller.run(ac.signal);
    await expect(run).rejects.toThrow('VMI informer cannot start');
    expect(calls.filter((c) => c.startsWith('start')).sort()).toEqual([
      'start blockpulls',
      'start migrations',
      'start pods',
      'start vmis',
    ]);
    expect(calls).toContain('stop blockpulls');
    expect(calls).toContain('stop pods');
    expect(calls).toContain('stop migrations');
    expect(calls.indexOf('stop blockpulls')).toBeGreaterThan(calls.indexOf('start vmis'));
    ac.abort();
  });
});

describe('Controller wake-ups', () => {
  it('a VirtualMachineInstanceMigration wakes the BlockPulls of the VMI it names (spec.vmiName), in its namespace only', async () => {
    const handlers = new Map<string, InformerHandlers<unknown>[]>();
    const spy = vi.spyOn(WatchdogInformer.prototype, 'addEventHandler').mockImplementation(function (
      this: WatchdogInformer<never>,
      h,
    ) {
      handlers.set(this.resource, [...(handlers.get(this.resource) ?? []), h as InformerHandlers<unknown>]);
    });
    try {
      const controller = testController(testKubeConfig());
      const bps = [
        { metadata: { namespace: 'ns', name: 'a' }, spec: { vmiName: 'vm1', disk: 'd' } },
        { metadata: { namespace: 'ns', name: 'b' }, spec: { vmiName: 'vm2', disk: 'd' } },
        { metadata: { namespace: 'other', name: 'c' }, spec: { vmiName: 'vm1', disk: 'd' } },
      ];
      // The BlockPull cache's VMI index (namespace/vmiName), as the controller reads it.
      controller.blockPulls.byIndex = (_index: string, key: string) =>
        bps.filter((b) => `${b.metadata.namespace}/${b.spec.vmiName}` === key);
      const vmim = {
        apiVersion: 'kubevirt.io/v1',
        kind: 'VirtualMachineInstanceMigration',
        metadata: { namespace: 'ns', name: 'mig' },
        spec: { vmiName: 'vm1' },
      };
      const registered = handlers.get('virtualmachineinstancemigrations') ?? [];
      expect(registered).toHaveLength(1);
      for (const event of ['add', 'update', 'delete'] as const) {
        registered[0]![event]!(vmim);
        expect(controller.queue.len(), event).toBe(1);
        expect(await controller.queue.get()).toBe('ns/a');
        controller.queue.done('ns/a');
      }
      // A malformed object (no spec.vmiName) wakes nothing.
      registered[0]!.add!({ metadata: { namespace: 'ns', name: 'x' } });
      expect(controller.queue.len()).toBe(0);
    } finally {
      spy.mockRestore();
    }
  });
});
