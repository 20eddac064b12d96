/**
 * BlockJobDriver over QMP, for a QEMU without libvirt. Test tooling, not in the operator: a second
 * implementation of the BlockJobDriver contract (operator/src/hypervisor/types.ts), run by the
 * QMP spec against a standalone QEMU. One connection (a QMP socket serves one
 * client at a time), opened lazily and reopened after it drops. The `domain` argument only labels
 * events: a QMP socket is one VM.
 *
 * Disks: `target` is the BlockBackend name (-drive id=..., query-block "device"); a DiskRef by
 * name matches the device's qdev id ua-<name>. Jobs get job-id `pull-<target>`.
 */
import { z } from 'zod';
import { resolveBase } from '../../../operator/src/hypervisor/chain.ts';
import { HypervisorError } from '../../../operator/src/hypervisor/errors.ts';
import { QmpClient, QmpConnectionError, QmpError, type QmpEvent } from './qmp-client.ts';
import type {
  BlockJobDriver,
  BlockJobEvent,
  BlockJobInfo,
  ChainLayer,
  DiskInfo,
  DiskRef,
  EventSubscription,
  StartPullOptions,
} from '../../../operator/src/hypervisor/types.ts';
import { kubevirtAlias } from '../../../operator/src/hypervisor/virsh-parse.ts';

type ImageInfo = { filename: string; format: string; 'backing-image'?: ImageInfo | undefined };
const imageInfoSchema: z.ZodType<ImageInfo> = z.looseObject({
  filename: z.string(),
  format: z.string(),
  get 'backing-image'() {
    return imageInfoSchema.optional();
  },
});
const queryBlockSchema = z.array(
  z.looseObject({
    device: z.string(),
    qdev: z.string().optional(),
    inserted: z
      .looseObject({ 'node-name': z.string().optional(), file: z.string(), image: imageInfoSchema })
      .optional(),
  }),
);
const namedNodesSchema = z.array(z.looseObject({ 'node-name': z.string(), file: z.string(), drv: z.string() }));
const blockJobsSchema = z.array(
  z.looseObject({
    type: z.string(),
    device: z.string(),
    len: z.number(),
    offset: z.number(),
    speed: z.number(),
    paused: z.boolean().optional(),
    status: z.string().optional(),
  }),
);
const jobEventDataSchema = z.looseObject({
  device: z.string(),
  type: z.string().optional(),
  error: z.string().optional(),
});

const JOB_TYPE_NAMES: Readonly<Record<string, string>> = {
  stream: 'Block Pull',
  commit: 'Block Commit',
  mirror: 'Block Copy',
  backup: 'Backup',
};

export interface QmpDriverOptions {
  readonly timeoutMs?: number;
}

export class QmpDriver implements BlockJobDriver {
  readonly socketPath: string;
  readonly #timeoutMs: number;
  #client: Promise<QmpClient> | undefined;
  #eventListeners = new Set<(ev: QmpEvent) => void>();

  constructor(socketPath: string, options: QmpDriverOptions = {}) {
    this.socketPath = socketPath;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
  }

  static jobId(target: string): string {
    return `pull-${target}`;
  }

