/**
 * A client for virt-launcher's command server: gRPC service kubevirt.cmd.v1.Cmd on the unix socket
 * <sockets emptyDir>/launcher-sock, loaded from KubeVirt's own cmd.proto in the Go module cache
 * (pkg/handler-launcher-com/cmd/v1/cmd.proto of the pinned kubevirt.io/kubevirt module), like
 * virt-handler's pkg/virt-handler/cmd-client does it in Go.
 *
 * Unix socket paths are limited to 107 bytes; the kubelet's pod dirs are longer than that, so the
 * caller passes a short path (a symlink to the pod's sockets dir, see handler.ts).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { z } from 'zod';
import { goBinary } from '../support/paths.ts';
import { run } from '../support/process.ts';

export const CMD_PROTO = 'pkg/handler-launcher-com/cmd/v1/cmd.proto';

const ModDownload = z.object({ Dir: z.string().min(1) });

/**
 * cmd.proto of kubevirt.io/kubevirt@<version> (the version the test bed builds, binaries.ts: its
 * cmd.proto is the launcher's wire format), downloaded into the Go module cache if missing.
 */
export async function launcherCmdProto(version: string): Promise<string> {
  const { stdout } = await run([goBinary(), 'mod', 'download', '-json', `kubevirt.io/kubevirt@${version}`], {
    env: { ...process.env, GOFLAGS: '-mod=mod' },
    cwd: '/',
    maxOutput: 1 << 20,
    timeoutMs: 600_000,
  });
  const dir = ModDownload.parse(JSON.parse(stdout)).Dir;
  const file = path.join(dir, CMD_PROTO);
  if (!existsSync(file)) throw new Error(`${file} not found in kubevirt.io/kubevirt@${version}`);
  return file;
}

const ResponseSchema = z.object({ success: z.boolean(), message: z.string() });
const DomainResponseSchema = z.object({ response: ResponseSchema.nullable().optional(), domain: z.string() });

/** What a unary call of the generated client looks like (grpc-js loads services untyped). */
type Unary = (
  request: unknown,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, value?: unknown) => void,
) => grpc.ClientUnaryCall;

export interface LauncherCmdClient {
  /** SyncVirtualMachine(vmi): defines and starts the domain (or syncs it). */
  sync(vmiJson: string, timeoutMs: number): Promise<void>;
  /** The domain as virt-launcher reports it (its JSON), or undefined when none is defined. */
  getDomain(timeoutMs: number): Promise<string | undefined>;
  shutdown(vmiJson: string, timeoutMs: number): Promise<void>;
  kill(vmiJson: string, timeoutMs: number): Promise<void>;
  ping(timeoutMs: number): Promise<void>;
  close(): void;
}

let packageCache: { file: string; def: grpc.GrpcObject } | undefined;

function loadPackage(protoFile: string): grpc.GrpcObject {
  if (packageCache?.file === protoFile) return packageCache.def;
  const def = grpc.loadPackageDefinition(
    protoLoader.loadSync(protoFile, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true }),
  );
  packageCache = { file: protoFile, def };
  return def;
}

export function launcherCmdClient(protoFile: string, socketPath: string): LauncherCmdClient {
  if (Buffer.byteLength(socketPath) > 107) throw new Error(`socket path too long for a unix socket (${socketPath})`);
  const pkg = loadPackage(protoFile);
  const Cmd = (((pkg['kubevirt'] as grpc.GrpcObject)['cmd'] as grpc.GrpcObject)['v1'] as grpc.GrpcObject)[
    'Cmd'
  ] as grpc.ServiceClientConstructor;
  const client = new Cmd(`unix://${socketPath}`, grpc.credentials.createInsecure());
  const call = (method: string, request: unknown, timeoutMs: number): Promise<unknown> =>
    new Promise((resolve, reject) => {
      const fn = (client as unknown as Record<string, Unary>)[method];
      if (fn === undefined) {
        reject(new Error(`cmd.proto has no method ${method}`));
        return;
      }
      fn.call(client, request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, value) =>
        err ? reject(err) : resolve(value),
      );
    });
  const vmiRequest = (vmiJson: string): unknown => ({
    vmi: { vmiJson: Buffer.from(vmiJson) },
    // What virt-handler sends at minimum for a VMI without NUMA, hotplug or preallocated volumes.
    options: { DisksInfo: {}, topology: { numa_cells: [] }, clusterConfig: {} },
  });
  const checked = async (method: string, request: unknown, timeoutMs: number): Promise<void> => {
    const r = ResponseSchema.parse(await call(method, request, timeoutMs));
    if (!r.success) throw new Error(`${method}: ${r.message.slice(0, 2000)}`);
  };
  return {
    sync: (vmiJson, timeoutMs) => checked('SyncVirtualMachine', vmiRequest(vmiJson), timeoutMs),
    shutdown: (vmiJson, timeoutMs) => checked('ShutdownVirtualMachine', vmiRequest(vmiJson), timeoutMs),
    kill: (vmiJson, timeoutMs) => checked('KillVirtualMachine', vmiRequest(vmiJson), timeoutMs),
    ping: (timeoutMs) => checked('Ping', {}, timeoutMs),
    async getDomain(timeoutMs) {
      const r = DomainResponseSchema.parse(await call('GetDomain', {}, timeoutMs));
      if (r.response && !r.response.success) throw new Error(`GetDomain: ${r.response.message.slice(0, 2000)}`);
      return r.domain === '' ? undefined : r.domain;
    },
    close: () => client.close(),
  };
}
