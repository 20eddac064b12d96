/**
 * Gather: the facts decide() needs about one policy, read from the informer caches only (no API
 * call): the VMIs and disks it selects, the older policies selecting the same disks, its own
 * BlockPulls, the other claims on its disks, and the window's state at `now`.
 */
import type { KubernetesObject } from '@kubernetes/client-node';
import { objectKey } from '../api/object-key.ts';
import { POLICY_KIND, type Policy } from '../api/policy-types.ts';
import { BP_BY_CONTROLLER, BP_BY_DISK, parseCachedVmi, pullView, vmiDisks, type CachedVmi } from './cache.ts';
import type { PolicyFacts, PullView, SelectedDisk } from './decide.ts';
import { matchesSelector } from './selector.ts';
import { windowState } from './window.ts';

export interface PolicyCaches {
  /** Every policy of both kinds, parsed (those that do not parse are left out by the caller). */
  readonly policies: () => readonly Policy[];
  readonly vmis: {
    list(namespace?: string): readonly KubernetesObject[];
    get(namespace: string, name: string): KubernetesObject | undefined;
  };
  readonly pulls: { byIndex(index: string, value: string): KubernetesObject[] };
  /** Namespace name -> labels (for a namespaceSelector). */
  readonly namespaces: () => ReadonlyMap<string, Readonly<Record<string, string>>>;
  /** Only this namespace is watched (BLOCKPULL_WATCH_NAMESPACE). */
  readonly watchNamespace?: string;
}

/** "Kind/namespace/name" (or "Kind/name" for a cluster policy): how a policy is named in conflicts and keys. */
export function policyKey(p: Pick<Policy, 'kind' | 'metadata'>): string {
  return `${p.kind}/${objectKey(p)}`;
}

/** The namespaces a policy selects VMIs in. */
function namespacesOf(p: Policy, caches: PolicyCaches): string[] {
  if (p.kind === POLICY_KIND) return p.metadata.namespace !== undefined ? [p.metadata.namespace] : [];
  const sel = p.spec.namespaceSelector ?? {};
  const out: string[] = [];
  for (const [ns, labels] of caches.namespaces()) {
    if (caches.watchNamespace !== undefined && ns !== caches.watchNamespace) continue;
    if (matchesSelector(sel, labels)) out.push(ns);
  }
  return out.sort();
}

/** The VMIs a policy selects (not being deleted), with the disks it selects of each. */
function selection(p: Policy, caches: PolicyCaches): { vmi: CachedVmi; disks: string[] }[] {
  const out: { vmi: CachedVmi; disks: string[] }[] = [];
  for (const ns of namespacesOf(p, caches)) {
    for (const obj of caches.vmis.list(ns)) {
      const vmi = parseCachedVmi(obj);
      if (vmi === undefined || vmi.metadata.deletionTimestamp !== undefined) continue;
      if (!matchesSelector(p.spec.vmiSelector, vmi.metadata.labels)) continue;
      const disks = vmiDisks(vmi, p.spec.disks);
      if (disks.length > 0) out.push({ vmi, disks });
    }
  }
  return out;
}

const olderThan = (a: Policy, b: Policy): boolean => {
  const ta = String(a.metadata.creationTimestamp ?? '');
  const tb = String(b.metadata.creationTimestamp ?? '');
  return ta < tb || (ta === tb && policyKey(a) < policyKey(b));
};

export function gatherPolicy(p: Policy, caches: PolicyCaches, now: Date): PolicyFacts {
  const selected: SelectedDisk[] = [];
  const older = caches
    .policies()
    .filter((o) => o.metadata.uid !== p.metadata.uid && olderThan(o, p) && !o.metadata.deletionTimestamp);
  const olderSelections = older.map((o) => ({
    key: policyKey(o),
    selected: new Set(selection(o, caches).flatMap(({ vmi, disks }) => disks.map((d) => `${vmi.metadata.uid}/${d}`))),
  }));
  for (const { vmi, disks } of selection(p, caches)) {
    for (const disk of disks) {
      const olderPolicy = olderSelections.find((o) => o.selected.has(`${vmi.metadata.uid}/${disk}`))?.key;
      selected.push({
        namespace: vmi.metadata.namespace,
        vmi: vmi.metadata.name,
        vmiUid: vmi.metadata.uid,
        vmiCreated: vmi.metadata.creationTimestamp ?? '',
        disk,
        ...(olderPolicy !== undefined ? { olderPolicy } : {}),
      });
    }
  }
  selected.sort(
    (a, b) => a.namespace.localeCompare(b.namespace) || a.vmi.localeCompare(b.vmi) || a.disk.localeCompare(b.disk),
  );
  const views = (objs: readonly KubernetesObject[]): PullView[] =>
    objs.map(pullView).filter((v): v is PullView => v !== undefined);
  const own = views(caches.pulls.byIndex(BP_BY_CONTROLLER, p.metadata.uid));
  const ownUids = new Set(own.map((o) => o.uid));
  const others = selected.flatMap((d) =>
    views(caches.pulls.byIndex(BP_BY_DISK, `${d.namespace}/${d.vmi}/${d.disk}`)).filter((v) => !ownUids.has(v.uid)),
  );
  // The VMIs the policy's own pulls name, as they are now (gone, restarted or being deleted: no uid).
  const vmiUids = new Map<string, string>();
  for (const o of own) {
    const k = `${o.namespace}/${o.vmi}`;
    if (vmiUids.has(k)) continue;
    const vmi = parseCachedVmi(caches.vmis.get(o.namespace, o.vmi));
    if (vmi !== undefined && vmi.metadata.deletionTimestamp === undefined) vmiUids.set(k, vmi.metadata.uid);
  }
  return {
    kind: p.kind,
    name: p.metadata.name,
    ...(p.metadata.namespace !== undefined ? { namespace: p.metadata.namespace } : {}),
    uid: p.metadata.uid,
    generation: p.metadata.generation ?? 0,
    spec: p.spec,
    status: p.status,
    window: windowState(p.spec.window, now),
    selected,
    own,
    others,
    vmiUids,
    now,
  };
}
