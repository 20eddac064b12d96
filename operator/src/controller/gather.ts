/**
 * The gatherer: everything decide() judges, collected before anything is judged (cert-manager's
 * gatherer -> Input -> policy chain). One look builds one complete Observation:
 * - the BlockPull's VMI and launcher pod from the informer caches (indexed: no scan);
 * - the hypervisor's view through the ObserveGate (a hanging launcher delays no one else);
 * - then what decide() says it lacks (Decider.factsWanted, the same chain of steps, pure): QEMU's
 *   reason when our job has just ended short of its goal, and the space figures when a start may
 *   follow (measured again only when their backoff has run out);
 * - last, synchronously, the slots (withSlots): counted right before decide() so that a start
 *   takes its slot with no await in between.
 * The driver that made the look travels with it: the action of this pass uses it and no other.
 */
import { FINALIZER, isTerminal, type BlockPull } from '../api/types.ts';
import { objectKey, splitKey } from '../api/object-key.ts';
import { HypervisorError, isHypervisorError, type HypervisorErrorCode } from '../hypervisor/errors.ts';
import type { BlockJobDriver } from '../hypervisor/types.ts';
import { describeApiError } from '../kube/client.ts';
import type { Logger } from '../log.ts';
import { chainOperations, type ChainOperation } from '../kubevirt/chain-operations.ts';
import {
  ephemeralStorageLimit,
  locateLauncher,
  orphanedLauncher,
  vmiHasDisk,
  VmiSchema,
  type LauncherLookup,
  type LauncherPod,
} from '../kubevirt/launcher.ts';
import { LauncherUnavailableError, type DriverProvider } from '../kubevirt/transport.ts';
import type { BlockPulls, CacheReader } from './blockpulls.ts';
import {
  backoffMs,
  mayRunOurJob,
  recordedJobState,
  spaceShortage,
  type Decider,
  type HypervisorObservation,
  type Observation,
  type SlotUsage,
  type SpaceObservation,
} from './decide.ts';
import { OPERATION_BY_VM, POD_BY_VMI_UID } from './indexes.ts';
import type { ObserveGate } from './observe-gate.ts';
import { jobKey, type PullMemory } from './pull-memory.ts';
import type { SlotLedger } from './slots.ts';

/** How long a look that sees our job gone short of its goal waits for the failure's reason. */
const JOB_ERROR_WAIT_MS = 1_000;

/** What a HypervisorError during the look means for decide(); any other code: unreachable. */
const LOOK_ERROR_KIND: Partial<Readonly<Record<HypervisorErrorCode, 'domainNotFound' | 'diskNotFound'>>> = {
  DomainNotFound: 'domainNotFound',
  DiskNotFound: 'diskNotFound',
};

/** A look: the observation (its slots counted by withSlots), and the driver that made it. */
export interface Gathered {
  readonly obs: Observation;
  /** Undefined when libvirt was not reached: nothing is done through a launcher that did not answer. */
  readonly driver?: BlockJobDriver;
  /**
   * The driver whose look got no answer within the budget (driver is then undefined): nothing is
   * done through it this pass, but the job's event subscription on it is kept (see reconcile.ts).
   */
  readonly waitingOn?: BlockJobDriver;
  /** The launcher is looked for by polling (the transport found no way in; no watch event says when). */
  readonly polled: boolean;
}

export interface GathererOptions {
  readonly vmis: CacheReader;
  readonly pods: CacheReader & Required<Pick<CacheReader, 'byIndex'>>;
  readonly migrations?: CacheReader;
  /**
   * KubeVirt's VirtualMachineSnapshots and VirtualMachineBackups, indexed by OPERATION_BY_VM;
   * absent (or never started: empty) where their CRDs are not served (KubeVirt 1.7).
   */
  readonly snapshots?: CacheReader & Required<Pick<CacheReader, 'byIndex'>>;
  readonly backups?: CacheReader & Required<Pick<CacheReader, 'byIndex'>>;
  readonly drivers: DriverProvider;
  readonly gate: ObserveGate<HypervisorObservation>;
  readonly blockPulls: BlockPulls;
  readonly memory: PullMemory;
  readonly slots: SlotLedger;
  readonly decider: Decider;
  readonly now: () => Date;
}

export class Gatherer {
  readonly #o: GathererOptions;

  constructor(options: GathererOptions) {
    this.#o = options;
  }

