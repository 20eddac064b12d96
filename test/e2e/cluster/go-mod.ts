/**
 * Pure helpers for the wrapper Go modules under test/e2e/cluster/go/ (no I/O here, unit-tested).
 *
 * `go install k8s.io/kubernetes/cmd/...@vX` does not work: k8s.io/kubernetes replaces its staging
 * modules (k8s.io/api, k8s.io/client-go, ...) with local directories, and replace directives only
 * apply in the main module. Our wrapper module is that main module: it requires k8s.io/kubernetes vX
 * and replaces every staging module with its published v0.Y.Z. The list of staging modules is read
 * from that release's own go.mod, so a version bump is one command (gen-go-mod.ts).
 * etcd's server module has the same shape (relative replaces for api, client, pkg).
 */
import { z } from 'zod';

export const K8S_MODULE = 'k8s.io/kubernetes';
export const ETCD_SERVER_MODULE = 'go.etcd.io/etcd/server/v3';

/** The binaries built from k8s.io/kubernetes, in one `go build` (they share most packages). */
export const K8S_COMMANDS = [
  'kube-apiserver',
  'kubectl',
  'kubelet',
  'kube-controller-manager',
  'kube-scheduler',
] as const;
export type K8sCommand = (typeof K8S_COMMANDS)[number];

const semver = z.string().regex(/^v\d+\.\d+\.\d+$/, 'expected a release version like v1.34.4');

/** Accepts "1.34.4" or "v1.34.4"; returns "v1.34.4". Rejects pre-releases and garbage. */
export function normalizeVersion(input: string, what: string): string {
  const trimmed = input.trim();
  const withV = trimmed.startsWith('v') ? trimmed : `v${trimmed}`;
  const parsed = semver.safeParse(withV);
  if (!parsed.success)
    throw new Error(`invalid ${what} version ${JSON.stringify(input)}: expected a release like v1.2.3`);
  return parsed.data;
}

/** k8s.io/kubernetes v1.Y.Z publishes its staging modules as v0.Y.Z. */
export function stagingVersion(k8sVersion: string): string {
  const m = /^v1\.(\d+)\.(\d+)$/.exec(normalizeVersion(k8sVersion, 'Kubernetes'));
  if (!m) throw new Error(`Kubernetes version ${k8sVersion} is not a v1.Y.Z release`);
  return `v0.${m[1]}.${m[2]}`;
}

/** One replace directive of a go.mod: `module [version] => target [targetVersion]`. */
export interface ReplaceDirective {
  readonly module: string;
  readonly version?: string;
  readonly target: string;
  readonly targetVersion?: string;
}

