/**
 * Operator configuration, read from BLOCKPULL_* environment variables and validated with zod.
 *
 * `loadConfig()` returns a typed Config or throws ConfigError listing every bad variable
 * (which one, what was wrong). `loadConfigOrExit()` prints that list and exits with code 2,
 * for main.ts.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';

export const ENV_PREFIX = 'BLOCKPULL_';

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface LeaderElectionConfig {
  readonly enabled: boolean;
  readonly leaseName: string;
  /** Namespace of the Lease: the pod's namespace. */
  readonly leaseNamespace: string;
  /** Holder identity written to the Lease: the pod name (plus a random suffix if absent). */
  readonly identity: string;
  readonly leaseDurationMs: number;
  readonly renewDeadlineMs: number;
  readonly retryPeriodMs: number;
}

export interface Config {
  /** How virsh is run next to a VM: pods/exec (production) or local stand-ins (tests, demo). */
  readonly transport: 'exec' | 'local';
  /** Registry directory of the launcher stand-ins; set iff transport is local. */
  readonly localLaunchersDir: string | undefined;
  /** Path of a kubeconfig file; undefined = in-cluster service account. */
  readonly kubeconfig: string | undefined;
  /** Namespace of the operator pod (Lease namespace): BLOCKPULL_POD_NAMESPACE, else the service account namespace file, else "default". */
  readonly podNamespace: string;
  readonly podName: string;
  readonly leaderElection: LeaderElectionConfig;
  /** Number of concurrent reconcile workers. */
  readonly workers: number;
  /** Cluster-wide limit of block pulls running at once. */
  readonly maxConcurrentPulls: number;
  /** Limit of block pulls running at once on one node. */
  readonly maxPullsPerNode: number;
  /** Minimum interval between two progress status writes of one job. */
  readonly statusUpdateIntervalMs: number;
  /** How often a running job is polled on the hypervisor. */
  readonly pollIntervalMs: number;
  /** Cap of stdout and of stderr of every command run next to a VM (and of a `virsh event` line). */
  readonly maxCommandOutputBytes: number;
  /**
   * How long a worker waits for a read-only look at libvirt (chain and job) before it moves on:
   * the BlockPull shows HypervisorUnreachable and the command runs on in the background.
   */
  readonly observeTimeoutMs: number;
  /**
   * How long an action (start, bandwidth change, abort of a pull) may take before its command is
   * ended: a start not answered is recorded Unanswered and holds no slot (decide.ts).
   */
  readonly actionTimeoutMs: number;
  readonly healthPort: number;
  readonly metricsPort: number;
  readonly metricsBindAddress: string;
  readonly logLevel: LogLevel;
  /** Watch only this namespace; undefined = all namespaces. */
  readonly watchNamespace: string | undefined;
  /** Pre-flight: bytes that must stay free (filesystem and ephemeral-storage limit) after the data to pull. */
  readonly spaceMarginBytes: number;
  /** Pre-flight: percent of the active image's filesystem that must stay free after the data to pull, if more. */
  readonly spaceMarginPercent: number;
  /** Run the policy controller (BlockPullPolicy, ClusterBlockPullPolicy) beside the BlockPull controller. */
  readonly policyController: boolean;
}

/** Thrown by loadConfig with one line per problem. */
export class ConfigError extends Error {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

// --- field parsers: env values are strings; empty string counts as unset ------------------

const unsetEmpty = (v: unknown): unknown => (typeof v === 'string' && v.trim() === '' ? undefined : v);

const boolFromEnv = z.preprocess(
  unsetEmpty,
  z
    .string()
    .trim()
    .toLowerCase()
    .refine((s) => ['true', 'false', '1', '0', 'yes', 'no'].includes(s), { message: 'expected true or false' })
    .transform((s) => s === 'true' || s === '1' || s === 'yes')
    .optional(),
);

function intFromEnv(min: number, max: number) {
  return z.preprocess(
    unsetEmpty,
    z
      .string()
      .trim()
      .regex(/^[0-9]+$/, { message: 'expected a non-negative integer' })
      .transform(Number)
      .pipe(
        z
          .number()
          .int()
          .min(min, { message: `must be >= ${min}` })
          .max(max, { message: `must be <= ${max}` }),
      )
      .optional(),
  );
}

// DNS-1123 subdomain (namespace names are labels, pod names subdomains; labels are a subset).
const dnsName = z
  .string()
  .trim()
  .max(253)
  .regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, {
    message: 'expected a DNS-1123 name (lowercase letters, digits, "-", ".")',
  });

const optionalString = z.preprocess(unsetEmpty, z.string().trim().optional());

