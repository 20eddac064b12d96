/**
 * The hypervisor model the controller sees: a disk, its backing chain and its block job.
 * Both drivers speak these types and nothing else: libvirt via virsh (virsh-driver.ts, the operator's)
 * and QEMU via QMP (test/e2e/blockjob/qmp-driver.ts, test tooling that holds the contract to a second
 * implementation).
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
  /**
   * The image's external data file (libvirt <dataStore>, a qcow2 data-file: KubeVirt's changed
   * block tracking keeps the raw disk there and the dirty bitmaps in the qcow2). Guest data
   * written into this image lands in the data file.
   */
  readonly dataFile?: { readonly path: string; readonly format: string };
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

/** What an action (start, bandwidth change, abort) may be given: a signal that ends its command. */
export interface ActionOptions {
  /** Aborted: the command is ended and the call rejects with the signal's reason. */
  readonly signal?: AbortSignal;
}

export interface StartPullOptions extends ActionOptions {
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
  /** Why a job failed, when the hypervisor said (QEMU's BLOCK_JOB_COMPLETED error, e.g. "No space left on device"). */
  readonly error?: string;
}

/** What a pre-flight space check looks at: the disk as observed and the base the pull stops at. */
export interface SpaceRequest {
  readonly disk: DiskInfo;
  /** The base image (kept); absent = full pull. */
  readonly basePath?: string;
  /** Also measure the bytes used under the mount point of the active image (for an ephemeral-storage limit). */
  readonly measureUsage: boolean;
}

export type SpaceInfo =
  | {
      readonly kind: 'measured';
      /** The active image, the file the pull writes into. */
      readonly topPath: string;
      /**
       * Upper bound of the bytes the pull writes into the active image: the bytes allocated on
       * storage by every layer being pulled (libvirt's block.N.physical; the layer's capacity
       * when libvirt does not report it), summed. Data already in the active image is counted too.
       */
      readonly pullBytes: number;
      /** Bytes free for an unprivileged writer on the filesystem of the active image (`stat -f`: %a x %S). */
      readonly availableBytes: number;
      /** Size of that filesystem (`stat -f`: %b x %S). */
      readonly totalBytes: number;
      /** Mount point holding the active image and the bytes used under it (`du -s -B1 -x`), when asked. */
      readonly usage?: { readonly mountPoint: string; readonly usedBytes: number };
    }
  /** Not measurable (e.g. the active image is a block device): no pre-flight limit applies. */
  | { readonly kind: 'unknown'; readonly reason: string };

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
  setBandwidth(domain: string, target: string, bytesPerSecond: number, options?: ActionOptions): Promise<void>;
  /** Asynchronous abort: returns once requested; data already streamed stays in the top image. */
  abort(domain: string, target: string, options?: ActionOptions): Promise<void>;
  /** Pre-flight: the space a pull would use and the space there is (optional: QMP has none). */
  getSpace?(domain: string, request: SpaceRequest): Promise<SpaceInfo>;
  /** Completion events; callers still confirm with getJob + getDisk (see isPullComplete). */
  watchEvents(domain: string, onEvent: (event: BlockJobEvent) => void, options?: WatchEventsOptions): EventSubscription;
}
