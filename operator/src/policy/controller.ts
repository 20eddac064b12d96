/**
 * The policy controller: informers over both policy kinds, VMIs, BlockPulls and (for the
 * cluster kind's namespaceSelector) namespaces feed a deduplicating work queue; workers look at
 * one policy at a time: gather (caches) -> decide (pure) -> act (API writes) -> write the
 * status, at most once every 2 s per policy and only when it changed. New VMIs are picked up
 * from watch events, never by polling; the only timed looks are the window's next change and a
 * TTL running out. It knows the BlockPull controller only through the API server.
 */
import { isDeepStrictEqual } from 'node:util';
import type { KubernetesObject } from '@kubernetes/client-node';
import {
  CLUSTER_POLICY_KIND,
  CLUSTER_POLICY_REF,
  POLICY_KIND,
  POLICY_REF,
  parsePolicy,
  type Policy,
  type PolicyKind,
} from '../api/policy-types.ts';
import { BLOCKPULL_REF } from '../api/types.ts';
import { objectKey, splitKey } from '../api/object-key.ts';
import type { KubeClients } from '../kube/client.ts';
import { describeApiError, isConflict, isNotFound } from '../kube/client.ts';
import type { EventRecorder, InvolvedObject } from '../kube/events.ts';
import {
  customResourceSource,
  namespaceSource,
  startAndSync,
  stripMetadata,
  WatchdogInformer,
} from '../kube/informer.ts';
import type { OperatorMetrics } from '../kube/metrics.ts';
import { runWorkers, WorkQueue } from '../kube/workqueue.ts';
import { VMI_REF } from '../kubevirt/launcher.ts';
import { errorMessage, type Logger } from '../log.ts';
import { act, writeStatus } from './act.ts';
import { BP_BY_CONTROLLER, controllerUid, pullIndexes, slimPullForPolicy, slimVmiForPolicy } from './cache.ts';
import { decidePolicy } from './decide.ts';
import { gatherPolicy, policyKey } from './gather.ts';

/** At most one status write per policy in this interval. */
export const STATUS_WRITE_INTERVAL_MS = 2_000;

export interface PolicyControllerOptions {
  readonly clients: KubeClients;
  readonly logger: Logger;
  readonly metrics?: OperatorMetrics;
  readonly events?: EventRecorder;
  readonly workers?: number;
  /** Watch only this namespace (undefined: all); cluster policies then act in it alone. */
  readonly namespace?: string;
  /** For tests: the clock. */
  readonly now?: () => Date;
}

export class PolicyController {
  readonly #o: PolicyControllerOptions;
  readonly #log: Logger;
  readonly #now: () => Date;
  readonly queue: WorkQueue<string>;
  readonly policies: WatchdogInformer<KubernetesObject>;
  readonly clusterPolicies: WatchdogInformer<KubernetesObject>;
  readonly vmis: WatchdogInformer<KubernetesObject>;
  readonly pulls: WatchdogInformer<KubernetesObject>;
  readonly namespaces: WatchdogInformer<KubernetesObject>;
  /** Policy key -> when its status was last written (ms, performance clock). */
  readonly #lastWrite = new Map<string, number>();
  /** Policy key -> the parse error last logged (logged once per new error). */
  readonly #badPolicies = new Map<string, string>();

  constructor(o: PolicyControllerOptions) {
    this.#o = o;
    this.#log = o.logger.child({ component: 'policy-controller' });
    this.#now = o.now ?? (() => new Date());
    this.queue = new WorkQueue<string>({
      name: 'policy',
      ...(o.metrics ? { hooks: o.metrics.workQueueHooks('policy') } : {}),
    });
    const common = { kc: o.clients.kc, logger: o.logger, ...(o.metrics ? { metrics: o.metrics } : {}) };
    this.policies = new WatchdogInformer({
      ...common,
      resource: 'blockpullpolicies',
      source: customResourceSource(o.clients.custom, POLICY_REF, o.namespace),
      transform: stripMetadata,
    });
    this.clusterPolicies = new WatchdogInformer({
      ...common,
      resource: 'clusterblockpullpolicies',
      source: customResourceSource(o.clients.custom, CLUSTER_POLICY_REF),
      transform: stripMetadata,
    });
    // Own caches, apart from the BlockPull controller's (named so in logs and metrics).
    this.vmis = new WatchdogInformer({
      ...common,
      resource: 'policy-virtualmachineinstances',
      source: customResourceSource(o.clients.custom, VMI_REF, o.namespace),
      transform: slimVmiForPolicy,
    });
    this.pulls = new WatchdogInformer({
      ...common,
      resource: 'policy-blockpulls',
      source: customResourceSource(o.clients.custom, BLOCKPULL_REF, o.namespace),
      transform: slimPullForPolicy,
    });
    this.namespaces = new WatchdogInformer({
      ...common,
      resource: 'namespaces',
      source: namespaceSource(o.clients.core),
      transform: (ns) => ({
        metadata: {
          name: ns.metadata?.name,
          resourceVersion: ns.metadata?.resourceVersion,
          labels: ns.metadata?.labels,
        },
      }),
    });
    for (const [name, fn] of Object.entries(pullIndexes)) this.pulls.addIndex(name, fn);
    this.#wakeOnChanges();
  }