/** Env variable name for each field, and the zod parser of its raw string value. */
const fields = {
  transport: { env: 'TRANSPORT', schema: z.preprocess(unsetEmpty, z.enum(['exec', 'local']).optional()) },
  localLaunchersDir: { env: 'LOCAL_LAUNCHERS_DIR', schema: optionalString },
  kubeconfig: { env: 'KUBECONFIG', schema: optionalString },
  podNamespace: { env: 'POD_NAMESPACE', schema: z.preprocess(unsetEmpty, dnsName.optional()) },
  podName: { env: 'POD_NAME', schema: z.preprocess(unsetEmpty, dnsName.optional()) },
  leaderElect: { env: 'LEADER_ELECT', schema: boolFromEnv },
  leaseName: { env: 'LEASE_NAME', schema: z.preprocess(unsetEmpty, dnsName.optional()) },
  leaseDurationMs: { env: 'LEASE_DURATION_MS', schema: intFromEnv(1000, 3_600_000) },
  renewDeadlineMs: { env: 'RENEW_DEADLINE_MS', schema: intFromEnv(500, 3_600_000) },
  retryPeriodMs: { env: 'RETRY_PERIOD_MS', schema: intFromEnv(100, 600_000) },
  workers: { env: 'WORKERS', schema: intFromEnv(1, 256) },
  maxConcurrentPulls: { env: 'MAX_CONCURRENT_PULLS', schema: intFromEnv(1, 10_000) },
  maxPullsPerNode: { env: 'MAX_PULLS_PER_NODE', schema: intFromEnv(1, 1_000) },
  statusUpdateIntervalMs: { env: 'STATUS_UPDATE_INTERVAL_MS', schema: intFromEnv(100, 600_000) },
  pollIntervalMs: { env: 'POLL_INTERVAL_MS', schema: intFromEnv(50, 600_000) },
  maxCommandOutputBytes: { env: 'MAX_COMMAND_OUTPUT_BYTES', schema: intFromEnv(65_536, 268_435_456) },
  observeTimeoutMs: { env: 'OBSERVE_TIMEOUT_MS', schema: intFromEnv(100, 60_000) },
  actionTimeoutMs: { env: 'ACTION_TIMEOUT_MS', schema: intFromEnv(1_000, 300_000) },
  healthPort: { env: 'HEALTH_PORT', schema: intFromEnv(0, 65_535) },
  metricsPort: { env: 'METRICS_PORT', schema: intFromEnv(0, 65_535) },
  metricsBindAddress: { env: 'METRICS_BIND_ADDRESS', schema: optionalString },
  logLevel: {
    env: 'LOG_LEVEL',
    schema: z.preprocess(unsetEmpty, z.string().trim().toLowerCase().pipe(z.enum(LOG_LEVELS)).optional()),
  },
  watchNamespace: { env: 'WATCH_NAMESPACE', schema: z.preprocess(unsetEmpty, dnsName.optional()) },
  spaceMarginMiB: { env: 'SPACE_MARGIN_MIB', schema: intFromEnv(0, 1_048_576) },
  spaceMarginPercent: { env: 'SPACE_MARGIN_PERCENT', schema: intFromEnv(0, 99) },
  policyController: { env: 'POLICY_CONTROLLER', schema: boolFromEnv },
} as const;

type Fields = typeof fields;
type Raw = { [K in keyof Fields]: z.output<Fields[K]['schema']> };

export const DEFAULTS = {
  transport: 'exec',
  leaseName: 'blockpull-operator-leader',
  leaseDurationMs: 15_000,
  renewDeadlineMs: 10_000,
  retryPeriodMs: 2_000,
  workers: 16,
  maxConcurrentPulls: 4,
  maxPullsPerNode: 2,
  statusUpdateIntervalMs: 2_000,
  pollIntervalMs: 500,
  maxCommandOutputBytes: 1024 * 1024,
  observeTimeoutMs: 1_000,
  actionTimeoutMs: 10_000,
  healthPort: 8081,
  metricsPort: 8080,
  metricsBindAddress: '0.0.0.0',
  logLevel: 'info',
  podNamespace: 'default',
  spaceMarginMiB: 64,
  spaceMarginPercent: 10,
  policyController: true,
} as const;

/** Every environment variable the operator reads, for docs and the Helm chart. */
export const ENV_VARS: readonly string[] = Object.values(fields).map((f) => ENV_PREFIX + f.env);

