/**
 * Chain model helpers: resolve a base reference against a disk's chain and compute the goal,
 * i.e. the chain expected once the pull is done (the top image, then the base and everything below).
 */
import { HypervisorError } from './errors.ts';
import type { BaseRef, ChainLayer, DiskInfo } from './types.ts';

export interface PullGoal {
  readonly target: string;
  /** Paths of the chain expected after the pull, top first. A full pull: exactly [top]. */
  readonly expectedPaths: readonly string[];
  /** The base kept (absent for a full pull). */
  readonly basePath?: string;
}

/** The layer a BaseRef designates, or why it designates none: it must be a backing image (position >= 1) of this disk. */
export function findBase(disk: DiskInfo, base: BaseRef): ChainLayer | { readonly invalidBase: string } {
  const layer =
    'position' in base
      ? disk.chain.find((l) => l.position === base.position)
      : disk.chain.find((l) => l.path === base.path);
  const what = 'position' in base ? `position ${base.position}` : `path ${base.path}`;
  if (layer === undefined)
    return { invalidBase: `base ${what} is not in the chain of ${disk.target} (${disk.chain.length} layers)` };
  if (layer.position === 0)
    return { invalidBase: `base ${what} is the active image of ${disk.target}; a base must be a backing image` };
  return layer;
}

/** The layer a BaseRef designates; HypervisorError InvalidBase when findBase finds none (for the drivers). */
export function resolveBase(disk: DiskInfo, base: BaseRef): ChainLayer {
  const found = findBase(disk, base);
  if ('invalidBase' in found) throw new HypervisorError('InvalidBase', found.invalidBase);
  return found;
}

/**
 * The chain expected after pulling `disk` down to `base` (absent = flatten), or why the base
 * designates no backing image. A disk without an image has no goal.
 */
export function goalOrInvalid(disk: DiskInfo, base?: BaseRef): PullGoal | { readonly invalidBase: string } {
  const top = disk.chain[0];
  if (top === undefined) throw new HypervisorError('CommandFailed', `disk ${disk.target} has no image`);
  if (base === undefined) return { target: disk.target, expectedPaths: [top.path] };
  const layer = findBase(disk, base);
  if ('invalidBase' in layer) return layer;
  return {
    target: disk.target,
    expectedPaths: [top.path, ...disk.chain.slice(layer.position).map((l) => l.path)],
    basePath: layer.path,
  };
}

/** The chain expected after pulling `disk` down to `base` (absent = flatten); InvalidBase throws (for the drivers). */
export function computeGoal(disk: DiskInfo, base?: BaseRef): PullGoal {
  const goal = goalOrInvalid(disk, base);
  if ('invalidBase' in goal) throw new HypervisorError('InvalidBase', goal.invalidBase);
  return goal;
}

/** The chain currently ends at the goal: same images, same order. */
export function chainAtGoal(disk: DiskInfo, goal: PullGoal): boolean {
  return (
    disk.chain.length === goal.expectedPaths.length && disk.chain.every((l, i) => l.path === goal.expectedPaths[i])
  );
}

/** virsh's name for a backing image: target[index] when libvirt numbers it, else its path. */
export function virshBaseArg(disk: DiskInfo, layer: ChainLayer): string {
  return layer.index === undefined ? layer.path : `${disk.target}[${layer.index}]`;
}