  /** All policies of both kinds that parse (one that does not is logged once and left alone). */
  #allPolicies(): Policy[] {
    const out: Policy[] = [];
    const read = (kind: PolicyKind, inf: WatchdogInformer<KubernetesObject>): void => {
      for (const obj of inf.list()) {
        const p = this.#parse(kind, obj);
        if (p !== undefined) out.push(p);
      }
    };
    read(POLICY_KIND, this.policies);
    read(CLUSTER_POLICY_KIND, this.clusterPolicies);
    return out;
  }

  #parse(kind: PolicyKind, obj: unknown): Policy | undefined {
    const key = `${kind}/${objectKey(obj as KubernetesObject)}`;
    try {
      const p = parsePolicy(kind, obj);
      this.#badPolicies.delete(key);
      return p;
    } catch (err) {
      const msg = errorMessage(err);
      if (this.#badPolicies.get(key) !== msg) {
        this.#badPolicies.set(key, msg);
        this.#log.error({ policy: key, error: msg }, 'policy does not parse; left alone');
      }
      return undefined;
    }
  }

  /** Which policies an event wakes: those that may select in the object's namespace. */
  #wakeOnChanges(): void {
    const wakeNamespace = (ns: string | undefined): void => {
      if (ns === undefined) return;
      for (const p of this.policies.list(ns)) this.queue.add(`${POLICY_KIND}/${objectKey(p)}`);
      for (const p of this.clusterPolicies.list()) this.queue.add(`${CLUSTER_POLICY_KIND}/${objectKey(p)}`);
    };
    this.policies.addEventHandler({
      add: (p) => this.queue.add(`${POLICY_KIND}/${objectKey(p)}`),
      update: (p) => this.queue.add(`${POLICY_KIND}/${objectKey(p)}`),
      // Its BlockPulls go (also where no garbage collector runs); another policy may take the disks.
      delete: (p) => {
        this.#orphansOf(p);
        wakeNamespace(p.metadata?.namespace);
      },
    });
    this.clusterPolicies.addEventHandler({
      add: (p) => this.queue.add(`${CLUSTER_POLICY_KIND}/${objectKey(p)}`),
      update: (p) => this.queue.add(`${CLUSTER_POLICY_KIND}/${objectKey(p)}`),
      delete: (p) => {
        this.#orphansOf(p);
        for (const x of this.#allPolicies()) this.queue.add(policyKey(x));
      },
    });
    const byNamespace = (obj: KubernetesObject): void => wakeNamespace(obj.metadata?.namespace);
    this.vmis.addEventHandler({ add: byNamespace, update: byNamespace, delete: byNamespace });
    // A BlockPull: its owner policy; a claim that is not a policy's wakes the policies of its namespace.
    const byPull = (obj: KubernetesObject): void => {
      const owner = controllerUid(obj);
      // By uid over the cached objects (no parse: BlockPull events come every few seconds per pull).
      const key = owner !== undefined ? this.#policyKeyByUid(owner) : undefined;
      if (key !== undefined) this.queue.add(key);
      else {
        if (policyOwner(obj) !== undefined) this.queue.add(`${ORPHAN}/${objectKey(obj)}`);
        wakeNamespace(obj.metadata?.namespace);
      }
    };
    this.pulls.addEventHandler({
      add: byPull,
      update: byPull,
      delete: (obj) => wakeNamespace(obj.metadata?.namespace),
    });
    const byNs = (): void => {
      for (const p of this.clusterPolicies.list()) this.queue.add(`${CLUSTER_POLICY_KIND}/${objectKey(p)}`);
    };
    this.namespaces.addEventHandler({ add: byNs, update: byNs, delete: byNs });
  }

  #policyKeyByUid(uid: string): string | undefined {
    for (const [kind, inf] of [
      [POLICY_KIND, this.policies],
      [CLUSTER_POLICY_KIND, this.clusterPolicies],
    ] as const) {
      const p = inf.list().find((x) => x.metadata?.uid === uid);
      if (p !== undefined) return `${kind}/${objectKey(p)}`;
    }
    return undefined;
  }

  #orphansOf(policy: KubernetesObject): void {
    const uid = policy.metadata?.uid;
    if (uid === undefined) return;
    for (const b of this.pulls.byIndex(BP_BY_CONTROLLER, uid)) this.queue.add(`${ORPHAN}/${objectKey(b)}`);
  }

  /**
   * A BlockPull whose controller owner is a policy that is not in the cache: deleted when the
   * API server confirms the policy is gone (what the garbage collector does, for clusters or
   * moments without one). The GET guards against a cache that has not seen a new policy yet.
   */
  async #reconcileOrphan(key: string): Promise<void> {
    const { namespace, name } = splitKey(key);
    const obj = this.pulls.get(namespace, name);
    const owner = obj !== undefined ? policyOwner(obj) : undefined;
    if (obj === undefined || owner === undefined) return;
    const { custom } = this.#o.clients;
    let live: unknown;
    try {
      live =
        owner.kind === POLICY_KIND
          ? await custom.getNamespacedCustomObject({ ...POLICY_REF, namespace, name: owner.name })
          : await custom.getClusterCustomObject({ ...CLUSTER_POLICY_REF, name: owner.name });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    if ((live as KubernetesObject | undefined)?.metadata?.uid === owner.uid) return;
    try {
      await custom.deleteNamespacedCustomObject({
        ...BLOCKPULL_REF,
        namespace,
        name,
        body: { preconditions: { uid: obj.metadata?.uid ?? '' } },
      });
      this.#log.info(
        { blockPull: key, policy: `${owner.kind}/${owner.name}` },
        'deleted a BlockPull of a deleted policy',
      );
    } catch (err) {
      if (!isNotFound(err) && !isConflict(err)) throw err;
    }
  }

  #informers(): WatchdogInformer<KubernetesObject>[] {
    return [this.policies, this.clusterPolicies, this.vmis, this.pulls, this.namespaces];
  }

  synced(): boolean {
    return this.#informers().every((i) => i.hasSynced());
  }

  /** Look at one policy ("Kind/namespace/name" or "Kind/name"); returns when to look again (ms) or null. */
  async reconcile(key: string): Promise<number | null> {
    const slash = key.indexOf('/');
    if (key.slice(0, slash) === ORPHAN) {
      await this.#reconcileOrphan(key.slice(slash + 1));
      return null;
    }
    const kind = key.slice(0, slash) as PolicyKind;
    const { namespace, name } = splitKey(key.slice(slash + 1));
    const inf = kind === POLICY_KIND ? this.policies : this.clusterPolicies;
    const obj = inf.get(namespace === '' ? undefined : namespace, name);
    if (obj === undefined) {
      // Deleted: its BlockPulls go with it (ownerReferences; the garbage collector deletes them).
      this.#lastWrite.delete(key);
      return null;
    }
    const policy = this.#parse(kind, obj);
    if (policy === undefined || policy.metadata.deletionTimestamp !== undefined) return null;
    const now = this.#now();
    const facts = gatherPolicy(
      policy,
      {
        policies: () => this.#allPolicies(),
        vmis: this.vmis,
        pulls: this.pulls,
        namespaces: () => {
          const m = new Map<string, Record<string, string>>();
          for (const n of this.namespaces.list()) m.set(n.metadata?.name ?? '', n.metadata?.labels ?? {});
          return m;
        },
        ...(this.#o.namespace !== undefined ? { watchNamespace: this.#o.namespace } : {}),
      },
      now,
    );
    const decision = decidePolicy(facts);
    const log = this.#log.child({ policy: key });
    const result = await act(this.#o.clients, policy, decision, log);
    if (result.created + result.changed + result.removed > 0)
      log.info(
        { created: result.created, changed: result.changed, removed: result.removed },
        'BlockPulls of the policy written',
      );
    this.#record(policy, result);
    let requeue = decision.requeueAfterMs;
    if (!isDeepStrictEqual(stripTimes(policy.status), stripTimes(decision.status))) {
      const since = performance.now() - (this.#lastWrite.get(key) ?? Number.NEGATIVE_INFINITY);
      if (since < STATUS_WRITE_INTERVAL_MS) {
        // Not yet: the status is written when the interval has passed (the look is made again then).
        const wait = Math.ceil(STATUS_WRITE_INTERVAL_MS - since);
        requeue = requeue === null ? wait : Math.min(requeue, wait);
      } else {
        try {
          await writeStatus(this.#o.clients, policy, decision.status);
          this.#lastWrite.set(key, performance.now());
        } catch (err) {
          if (!isNotFound(err)) throw new Error(`status write: ${describeApiError(err)}`);
        }
      }
    }
    if (result.errors.length > 0) throw new Error(result.errors.slice(0, 5).join('; '));
    return requeue;
  }

  #record(
    policy: Policy,
    r: { created: number; removed: number; removedWhy: Readonly<Record<string, number>>; errors: readonly string[] },
  ): void {
    const events = this.#o.events;
    if (events === undefined) return;
    // A cluster policy has no namespace: the recorder writes its Events in `default` (as a Node's).
    const involved: InvolvedObject = {
      apiVersion: `${POLICY_REF.group}/${POLICY_REF.version}`,
      kind: policy.kind,
      ...(policy.metadata.namespace !== undefined ? { namespace: policy.metadata.namespace } : {}),
      name: policy.metadata.name,
      uid: policy.metadata.uid,
    };
    if (r.created > 0) void events.normal(involved, 'BlockPullsCreated', 'Create', `created ${r.created} BlockPull(s)`);
    if (r.removed > 0) {
      // VMIGone: the VMI was deleted or restarted mid-pull; NotSelected; TTLExpired; LostConflict; PlanUsed.
      const why = Object.entries(r.removedWhy)
        .map(([k, n]) => `${n} ${k}`)
        .join(', ');
      void events.normal(involved, 'BlockPullsDeleted', 'Delete', `deleted ${r.removed} BlockPull(s): ${why}`);
    }
    if (r.errors.length > 0)
      void events.warning(involved, 'WriteFailed', 'Write', `${r.errors.length} write(s) failed: ${r.errors[0]}`);
  }

  /** Run until the signal aborts. */
  async run(signal: AbortSignal): Promise<void> {
    const informers = this.#informers();
    if (await startAndSync(informers, signal)) {
      this.#log.info('caches synced; starting policy workers');
      for (const p of this.#allPolicies()) this.queue.add(policyKey(p));
      // BlockPulls of policies deleted while no leader ran.
      const known = new Set(this.#allPolicies().map((p) => p.metadata.uid));
      for (const b of this.pulls.list()) {
        const owner = policyOwner(b);
        if (owner !== undefined && !known.has(owner.uid)) this.queue.add(`${ORPHAN}/${objectKey(b)}`);
      }
      for (const inf of informers)
        inf.onRecovered(() => {
          for (const p of this.#allPolicies()) this.queue.add(policyKey(p));
        });
      await runWorkers(this.queue, this.#o.workers ?? 2, signal, (key) => this.reconcile(key), {
        onError: (key, err, worker) =>
          this.#log
            .child({ worker, policy: key })
            .warn({ error: errorMessage(err) }, 'policy reconcile failed; retrying with backoff'),
      });
    }
    await Promise.all(informers.map((i) => i.stop()));
    this.#log.info('policy controller stopped');
  }
}

/** The work queue key prefix of a BlockPull whose policy may be gone ("Orphan/namespace/name"). */
const ORPHAN = 'Orphan';

/** The policy a BlockPull's controller ownerReference names, if it is one. */
function policyOwner(obj: KubernetesObject): { kind: PolicyKind; name: string; uid: string } | undefined {
  const refs = (obj.metadata?.ownerReferences ?? []) as {
    kind?: string;
    name?: string;
    uid?: string;
    controller?: boolean;
  }[];
  const c = refs.find((r) => r.controller === true);
  if (c?.name === undefined || c.uid === undefined) return undefined;
  if (c.kind !== POLICY_KIND && c.kind !== CLUSTER_POLICY_KIND) return undefined;
  return { kind: c.kind, name: c.name, uid: c.uid };
}

/** A status without the condition times (setCondition keeps them while a status holds). */
function stripTimes(s: unknown): unknown {
  return JSON.parse(JSON.stringify(s ?? {}, (k, v: unknown) => (k === 'lastTransitionTime' ? undefined : v)));
}