/**
 * Parse the configuration. Throws ConfigError naming every bad variable.
 * KUBECONFIG (without prefix) is honoured as a fallback for BLOCKPULL_KUBECONFIG.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const problems: string[] = [];
  const raw: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(fields)) {
    const name = ENV_PREFIX + field.env;
    const result = field.schema.safeParse(env[name]);
    if (result.success) {
      raw[key] = result.data;
    } else {
      const msg = result.error.issues.map((i) => i.message).join('; ');
      problems.push(`${name}=${JSON.stringify(env[name])}: ${msg}`);
    }
  }
  const r = raw as Raw;

  // Cross-field rules.
  const transport = r.transport ?? DEFAULTS.transport;
  if (transport === 'local' && r.localLaunchersDir === undefined) {
    problems.push(`${ENV_PREFIX}LOCAL_LAUNCHERS_DIR: required when ${ENV_PREFIX}TRANSPORT=local`);
  }
  const leaderEnabled = r.leaderElect ?? true;
  const leaseDurationMs = r.leaseDurationMs ?? DEFAULTS.leaseDurationMs;
  const renewDeadlineMs = r.renewDeadlineMs ?? DEFAULTS.renewDeadlineMs;
  const retryPeriodMs = r.retryPeriodMs ?? DEFAULTS.retryPeriodMs;
  if (leaderEnabled) {
    if (renewDeadlineMs >= leaseDurationMs) {
      problems.push(
        `${ENV_PREFIX}RENEW_DEADLINE_MS (${renewDeadlineMs}) must be less than ${ENV_PREFIX}LEASE_DURATION_MS (${leaseDurationMs})`,
      );
    }
    if (retryPeriodMs >= renewDeadlineMs) {
      problems.push(
        `${ENV_PREFIX}RETRY_PERIOD_MS (${retryPeriodMs}) must be less than ${ENV_PREFIX}RENEW_DEADLINE_MS (${renewDeadlineMs})`,
      );
    }
  }
  const healthPort = r.healthPort ?? DEFAULTS.healthPort;
  const metricsPort = r.metricsPort ?? DEFAULTS.metricsPort;
  if (healthPort !== 0 && healthPort === metricsPort) {
    problems.push(`${ENV_PREFIX}HEALTH_PORT and ${ENV_PREFIX}METRICS_PORT must differ (both ${healthPort})`);
  }
  if (problems.length > 0) throw new ConfigError(problems);

  const podName = r.podName ?? `blockpull-operator-${process.pid}`;
  const podNamespace = r.podNamespace ?? serviceAccountNamespace() ?? DEFAULTS.podNamespace;
  const kubeconfig = r.kubeconfig ?? unsetEmpty(env['KUBECONFIG']);
  return {
    transport,
    localLaunchersDir: transport === 'local' ? r.localLaunchersDir : undefined,
    kubeconfig: typeof kubeconfig === 'string' ? kubeconfig : undefined,
    podNamespace,
    podName,
    leaderElection: {
      enabled: leaderEnabled,
      leaseName: r.leaseName ?? DEFAULTS.leaseName,
      leaseNamespace: podNamespace,
      identity: podName,
      leaseDurationMs,
      renewDeadlineMs,
      retryPeriodMs,
    },
    workers: r.workers ?? DEFAULTS.workers,
    maxConcurrentPulls: r.maxConcurrentPulls ?? DEFAULTS.maxConcurrentPulls,
    maxPullsPerNode: r.maxPullsPerNode ?? DEFAULTS.maxPullsPerNode,
    statusUpdateIntervalMs: r.statusUpdateIntervalMs ?? DEFAULTS.statusUpdateIntervalMs,
    pollIntervalMs: r.pollIntervalMs ?? DEFAULTS.pollIntervalMs,
    maxCommandOutputBytes: r.maxCommandOutputBytes ?? DEFAULTS.maxCommandOutputBytes,
    observeTimeoutMs: r.observeTimeoutMs ?? DEFAULTS.observeTimeoutMs,
    actionTimeoutMs: r.actionTimeoutMs ?? DEFAULTS.actionTimeoutMs,
    healthPort,
    metricsPort,
    metricsBindAddress: r.metricsBindAddress ?? DEFAULTS.metricsBindAddress,
    logLevel: r.logLevel ?? DEFAULTS.logLevel,
    watchNamespace: r.watchNamespace,
    spaceMarginBytes: (r.spaceMarginMiB ?? DEFAULTS.spaceMarginMiB) * 1024 * 1024,
    spaceMarginPercent: r.spaceMarginPercent ?? DEFAULTS.spaceMarginPercent,
    policyController: r.policyController ?? DEFAULTS.policyController,
  };
}

/** In a pod without BLOCKPULL_POD_NAMESPACE: the service account's namespace. */
export const SERVICE_ACCOUNT_NAMESPACE_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';
function serviceAccountNamespace(): string | undefined {
  try {
    const ns = readFileSync(SERVICE_ACCOUNT_NAMESPACE_FILE, 'utf8').trim();
    return ns === '' ? undefined : ns;
  } catch {
    return undefined;
  }
}

/** Exit code for invalid configuration (like a usage error). */
export const CONFIG_EXIT_CODE = 2;

/** For main.ts: load the config, or print the problems to stderr and exit with code 2. */
export function loadConfigOrExit(env: NodeJS.ProcessEnv = process.env): Config {
  try {
    return loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`blockpull-operator: ${err.message}\n`);
      process.exit(CONFIG_EXIT_CODE);
    }
    throw err;
  }
}
