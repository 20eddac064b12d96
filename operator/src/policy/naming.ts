/**
 * The names and labels of the BlockPulls a policy creates. A name is deterministic (the same
 * policy, VMI incarnation and disk always give the same name, so a create repeated after a lost
 * answer or a stale cache is answered AlreadyExists instead of making a second BlockPull) and at
 * most 63 characters (a label value, and short enough to read in `kubectl get bp`).
 */
import { createHash } from 'node:crypto';
import {
  POLICY_KIND_LABEL,
  POLICY_NAME_LABEL,
  POLICY_UID_LABEL,
  ROLE_LABEL,
  VMI_UID_LABEL,
  type PolicyKind,
  type PolicyRole,
} from '../api/policy-types.ts';

export const MAX_NAME_LENGTH = 63;
const HASH_LENGTH = 10;

/** The first `n` characters of a DNS-1123 label, without a trailing '-'. */
function cut(s: string, n: number): string {
  return s.slice(0, n).replace(/-+$/, '');
}

export interface PullIdentity {
  readonly policyUid: string;
  readonly vmiName: string;
  readonly vmiUid: string;
  readonly disk: string;
  readonly role: PolicyRole;
  /** A plan's base.position: a second look at a pull down to a kept base (base.keepBottom). */
  readonly position?: number;
}

/**
 * `<vmi>-<disk>-<hash>` (`-plan` appended for a dryRun look): the hash covers the policy's uid,
 * the VMI's uid (a restarted VMI gets a new pull), the disk, the role and a plan's base position,
 * so two policies, two incarnations of a VMI, two looks at one disk or a long name cut short
 * never collide.
 */
export function blockPullName(id: PullIdentity): string {
  const hash = createHash('sha256')
    // The position only when there is one: the names of the other pulls and plans stay as they were.
    .update(
      [id.policyUid, id.vmiUid, id.vmiName, id.disk, id.role, ...(id.position !== undefined ? [id.position] : [])].join(
        '\0',
      ),
    )
    .digest('hex')
    .slice(0, HASH_LENGTH);
  const suffix = id.role === 'plan' ? `-${hash}-plan` : `-${hash}`;
  const room = MAX_NAME_LENGTH - suffix.length;
  // VMI and disk share the room left; the disk gets at least 16 characters when both are long.
  const diskRoom = Math.min(id.disk.length, Math.max(16, room - 1 - id.vmiName.length));
  const vmiRoom = room - 1 - diskRoom;
  return `${cut(id.vmiName, vmiRoom)}-${cut(id.disk, diskRoom)}${suffix}`;
}

export interface PolicyIdentity {
  readonly kind: PolicyKind;
  readonly name: string;
  readonly uid: string;
}

/** The labels of a BlockPull of the policy (selectable with `kubectl get bp -l blockpull.dev/policy=<name>`). */
export function pullLabels(policy: PolicyIdentity, vmiUid: string, role: PolicyRole): Record<string, string> {
  return {
    [POLICY_UID_LABEL]: policy.uid,
    [POLICY_NAME_LABEL]: policy.name.length <= 63 ? policy.name : cut(policy.name, 63),
    [POLICY_KIND_LABEL]: policy.kind,
    [VMI_UID_LABEL]: vmiUid,
    [ROLE_LABEL]: role,
  };
}
