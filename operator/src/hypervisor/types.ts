/**
 * The hypervisor model the controller sees: a disk, its backing chain and its block job.
 * Both drivers (libvirt via virsh, QEMU via QMP) speak these types and nothing else.
 */

/** One image of a disk's backing chain. Position 0 is the active (top) image. */
export interface ChainLayer {
  /** 0 = active image, 1 = its backing image, and so on down to the base. */
  readonly position: number;
  /** libvirt's backing index (the N of vda[N]); absent for QMP. */
  readonly index?: number;
  readonly path: string;
  /** Image format: qcow2, raw, ... */
  readonly format: string;
}

export interface DiskInfo {
  /** Guest target, e.g. vda. */
  readonly target: string;
  /** Device alias, e.g. ua-rootdisk (KubeVirt: ua-<disk name>). */
  readonly alias?: string;
  /** Top first; a flat disk has one layer. */
  readonly chain: readonly ChainLayer[];
}

/** Which disk of a domain: KubeVirt disk name (alias ua-<name>) or guest target. */
export type DiskRef = { readonly name: string } | { readonly target: string };

/** Keep the chain from this image down. Absent = pull everything (flatten). */
export type BaseRef = { readonly position: number } | { readonly path: string };

export interface BlockJobInfo {
  /** e.g. "Block Pull", "Block Copy", "Active Block Commit". */
  readonly type: string;
  /** Bytes done; only cur/end is meaningful as a ratio. */
  readonly cur: number;
  readonly end: number;
  /** Bytes per second; 0 = unlimited. */
  readonly bandwidth: number;
  /** QMP only: the job is paused (block-job-pause). */
  readonly paused?: boolean;
}

export interface StartPullOptions {
  readonly base?: BaseRef;
  /** Bytes per second; absent or 0 = unlimited. */
  readonly bandwidth?: number;
}

export type BlockJobEventKind = 'completed' | 'failed' | 'canceled' | 'ready';

export interface BlockJobEvent {
  readonly domain: string;
  readonly target: string;
  readonly kind: BlockJobEventKind;
  readonly jobType?: string;
}

export interface EventSubscription {
  stop(): void;
}

export interface WatchEventsOptions {
  /**
   * The disks (targets) the caller cares about. A driver that polls while its event stream is down
   * then looks at these disks only; events for other disks may still be delivered.
   */
  readonly targets?: readonly string[];
}

/** The operations the controller needs from a hypervisor, one disk at a time. */
export interface BlockJobDriver {
  getDisk(domain: string, disk: DiskRef): Promise<DiskInfo>;
  startPull(domain: string, target: string, options: StartPullOptions): Promise<void>;
  /** null = no block job on that disk. */
  getJob(domain: string, target: string): Promise<BlockJobInfo | null>;
  setBandwidth(domain: string, target: string, bytesPerSecond: number): Promise<void>;
  /** Asynchronous abort: returns once requested; data already streamed stays in the top image. */
  abort(domain: string, target: string): Promise<void>;
  /** Completion events; callers still confirm with getJob + getDisk (see isPullComplete). */
  watchEvents(domain: string, onEvent: (event: BlockJobEvent) => void, options?: WatchEventsOptions): EventSubscription;
}