  #connect(): Promise<QmpClient> {
    if (this.#client === undefined) {
      const p = QmpClient.connect(this.socketPath, { timeoutMs: this.#timeoutMs }).then((c) => {
        c.onEvent((ev) => {
          for (const l of this.#eventListeners) l(ev);
        });
        c.onClose(() => {
          if (this.#client === p) this.#client = undefined;
        });
        return c;
      });
      p.catch(() => {
        if (this.#client === p) this.#client = undefined;
      });
      this.#client = p;
    }
    return this.#client;
  }

  /** Run a raw QMP command; errors become typed HypervisorErrors. */
  async execute(command: string, args?: Readonly<Record<string, unknown>>): Promise<unknown> {
    let client: QmpClient;
    try {
      client = await this.#connect();
      return await client.execute(command, args, { timeoutMs: this.#timeoutMs });
    } catch (err) {
      throw mapQmpError(err);
    }
  }

  async listDisks(): Promise<DiskInfo[]> {
    const parsed = queryBlockSchema.safeParse(await this.execute('query-block'));
    if (!parsed.success)
      throw new HypervisorError('CommandFailed', `unexpected query-block reply: ${parsed.error.message}`);
    const disks: DiskInfo[] = [];
    for (const b of parsed.data) {
      if (b.inserted === undefined) continue;
      const chain: ChainLayer[] = [];
      for (let img: ImageInfo | undefined = b.inserted.image; img !== undefined; img = img['backing-image']) {
        chain.push({ position: chain.length, path: img.filename, format: img.format });
      }
      const target = b.device !== '' ? b.device : (b.inserted['node-name'] ?? '');
      const alias = qdevId(b.qdev);
      disks.push({ target, ...(alias === undefined ? {} : { alias }), chain });
    }
    return disks;
  }

  async getDisk(_domain: string, disk: DiskRef): Promise<DiskInfo> {
    const disks = await this.listDisks();
    const found =
      'name' in disk
        ? disks.find((d) => d.alias === kubevirtAlias(disk.name))
        : disks.find((d) => d.target === disk.target);
    if (found === undefined) {
      throw new HypervisorError(
        'DiskNotFound',
        `disk ${'name' in disk ? disk.name : disk.target} not found on QMP ${this.socketPath}`,
      );
    }
    return found;
  }

  async startPull(domain: string, target: string, options: StartPullOptions = {}): Promise<void> {
    const args: Record<string, unknown> = { 'job-id': QmpDriver.jobId(target), device: target };
    if (options.base !== undefined) {
      const disk = await this.getDisk(domain, { target });
      const layer = resolveBase(disk, options.base);
      const nodes = namedNodesSchema.safeParse(await this.execute('query-named-block-nodes', { flat: true }));
      if (!nodes.success)
        throw new HypervisorError('CommandFailed', `unexpected query-named-block-nodes reply: ${nodes.error.message}`);
      const node = nodes.data.find((n) => n.file === layer.path && n.drv === layer.format);
      if (node === undefined)
        throw new HypervisorError('InvalidBase', `no block node for base ${layer.path} (${layer.format})`);
      args['base-node'] = node['node-name'];
    }
    if (options.bandwidth !== undefined && options.bandwidth > 0) args.speed = Math.trunc(options.bandwidth);
    await this.execute('block-stream', args);
  }

  async #jobs(): Promise<z.infer<typeof blockJobsSchema>> {
    const parsed = blockJobsSchema.safeParse(await this.execute('query-block-jobs'));
    if (!parsed.success)
      throw new HypervisorError('CommandFailed', `unexpected query-block-jobs reply: ${parsed.error.message}`);
    return parsed.data;
  }

  async getJob(_domain: string, target: string): Promise<BlockJobInfo | null> {
    const id = QmpDriver.jobId(target);
    const job = (await this.#jobs()).find((j) => j.device === id || j.device === target);
    if (job === undefined || job.status === 'concluded' || job.status === 'null') return null;
    return {
      type: JOB_TYPE_NAMES[job.type] ?? job.type,
      cur: job.offset,
      end: job.len,
      bandwidth: job.speed,
      ...(job.paused === undefined ? {} : { paused: job.paused }),
    };
  }

  async #jobDevice(target: string): Promise<string> {
    const id = QmpDriver.jobId(target);
    const job = (await this.#jobs()).find((j) => j.device === id || j.device === target);
    if (job === undefined) throw new HypervisorError('CommandFailed', `no block job on ${target}`);
    return job.device;
  }

  async setBandwidth(_domain: string, target: string, bytesPerSecond: number): Promise<void> {
    if (!Number.isInteger(bytesPerSecond) || bytesPerSecond < 0)
      throw new RangeError(`bandwidth must be a non-negative integer, got ${bytesPerSecond}`);
    await this.execute('block-job-set-speed', { device: await this.#jobDevice(target), speed: bytesPerSecond });
  }

  async abort(_domain: string, target: string): Promise<void> {
    await this.execute('block-job-cancel', { device: await this.#jobDevice(target) });
  }

  async pause(_domain: string, target: string): Promise<void> {
    await this.execute('block-job-pause', { device: await this.#jobDevice(target) });
  }

  async resume(_domain: string, target: string): Promise<void> {
    await this.execute('block-job-resume', { device: await this.#jobDevice(target) });
  }

  watchEvents(domain: string, onEvent: (event: BlockJobEvent) => void): EventSubscription {
    let stopped = false;
    const listener = (ev: QmpEvent): void => {
      if (stopped) return;
      const kind =
        ev.event === 'BLOCK_JOB_COMPLETED'
          ? 'completed'
          : ev.event === 'BLOCK_JOB_CANCELLED'
            ? 'canceled'
            : ev.event === 'BLOCK_JOB_READY'
              ? 'ready'
              : undefined;
      if (kind === undefined) return;
      const data = jobEventDataSchema.safeParse(ev.data);
      if (!data.success) return;
      const target = data.data.device.startsWith('pull-') ? data.data.device.slice('pull-'.length) : data.data.device;
      const type = data.data.type;
      onEvent({
        domain,
        target,
        kind: kind === 'completed' && data.data.error !== undefined ? 'failed' : kind,
        ...(type === undefined ? {} : { jobType: JOB_TYPE_NAMES[type] ?? type }),
      });
    };
    this.#eventListeners.add(listener);
    // Make sure a connection exists, so that events flow even before the first command.
    this.#connect().catch(() => undefined);
    return {
      stop: () => {
        stopped = true;
        this.#eventListeners.delete(listener);
      },
    };
  }

  async close(): Promise<void> {
    const c = this.#client;
    this.#client = undefined;
    if (c !== undefined) (await c.catch(() => undefined))?.close();
  }
}

/** qdev path "/machine/peripheral/ua-x/virtio-backend" or id "ua-x" -> "ua-x". */
function qdevId(qdev: string | undefined): string | undefined {
  if (qdev === undefined || qdev === '') return undefined;
  const m = /^\/machine\/peripheral\/([^/]+)/.exec(qdev);
  return m?.[1] ?? (qdev.startsWith('/') ? undefined : qdev);
}

export function mapQmpError(err: unknown): unknown {
  if (err instanceof HypervisorError) return err;
  if (err instanceof QmpConnectionError) return new HypervisorError('Unreachable', err.message, { cause: err });
  if (err instanceof QmpError) {
    const d = err.message;
    if (err.errorClass === 'DeviceNotFound' || /Cannot find device|not found/i.test(d))
      return new HypervisorError('DiskNotFound', d, { cause: err });
    if (/is busy|in use by|already in use|already exists|already has a job/i.test(d))
      return new HypervisorError('DiskBusy', d, { cause: err });
    if (/base|backing/i.test(d) && err.command === 'block-stream')
      return new HypervisorError('InvalidBase', d, { cause: err });
    return new HypervisorError('CommandFailed', d, { cause: err });
  }
  return err;
}
