import { KubeConfig } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { fenceWrites } from '../kube/client.ts';
import { RunTransportError } from '../hypervisor/runner.ts';
import { ExecRunner, type ExecLike } from './exec-runner.ts';

describe('ExecRunner and the write fence', () => {
  it('opens no pods/exec session once writes are fenced (run and stream)', async () => {
    let sessions = 0;
    const exec: ExecLike = {
      exec: () => {
        sessions++;
        return Promise.reject(new Error('not reached'));
      },
    };
    const r = new ExecRunner({ kc: new KubeConfig(), namespace: 'ns', pod: 'virt-launcher-x', exec });
    fenceWrites();
    await expect(r.run(['virsh', 'blockpull', 'ns_vm', 'vda'])).rejects.toThrow(RunTransportError);
    await expect(r.run(['virsh', 'list'])).rejects.toThrow(/lost its leader lease/);
    const h = r.stream(['virsh', 'event', '--loop']);
    await expect(h.done).rejects.toThrow(RunTransportError);
    expect(sessions).toBe(0);
  });
});
