/**
 * Cut a BlockPull status down to what the CRD accepts, so a status write is never refused
 * (422) for a long virsh stderr, a very long backing chain or an odd progress report.
 *
 * - messages (status.message, conditions[].message): cut to maxLength with a visible marker;
 * - backingChain.before/current/completed: the top STATUS_LIMITS.chainItems layers are kept and
 *   status.message says the chain was truncated;
 * - paths (backingChain.before/current[].path and .dataFile.path, basePath): cut to STATUS_LIMITS.pathLength (PATH_MAX)
 *   with the same marker. A file QEMU opened never has a longer path (the kernel refuses it with
 *   ENAMETOOLONG); should libvirt report one anyway, the cut path no longer matches the disk, so the
 *   goal is not reached and the pull ends Failed (retries exhausted, or the start refused) instead of
 *   the status write being refused over and over;
 * - numbers: integers, >= 0, int32 where the CRD says int32; currentBytes <= totalBytes.
 *
 * Pure; decide.ts applies it to every status it returns.
 */
import {
  STATUS_LIMITS,
  type BlockPullStatus,
  type ChainLayerStatus,
  type Condition,
  type Progress,
} from '../api/types.ts';

const INT32_MAX = 2147483647;

/** The marker ending a cut message; `n` = characters left out. */
export function truncationMarker(n: number): string {
  return `… [truncated, ${n} more characters]`;
}

/**
 * `text` if it fits in `max` UTF-16 code units (the API server counts code points, never more),
 * else its head and the truncation marker, `max` code units in all.
 */
export function truncateText(text: string, max: number): string {
  if (text.length <= max) return text;
  // The marker's length depends on the count it names; its digits never exceed text.length's.
  const markerLength = truncationMarker(text.length).length;
  let keep = Math.max(0, max - markerLength);
  // Do not split a surrogate pair.
  const last = text.charCodeAt(keep - 1);
  if (keep > 0 && last >= 0xd800 && last <= 0xdbff) keep -= 1;
  const out = text.slice(0, keep) + truncationMarker(text.length - keep);
  return out.length <= max ? out : out.slice(0, max);
}

function count(n: number | undefined, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (n === undefined) return undefined;
  if (!Number.isFinite(n) || n <= 0) return 0;
  return Math.min(max, Math.floor(n));
}

function boundProgress(p: Progress): Progress {
  const totalBytes = count(p.totalBytes);
  let currentBytes = count(p.currentBytes);
  if (currentBytes !== undefined && totalBytes !== undefined && totalBytes > 0)
    currentBytes = Math.min(currentBytes, totalBytes);
  const out: Progress = { ...p };
  if (totalBytes !== undefined) out.totalBytes = totalBytes;
  if (currentBytes !== undefined) out.currentBytes = currentBytes;
  const bytesPerSecond = count(p.bytesPerSecond);
  if (bytesPerSecond !== undefined) out.bytesPerSecond = bytesPerSecond;
  const etaSeconds = count(p.etaSeconds);
  if (etaSeconds !== undefined) out.etaSeconds = etaSeconds;
  if (p.percent !== undefined && p.percent.length > STATUS_LIMITS.percentLength)
    out.percent = p.percent.slice(0, STATUS_LIMITS.percentLength);
  return out;
}

function boundChain(chain: readonly ChainLayerStatus[] | undefined): ChainLayerStatus[] | undefined {
  if (chain === undefined) return undefined;
  return chain.slice(0, STATUS_LIMITS.chainItems).map((l) => ({
    ...l,
    position: count(l.position, INT32_MAX) ?? 0,
    path: truncateText(l.path, STATUS_LIMITS.pathLength),
    ...(l.dataFile !== undefined
      ? { dataFile: { ...l.dataFile, path: truncateText(l.dataFile.path, STATUS_LIMITS.pathLength) } }
      : {}),
  }));
}

function chainNote(status: BlockPullStatus): string {
  const before = status.backingChain?.before?.length ?? 0;
  const current = status.backingChain?.current?.length ?? 0;
  const completed = status.backingChain?.completed?.length ?? 0;
  const cut: string[] = [];
  if (before > STATUS_LIMITS.chainItems) cut.push(`before: ${before} images`);
  if (current > STATUS_LIMITS.chainItems) cut.push(`current: ${current} images`);
  if (completed > STATUS_LIMITS.chainItems) cut.push(`completed: ${completed} images`);
  if (cut.length === 0) return '';
  return ` (backing chain truncated to its top ${STATUS_LIMITS.chainItems} images in status; ${cut.join(', ')})`;
}

function boundCondition(c: Condition): Condition {
  return {
    ...c,
    reason: truncateText(c.reason, STATUS_LIMITS.reasonLength),
    message: truncateText(c.message, STATUS_LIMITS.messageLength),
    ...(c.observedGeneration !== undefined ? { observedGeneration: count(c.observedGeneration) } : {}),
  };
}

/** The status cut down to the CRD's bounds (unchanged when it is within them). */
export function boundStatus(status: BlockPullStatus): BlockPullStatus {
  const out: BlockPullStatus = { ...status };
  const note = chainNote(status);
  if (status.message !== undefined || note !== '') {
    out.message = truncateText(status.message ?? '', STATUS_LIMITS.messageLength - note.length) + note;
  }
  if (status.reason !== undefined) out.reason = truncateText(status.reason, STATUS_LIMITS.reasonLength);
  if (status.conditions !== undefined)
    out.conditions = status.conditions.slice(0, STATUS_LIMITS.conditions).map(boundCondition);
  if (status.backingChain !== undefined) {
    const before = boundChain(status.backingChain.before);
    const current = boundChain(status.backingChain.current);
    const completed = boundChain(status.backingChain.completed);
    const basePath = status.backingChain.basePath;
    out.backingChain = {
      ...status.backingChain,
      ...(before !== undefined ? { before } : {}),
      ...(current !== undefined ? { current } : {}),
      ...(completed !== undefined ? { completed } : {}),
      ...(basePath !== undefined ? { basePath: truncateText(basePath, STATUS_LIMITS.pathLength) } : {}),
    };
  }
  if (status.progress !== undefined) out.progress = boundProgress(status.progress);
  if (status.observedGeneration !== undefined) out.observedGeneration = count(status.observedGeneration);
  if (status.attempts !== undefined) out.attempts = count(status.attempts, INT32_MAX);
  if (status.retries !== undefined) out.retries = count(status.retries, INT32_MAX);
  if (status.plan !== undefined) {
    const { basePath, bytesToWrite, availableBytes, etaSeconds } = status.plan;
    out.plan = {
      ...status.plan,
      ...(basePath !== undefined ? { basePath: truncateText(basePath, STATUS_LIMITS.pathLength) } : {}),
      ...(bytesToWrite !== undefined ? { bytesToWrite: count(bytesToWrite) } : {}),
      ...(availableBytes !== undefined ? { availableBytes: count(availableBytes) } : {}),
      ...(etaSeconds !== undefined ? { etaSeconds: count(etaSeconds) } : {}),
    };
  }
  return out;
}
