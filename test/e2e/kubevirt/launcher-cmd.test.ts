// The launcher command client against a gRPC server built from the same cmd.proto (KubeVirt's, from
// the Go module cache): what virt-launcher receives, and how its answers come back.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pinnedKubevirtVersion } from './binaries.ts';
import { launcherCmdClient, launcherCmdProto } from './launcher-cmd.ts';

let dir = '';
let proto = '';
let server: grpc.Server | undefined;
const received: { method: string; vmiJson: string; options: unknown }[] = [];

beforeAll(async () => {
  proto = await launcherCmdProto(pinnedKubevirtVersion());
  dir = mkdtempSync(path.join(os.tmpdir(), 'lcmd-'));
  const pkg = grpc.loadPackageDefinition(
    protoLoader.loadSync(proto, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true }),
  );
  const service = (((pkg['kubevirt'] as grpc.GrpcObject)['cmd'] as grpc.GrpcObject)['v1'] as grpc.GrpcObject)[
    'Cmd'
  ] as grpc.ServiceClientConstructor;
  const vmiCall =
    (
      method: string,
      answer: { success: boolean; message: string },
    ): grpc.handleUnaryCall<{ vmi: { vmiJson: Buffer }; options: unknown }, unknown> =>
    (call, cb) => {
      received.push({ method, vmiJson: call.request.vmi.vmiJson.toString(), options: call.request.options });
      cb(null, answer);
    };
  server = new grpc.Server();
  server.addService(service.service, {
    SyncVirtualMachine: vmiCall('SyncVirtualMachine', { success: true, message: '' }),
    KillVirtualMachine: vmiCall('KillVirtualMachine', { success: false, message: 'domain is gone' }),
    GetDomain: ((_call, cb) =>
      cb(null, {
        response: { success: true, message: '' },
        domain: JSON.stringify({ Status: { Status: 'Running' } }),
      })) as grpc.handleUnaryCall<unknown, unknown>,
  });
  await new Promise<void>((resolve, reject) =>
    server!.bindAsync(`unix://${path.join(dir, 'launcher-sock')}`, grpc.ServerCredentials.createInsecure(), (e) =>
      e ? reject(e) : resolve(),
    ),
  );
}, 120_000);

afterAll(() => {
  server?.forceShutdown();
  rmSync(dir, { recursive: true, force: true });
});

describe('launcher command client (KubeVirt cmd.proto)', () => {
  it('sends the VMI JSON and the options virt-handler sends; reads the domain; a refusal is an error', async () => {
    const c = launcherCmdClient(proto, path.join(dir, 'launcher-sock'));
    try {
      await c.sync('{"metadata":{"name":"vm1"}}', 5000);
      expect(received[0]).toMatchObject({ method: 'SyncVirtualMachine', vmiJson: '{"metadata":{"name":"vm1"}}' });
      expect(received[0]?.options).toMatchObject({ DisksInfo: {}, topology: { numa_cells: [] }, clusterConfig: {} });
      expect(JSON.parse((await c.getDomain(5000)) ?? '')).toEqual({ Status: { Status: 'Running' } });
      await expect(c.kill('{}', 5000)).rejects.toThrow('KillVirtualMachine: domain is gone');
      await expect(c.ping(5000)).rejects.toThrow(/UNIMPLEMENTED/);
    } finally {
      c.close();
    }
  });

  it('refuses a socket path a unix socket cannot have', () => {
    expect(() => launcherCmdClient(proto, `/${'x'.repeat(120)}/launcher-sock`)).toThrow(/too long/);
  });
});