  /** One complete look at `bp` (slots apart: withSlots). */
  async gather(bp: BlockPull, log: Logger): Promise<Gathered> {
    const looked = await this.#look(bp, log);
    // Nothing more can be wanted without libvirt's answer, or while a job runs on the disk (both
    // facts are about an idle disk: a start to come, a job just ended).
    const h = looked.obs.hypervisor;
    if (looked.driver === undefined || h?.kind !== 'ok' || h.job !== null) return looked;
    const wanted = this.#o.decider.factsWanted(this.withSlots(looked.obs));
    let obs = looked.obs;
    const key = objectKey(bp);
    if (wanted.jobError) {
      // QEMU's reason may trail libvirt's event a little, or have arrived meanwhile (then at once).
      const error = await this.#o.memory.jobError(key, JOB_ERROR_WAIT_MS);
      if (error !== undefined) obs = { ...obs, lastJobError: error };
    }
    if (wanted.space !== undefined)
      obs = { ...obs, ...(await this.#space(key, bp, obs, wanted.space.basePath, looked.driver, log)) };
    return { ...looked, obs };
  }

  /**
   * The observation with the slots counted now, from the cache, our own writes and our ledger.
   * Synchronous: the reconciler decides and takes a start's slot right after, with no await.
   */
  withSlots(obs: Observation): Observation {
    const launcher = obs.launcher;
    if (launcher?.kind !== 'found' || !(obs.bp.metadata.finalizers ?? []).includes(FINALIZER)) return obs;
    return { ...obs, slots: this.#slotUsage(objectKey(obs.bp), obs.bp.metadata.namespace, launcher.launcher.node) };
  }

  #slotUsage(key: string, namespace: string, node: string): SlotUsage {
    const running = this.#o.blockPulls.runningOthers(key, this.#o.slots.entries());
    let runningOnNode = 0;
    let runningInNamespace = 0;
    for (const [k, n] of running) {
      if (n === node) runningOnNode++;
      if (splitKey(k).namespace === namespace) runningInNamespace++;
    }
    const wanting = this.#o.blockPulls.namespacesWaitingForSlot();
    wanting.add(namespace);
    return { running: running.size, runningOnNode, runningInNamespace, namespacesWanting: wanting.size };
  }

  /** The caches and the hypervisor's view. */
  async #look(bp: BlockPull, log: Logger): Promise<Gathered> {
    const key = objectKey(bp);
    const memory = this.#o.memory.peek(key);
    const base = {
      now: this.#o.now(),
      bp,
      // Our own copy (maybe newer than the cache's) replaces the cached one.
      diskHolder: this.#o.blockPulls.diskHolder(bp),
      slots: NO_SLOTS_USED,
      ...(memory?.lastJobError !== undefined ? { lastJobError: memory.lastJobError } : {}),
      ...(memory?.sample !== undefined ? { previousSample: memory.sample } : {}),
    };
    const deleting = bp.metadata.deletionTimestamp !== undefined && bp.metadata.deletionTimestamp !== null;
    if (bp.status?.phase === 'Completed' && !deleting) return this.#completed(bp, base, log);
    if (isTerminal(bp.status?.phase) && !deleting) return { obs: base, polled: false };
    // The VMI from the cache, read once for the launcher and its disks.
    const rawVmi = this.#o.vmis.get(bp.metadata.namespace, bp.spec.vmiName);
    const launcher = this.#launcher(bp, rawVmi, deleting);
    // Without our finalizer decide() adds it (the launcher is found) or lets go (deleting): nothing to read from libvirt yet.
    if (launcher.kind !== 'found' || !(bp.metadata.finalizers ?? []).includes(FINALIZER))
      return { obs: { ...base, launcher }, polled: false };
    const launcherPod = launcher.launcher;
    // A migration is requested and no job of ours can run: decide() waits for it without libvirt.
    if (launcher.migration !== undefined && !mayRunOurJob(recordedJobState(bp.status)) && !bp.spec.paused)
      return { obs: { ...base, launcher }, polled: false };
    const missing = this.#diskMissing(bp, rawVmi);
    if (missing !== undefined) return { obs: { ...base, launcher, hypervisor: missing }, polled: false };

    let driver: BlockJobDriver;
    try {
      driver = await this.#o.drivers.driverFor(launcherPod);
    } catch (err) {
      if (!(err instanceof LauncherUnavailableError)) throw err;
      return { obs: { ...base, launcher: { kind: 'launcherNotFound', message: err.message } }, polled: true };
    }
    const looked = await this.#o.gate.observe(driver, `pod ${bp.metadata.namespace}/${launcherPod.pod}`, key, () =>
      this.#hypervisor(bp, launcherPod, driver, log),
    );
    const record = this.#o.memory.of(key);
    if (looked.kind === 'waiting') {
      const misses = record.unanswered;
      const unansweredLooks = { count: (misses?.count ?? 0) + 1, sinceMs: misses?.sinceMs ?? base.now.getTime() };
      record.unanswered = unansweredLooks;
      log.debug(
        { launcherPod: launcherPod.pod, detail: looked.detail, unansweredLooks: unansweredLooks.count },
        'not waiting on libvirt',
      );
      return {
        obs: { ...base, launcher, hypervisor: { kind: 'unreachable', message: looked.message }, unansweredLooks },
        waitingOn: driver,
        polled: false,
      };
    }
    delete record.unanswered;
    const hypervisor = looked.value;
    const operations = this.#chainOperations(bp, hypervisor);
    return {
      obs: {
        ...base,
        launcher,
        hypervisor,
        jobStartedHere: this.#jobStartedHere(key, launcherPod, hypervisor),
        ...(operations.length > 0 ? { chainOperations: operations } : {}),
      },
      driver,
      polled: false,
    };
  }