/** Every replace directive of a go.mod, in file order (block and single-line form, comments dropped). */
export function replaceDirectives(goMod: string): ReplaceDirective[] {
  const out: ReplaceDirective[] = [];
  let inBlock = false;
  for (const raw of goMod.split('\n')) {
    const line = raw.replace(/\/\/.*$/, '').trim();
    if (line === '') continue;
    let body: string | undefined;
    if (inBlock) {
      if (line === ')') {
        inBlock = false;
        continue;
      }
      body = line;
    } else if (/^replace\s*\($/.test(line)) {
      inBlock = true;
      continue;
    } else if (line.startsWith('replace ')) {
      body = line.slice('replace '.length).trim();
    }
    if (body === undefined) continue;
    const m = /^(\S+)(?:\s+(\S+))?\s+=>\s+(\S+)(?:\s+(\S+))?$/.exec(body);
    if (!m) continue;
    const [, module, version, target, targetVersion] = m as unknown as [
      string,
      string,
      string | undefined,
      string,
      string | undefined,
    ];
    out.push({ module, target, ...(version ? { version } : {}), ...(targetVersion ? { targetVersion } : {}) });
  }
  return out;
}

function isLocalTarget(target: string): boolean {
  return target.startsWith('./') || target.startsWith('../');
}

/**
 * Module paths that a go.mod replaces with a local directory (`X => ./staging/src/X`, `X => ../api`).
 * Replacements to other modules and to placeholders such as ./FORBIDDEN_DEPENDENCY are not staging
 * modules and are skipped. Handles both the block and the single-line form.
 */
export function localReplacedModules(goMod: string): string[] {
  const out: string[] = [];
  for (const r of replaceDirectives(goMod)) {
    if (!isLocalTarget(r.target) || /FORBIDDEN/i.test(r.target)) continue;
    if (!out.includes(r.module)) out.push(r.module);
  }
  return out.sort();
}

/**
 * A release's replace directives made usable by a wrapper module: every replace to another module is
 * kept as it is (the release's pins), every replace to a local directory (a staging module) points at
 * the published module of `localVersion` instead, and placeholders (./FORBIDDEN_DEPENDENCY) are dropped.
 */
export function publishedReplaces(goMod: string, localVersion: string): ReplaceDirective[] {
  const out: ReplaceDirective[] = [];
  for (const r of replaceDirectives(goMod)) {
    if (/FORBIDDEN/i.test(r.target)) continue;
    if (isLocalTarget(r.target)) out.push({ module: r.module, target: r.module, targetVersion: localVersion });
    else out.push(r);
  }
  return out;
}

/** The version of a required module in a go.mod (block or single-line require), if any. */
export function requiredVersion(goMod: string, modulePath: string): string | undefined {
  const escaped = modulePath.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  const m = new RegExp(`^\\s*(?:require\\s+)?${escaped}\\s+(v\\S+)`, 'm').exec(goMod);
  return m?.[1];
}

/** The etcd version a Kubernetes release is tested with, from its build/dependencies.yaml. */
export function etcdVersionFromDependencies(dependenciesYaml: string): string {
  const m = /-\s+name:\s+"?etcd"?\s*\n\s+version:\s+"?([0-9.]+)"?/.exec(dependenciesYaml);
  if (!m?.[1]) throw new Error('build/dependencies.yaml has no "etcd" entry');
  return normalizeVersion(m[1], 'etcd');
}

const HEADER = '// Generated by test/e2e/cluster/gen-go-mod.ts; regenerate with it, do not edit.';

function replaceBlock(modules: readonly string[], version: string): string {
  return renderReplaceBlock(modules.map((m) => ({ module: m, target: m, targetVersion: version })));
}

/** A `replace ( ... )` block (empty string for no directives), aligned like gofmt does. */
export function renderReplaceBlock(directives: readonly ReplaceDirective[]): string {
  if (directives.length === 0) return '';
  const left = directives.map((d) => (d.version ? `${d.module} ${d.version}` : d.module));
  const width = Math.max(...left.map((l) => l.length));
  const lines = directives.map(
    (d, i) => `\t${(left[i] ?? '').padEnd(width)} => ${d.target}${d.targetVersion ? ` ${d.targetVersion}` : ''}`,
  );
  return `replace (\n${lines.join('\n')}\n)\n\n`;
}

/** The wrapper go.mod for the Kubernetes binaries (before `go mod tidy` adds the indirect requires). */
export function renderK8sGoMod(k8sVersion: string, stagingModules: readonly string[], goVersion = '1.24.0'): string {
  const v = normalizeVersion(k8sVersion, 'Kubernetes');
  const tools = K8S_COMMANDS.map((c) => `\t${K8S_MODULE}/cmd/${c}`).join('\n');
  return (
    `${HEADER}\nmodule blockpull.dev/e2e/cluster/k8s\n\ngo ${goVersion}\n\nrequire ${K8S_MODULE} ${v}\n\n` +
    replaceBlock(stagingModules, stagingVersion(v)) +
    `tool (\n${tools}\n)\n`
  );
}

/** The wrapper go.mod for etcd (its server module's relative replaces pinned to the same version). */
export function renderEtcdGoMod(etcdVersion: string, localModules: readonly string[], goVersion = '1.24.0'): string {
  const v = normalizeVersion(etcdVersion, 'etcd');
  return (
    `${HEADER}\nmodule blockpull.dev/e2e/cluster/etcd\n\ngo ${goVersion}\n\nrequire ${ETCD_SERVER_MODULE} ${v}\n\n` +
    replaceBlock(localModules, v) +
    `tool ${ETCD_SERVER_MODULE}\n`
  );
}

/** -ldflags for the Kubernetes binaries: stripped, with the version they report (`kubectl version`). */
export function k8sLdflags(k8sVersion: string): string {
  const v = normalizeVersion(k8sVersion, 'Kubernetes');
  const m = /^v(\d+)\.(\d+)\./.exec(v);
  const [major, minor] = [m?.[1] ?? '1', m?.[2] ?? '0'];
  const parts = ['-s', '-w'];
  for (const pkg of ['k8s.io/component-base/version', 'k8s.io/client-go/pkg/version']) {
    parts.push(
      `-X ${pkg}.gitVersion=${v}`,
      `-X ${pkg}.gitMajor=${major}`,
      `-X ${pkg}.gitMinor=${minor}`,
      `-X ${pkg}.gitTreeState=clean`,
      `-X ${pkg}.buildDate=1970-01-01T00:00:00Z`,
    );
  }
  return parts.join(' ');
}