  /**
   * A Completed BlockPull: its VMI's launcher from the caches (no API request), and libvirt only
   * when that pod is neither the one the pull completed on (status.launcher.pod) nor the one the
   * chain was last read on (status.backingChain.readOn): one getDisk per launcher pod change, none
   * for the fleet of Completed BlockPulls whose VMI stays where it was. A migration under way is
   * waited for (the target pod's chain is read once it runs there).
   */
  async #completed(bp: BlockPull, base: Observation, log: Logger): Promise<Gathered> {
    const rawVmi = this.#o.vmis.get(bp.metadata.namespace, bp.spec.vmiName);
    const launcher = this.#launcher(bp, rawVmi, false);
    const st = bp.status;
    if (
      launcher.kind !== 'found' ||
      launcher.migration !== undefined ||
      st?.launcher?.pod === undefined ||
      launcher.launcher.pod === st.launcher.pod ||
      launcher.launcher.pod === st.backingChain?.readOn?.pod
    )
      return { obs: { ...base, launcher }, polled: false };
    const launcherPod = launcher.launcher;
    const key = objectKey(bp);
    let driver: BlockJobDriver;
    try {
      driver = await this.#o.drivers.driverFor(launcherPod);
    } catch (err) {
      if (!(err instanceof LauncherUnavailableError)) throw err;
      return { obs: { ...base, launcher, hypervisor: { kind: 'unreachable', message: err.message } }, polled: true };
    }
    const looked = await this.#o.gate.observe(driver, `pod ${bp.metadata.namespace}/${launcherPod.pod}`, key, () =>
      this.#chainOnly(bp, launcherPod, driver, log),
    );
    const hypervisor: HypervisorObservation =
      looked.kind === 'waiting' ? { kind: 'unreachable', message: looked.message } : looked.value;
    return { obs: { ...base, launcher, hypervisor }, polled: false };
  }

  /** The disk's chain alone (a Completed BlockPull runs no job: its job is not asked for, and reported as none). */
  async #chainOnly(
    bp: BlockPull,
    launcherPod: LauncherPod,
    driver: BlockJobDriver,
    log: Logger,
  ): Promise<HypervisorObservation> {
    try {
      const disk = await driver.getDisk(launcherPod.domain, { name: bp.spec.disk });
      return { kind: 'ok', disk, job: null };
    } catch (err) {
      if (err instanceof HypervisorError) {
        log.debug({ code: err.code, error: err.message }, 'hypervisor observation failed');
        return { kind: LOOK_ERROR_KIND[err.code] ?? 'unreachable', message: err.message };
      }
      return { kind: 'unreachable', message: describeApiError(err) };
    }
  }

  /**
   * KubeVirt's operations on the VM's disks under way: the VMI's condition, the VM's snapshots
   * and backups from their caches (by the VM's index), and the chain libvirt showed.
   */
  #chainOperations(bp: BlockPull, hypervisor: HypervisorObservation): ChainOperation[] {
    const ns = bp.metadata.namespace;
    const vmi = VmiSchema.safeParse(this.#o.vmis.get(ns, bp.spec.vmiName));
    if (!vmi.success) return [];
    const vm = `${ns}/${bp.spec.vmiName}`;
    return chainOperations({
      vmi: vmi.data,
      disk: bp.spec.disk,
      ...(hypervisor.kind === 'ok' ? { chain: hypervisor.disk.chain } : {}),
      snapshots: this.#o.snapshots?.byIndex(OPERATION_BY_VM, vm) ?? [],
      backups: this.#o.backups?.byIndex(OPERATION_BY_VM, vm) ?? [],
    });
  }

  /**
   * The VMI's launcher. Being deleted: a launcher pod that terminates still runs our job until
   * its containers stop, so it is looked at for the abort (decide() starts nothing through it).
   */
  #launcher(bp: BlockPull, rawVmi: unknown, deleting: boolean): LauncherLookup {
    const ns = bp.metadata.namespace;
    const vmiUid = (rawVmi as { metadata?: { uid?: unknown } } | undefined)?.metadata?.uid;
    // Only the pods claiming this VMI (indexed by its uid), not every pod of the namespace.
    const pods = typeof vmiUid === 'string' ? this.#o.pods.byIndex(POD_BY_VMI_UID, `${ns}/${vmiUid}`) : [];
    const lookup = locateLauncher(ns, bp.spec.vmiName, rawVmi, pods, this.#o.migrations?.list(ns) ?? [], {
      terminating: deleting,
    });
    // Being deleted with the VMI already gone: the pod our job ran in may still run it.
    const recorded = bp.status?.launcher?.pod;
    if (deleting && lookup.kind === 'vmiNotFound' && recorded !== undefined)
      return orphanedLauncher(ns, bp.spec.vmiName, this.#o.pods.get(ns, recorded)) ?? lookup;
    return lookup;
  }

  /** The VMI has no disk of that name (said by its spec, before libvirt is asked). */
  #diskMissing(bp: BlockPull, rawVmi: unknown): HypervisorObservation | undefined {
    const ns = bp.metadata.namespace;
    const vmi = VmiSchema.safeParse(rawVmi);
    if (!vmi.success || vmiHasDisk(vmi.data, bp.spec.disk) !== false) return undefined;
    const names = vmi.data.spec?.domain?.devices?.disks?.map((d) => d.name).join(', ') ?? '';
    return {
      kind: 'diskNotFound',
      message: `VMI ${ns}/${bp.spec.vmiName} has no disk ${bp.spec.disk} (disks: ${names})`,
    };
  }

  /** Whether the job on the disk is one this process started (a look at an idle disk ends that memory). */
  #jobStartedHere(key: string, launcherPod: LauncherPod, hypervisor: HypervisorObservation): boolean {
    if (hypervisor.kind !== 'ok') return false;
    const record = this.#o.memory.of(key);
    const jk = jobKey(launcherPod.pod, launcherPod.domain, hypervisor.disk.target);
    if (hypervisor.job === null) {
      // No job on the disk: whatever this process started or adopted there has ended.
      if (record.started === jk) delete record.started;
      if (record.adopted === jk) delete record.adopted;
    }
    return record.started === jk;
  }

  async #hypervisor(
    bp: BlockPull,
    launcherPod: LauncherPod,
    driver: BlockJobDriver,
    log: Logger,
  ): Promise<HypervisorObservation> {
    const st = bp.status;
    const domain = launcherPod.domain;
    try {
      // While our job runs the chain does not change: one `virsh blockjob` per poll (on the pod
      // it runs in: after a migration the chain is read anew).
      const target = st?.launcher?.target;
      const current = st?.backingChain?.current;
      if (
        st?.phase === 'Running' &&
        st.launcher?.domain === domain &&
        st.launcher.pod === launcherPod.pod &&
        target !== undefined &&
        current !== undefined
      ) {
        const job = await driver.getJob(domain, target);
        const observedAt = this.#o.now();
        if (job !== null)
          return { kind: 'ok', disk: { target, chain: current.map((l) => ({ ...l })) }, job, observedAt };
        // Gone: the chain read after it is final (no second `virsh blockjob` at the job's end).
        const disk = await driver.getDisk(domain, { name: bp.spec.disk });
        if (disk.target === target) return { kind: 'ok', disk, job: null, observedAt: this.#o.now() };
      }
      const disk = await driver.getDisk(domain, { name: bp.spec.disk });
      const job = await driver.getJob(domain, disk.target);
      return { kind: 'ok', disk, job, observedAt: this.#o.now() };
    } catch (err) {
      if (err instanceof HypervisorError) {
        log.debug({ code: err.code, error: err.message }, 'hypervisor observation failed');
        return { kind: LOOK_ERROR_KIND[err.code] ?? 'unreachable', message: err.message };
      }
      return { kind: 'unreachable', message: describeApiError(err) };
    }
  }

  /**
   * The pre-flight's facts. While short, the space is measured again only when its backoff has
   * run out (5 s, 10 s, ... 5 min); a look woken meanwhile (e.g. by our own status write) reuses
   * the last measurement. The backoff's count is kept while the figures stay short.
   */
  async #space(
    key: string,
    bp: BlockPull,
    obs: Observation,
    basePath: string | undefined,
    driver: BlockJobDriver,
    log: Logger,
  ): Promise<Pick<Observation, 'space' | 'spaceRecheckMs'>> {
    const record = this.#o.memory.of(key);
    const nowMs = this.#o.now().getTime();
    const last = record.space;
    const limits = this.#spaceLimits(bp, obs);
    if (
      last !== undefined &&
      bp.status?.reason === 'InsufficientSpace' &&
      nowMs < last.nextAtMs &&
      last.limits === limits
    ) {
      return { space: last.observation, spaceRecheckMs: last.nextAtMs - nowMs };
    }
    const shortChecks = (last?.shortChecks ?? 0) + 1;
    const recheck = backoffMs(shortChecks, this.#o.decider.settings.waitRequeueMs);
    const observation = await this.#measureSpace(bp, obs, basePath, driver, log);
    const { spaceMarginBytes, spaceMarginPercent } = this.#o.decider.settings;
    if (spaceShortage(observation, spaceMarginBytes, spaceMarginPercent) !== undefined)
      record.space = { observation, shortChecks, nextAtMs: nowMs + recheck, limits };
    else delete record.space;
    return { space: observation, spaceRecheckMs: recheck };
  }

  /** The launcher pod and its ephemeral-storage limit: a measurement is reused only while they stay. */
  #spaceLimits(bp: BlockPull, obs: Observation): string {
    const pod = obs.launcher?.kind === 'found' ? obs.launcher.launcher.pod : '';
    return `${pod}:${ephemeralStorageLimit(this.#o.pods.get(bp.metadata.namespace, pod)) ?? 'none'}`;
  }

  /**
   * The pre-flight measurement through the driver that made the look (inside the compute
   * container). Unreachable propagates (the work queue retries with backoff); a tool that fails
   * or is missing makes the space unknown: the start is not held back, and the log says why.
   */
  async #measureSpace(
    bp: BlockPull,
    obs: Observation,
    basePath: string | undefined,
    driver: BlockJobDriver,
    log: Logger,
  ): Promise<SpaceObservation> {
    const hypervisor = obs.hypervisor;
    const launcherPod = obs.launcher?.kind === 'found' ? obs.launcher.launcher : undefined;
    if (hypervisor?.kind !== 'ok' || launcherPod === undefined)
      return { kind: 'unknown', reason: 'the disk was not observed' };
    if (driver.getSpace === undefined) return { kind: 'unknown', reason: 'the driver cannot measure space' };
    const limitBytes = ephemeralStorageLimit(this.#o.pods.get(bp.metadata.namespace, launcherPod.pod));
    try {
      const info = await driver.getSpace(launcherPod.domain, {
        disk: hypervisor.disk,
        ...(basePath !== undefined ? { basePath } : {}),
        measureUsage: limitBytes !== undefined,
      });
      if (info.kind === 'unknown') {
        log.info({ reason: info.reason }, 'pre-flight space check not applicable');
        return info;
      }
      log.debug(
        {
          topPath: info.topPath,
          pullBytes: info.pullBytes,
          availableBytes: info.availableBytes,
          totalBytes: info.totalBytes,
          limitBytes,
          usage: info.usage,
        },
        'pre-flight space check',
      );
      return {
        kind: 'measured',
        topPath: info.topPath,
        pullBytes: info.pullBytes,
        availableBytes: info.availableBytes,
        totalBytes: info.totalBytes,
        ...(limitBytes !== undefined && info.usage !== undefined
          ? {
              ephemeral: {
                pod: launcherPod.pod,
                limitBytes,
                usedBytes: info.usage.usedBytes,
                mountPoint: info.usage.mountPoint,
              },
            }
          : {}),
      };
    } catch (err) {
      if (isHypervisorError(err, 'Unreachable')) throw err;
      log.warn({ error: describeApiError(err) }, 'pre-flight space check failed; starting without it');
      return { kind: 'unknown', reason: describeApiError(err) };
    }
  }
}

/** The slots of a look that counts none (no launcher found, or no finalizer yet). */
const NO_SLOTS_USED: SlotUsage = { running: 0, runningOnNode: 0, runningInNamespace: 0, namespacesWanting: 1 };
