import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CONFIG_EXIT_CODE, ConfigError, ENV_VARS, loadConfig } from './config.ts';

function problemsOf(env: NodeJS.ProcessEnv): readonly string[] {
  try {
    loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig', () => {
  it('applies the documented defaults', () => {
    const c = loadConfig({ BLOCKPULL_POD_NAME: 'op-0', BLOCKPULL_POD_NAMESPACE: 'blockpull-system' });
    expect(c).toEqual({
      transport: 'exec',
      localLaunchersDir: undefined,
      kubeconfig: undefined,
      podNamespace: 'blockpull-system',
      podName: 'op-0',
      leaderElection: {
        enabled: true,
        leaseName: 'blockpull-operator-leader',
        leaseNamespace: 'blockpull-system',
        identity: 'op-0',
        leaseDurationMs: 15_000,
        renewDeadlineMs: 10_000,
        retryPeriodMs: 2_000,
      },
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
      watchNamespace: undefined,
      spaceMarginBytes: 64 * 1024 * 1024,
      spaceMarginPercent: 10,
      policyController: true,
    });
    expect(loadConfig({ BLOCKPULL_POD_NAME: 'op-0', BLOCKPULL_POLICY_CONTROLLER: 'false' }).policyController).toBe(
      false,
    );
  });

  it('reads every variable', () => {
    const c = loadConfig({
      BLOCKPULL_TRANSPORT: 'local',
      BLOCKPULL_LOCAL_LAUNCHERS_DIR: '/tmp/launchers',
      BLOCKPULL_KUBECONFIG: '/tmp/kc',
      BLOCKPULL_LEADER_ELECT: 'false',
      BLOCKPULL_LEASE_NAME: 'my-lease',
      BLOCKPULL_LEASE_DURATION_MS: '3000',
      BLOCKPULL_RENEW_DEADLINE_MS: '2000',
      BLOCKPULL_RETRY_PERIOD_MS: '500',
      BLOCKPULL_WORKERS: '2',
      BLOCKPULL_MAX_CONCURRENT_PULLS: '10',
      BLOCKPULL_MAX_PULLS_PER_NODE: '1',
      BLOCKPULL_STATUS_UPDATE_INTERVAL_MS: '1000',
      BLOCKPULL_POLL_INTERVAL_MS: '250',
      BLOCKPULL_MAX_COMMAND_OUTPUT_BYTES: '4194304',
      BLOCKPULL_OBSERVE_TIMEOUT_MS: '2500',
      BLOCKPULL_ACTION_TIMEOUT_MS: '4000',
      BLOCKPULL_HEALTH_PORT: '0',
      BLOCKPULL_METRICS_PORT: '0',
      BLOCKPULL_METRICS_BIND_ADDRESS: '127.0.0.1',
      BLOCKPULL_LOG_LEVEL: 'DEBUG',
      BLOCKPULL_WATCH_NAMESPACE: 'ns1',
      BLOCKPULL_SPACE_MARGIN_MIB: '0',
      BLOCKPULL_SPACE_MARGIN_PERCENT: '5',
    });
    expect(c.transport).toBe('local');
    expect(c.localLaunchersDir).toBe('/tmp/launchers');
    expect(c.kubeconfig).toBe('/tmp/kc');
    expect(c.leaderElection).toMatchObject({
      enabled: false,
      leaseName: 'my-lease',
      leaseDurationMs: 3000,
      renewDeadlineMs: 2000,
      retryPeriodMs: 500,
    });
    expect(c.workers).toBe(2);
    expect(c.maxConcurrentPulls).toBe(10);
    expect(c.maxPullsPerNode).toBe(1);
    expect(c.statusUpdateIntervalMs).toBe(1000);
    expect(c.pollIntervalMs).toBe(250);
    expect(c.maxCommandOutputBytes).toBe(4_194_304);
    expect(c.observeTimeoutMs).toBe(2_500);
    expect(c.actionTimeoutMs).toBe(4_000);
    expect(c.healthPort).toBe(0);
    expect(c.metricsPort).toBe(0);
    expect(c.metricsBindAddress).toBe('127.0.0.1');
    expect(c.logLevel).toBe('debug');
    expect(c.watchNamespace).toBe('ns1');
    expect(c.spaceMarginBytes).toBe(0);
    expect(c.spaceMarginPercent).toBe(5);
    expect(() => loadConfig({ BLOCKPULL_SPACE_MARGIN_PERCENT: '100' })).toThrow(/BLOCKPULL_SPACE_MARGIN_PERCENT/);
    expect(loadConfig({ BLOCKPULL_SPACE_MARGIN_MIB: '10' }).spaceMarginBytes).toBe(10 * 1024 * 1024);
    expect(() => loadConfig({ BLOCKPULL_SPACE_MARGIN_MIB: '-1' })).toThrow(/BLOCKPULL_SPACE_MARGIN_MIB/);
  });

  it('falls back to KUBECONFIG and treats empty values as unset', () => {
    const c = loadConfig({ KUBECONFIG: '/etc/kc', BLOCKPULL_WORKERS: '', BLOCKPULL_TRANSPORT: ' ' });
    expect(c.kubeconfig).toBe('/etc/kc');
    expect(c.workers).toBe(16);
    expect(c.transport).toBe('exec');
    expect(loadConfig({ KUBECONFIG: '/etc/kc', BLOCKPULL_KUBECONFIG: '/x' }).kubeconfig).toBe('/x');
  });

  it('accepts boolean spellings', () => {
    for (const [v, want] of [
      ['true', true],
      ['1', true],
      ['YES', true],
      ['false', false],
      ['0', false],
      ['no', false],
    ] as const) {
      expect(loadConfig({ BLOCKPULL_LEADER_ELECT: v }).leaderElection.enabled).toBe(want);
    }
  });

  it('reports every problem at once, naming the variable and what is wrong', () => {
    const problems = problemsOf({
      BLOCKPULL_TRANSPORT: 'ssh',
      BLOCKPULL_WORKERS: '0',
      BLOCKPULL_MAX_PULLS_PER_NODE: 'two',
      BLOCKPULL_HEALTH_PORT: '70000',
      BLOCKPULL_LEADER_ELECT: 'maybe',
      BLOCKPULL_LOG_LEVEL: 'verbose',
      BLOCKPULL_WATCH_NAMESPACE: 'Bad_NS',
    });
    expect(problems).toHaveLength(7);
    const text = problems.join('\n');
    expect(text).toMatch(/BLOCKPULL_TRANSPORT="ssh": .*exec.*local/);
    expect(text).toMatch(/BLOCKPULL_WORKERS="0": must be >= 1/);
    expect(text).toMatch(/BLOCKPULL_MAX_PULLS_PER_NODE="two": expected a non-negative integer/);
    expect(text).toMatch(/BLOCKPULL_HEALTH_PORT="70000": must be <= 65535/);
    expect(text).toMatch(/BLOCKPULL_LEADER_ELECT="maybe": expected true or false/);
    expect(text).toMatch(/BLOCKPULL_LOG_LEVEL="verbose"/);
    expect(text).toMatch(/BLOCKPULL_WATCH_NAMESPACE="Bad_NS": expected a DNS-1123 name/);
  });

  it('bounds the command output cap and the observation budget', () => {
    expect(problemsOf({ BLOCKPULL_MAX_COMMAND_OUTPUT_BYTES: '1000', BLOCKPULL_OBSERVE_TIMEOUT_MS: '50' })).toEqual([
      'BLOCKPULL_MAX_COMMAND_OUTPUT_BYTES="1000": must be >= 65536',
      'BLOCKPULL_OBSERVE_TIMEOUT_MS="50": must be >= 100',
    ]);
    expect(problemsOf({ BLOCKPULL_MAX_COMMAND_OUTPUT_BYTES: String(512 * 1024 * 1024) })).toEqual([
      'BLOCKPULL_MAX_COMMAND_OUTPUT_BYTES="536870912": must be <= 268435456',
    ]);
  });

  it('checks cross-field rules', () => {
    expect(problemsOf({ BLOCKPULL_TRANSPORT: 'local' })).toEqual([
      'BLOCKPULL_LOCAL_LAUNCHERS_DIR: required when BLOCKPULL_TRANSPORT=local',
    ]);
    expect(problemsOf({ BLOCKPULL_LEASE_DURATION_MS: '5000', BLOCKPULL_RENEW_DEADLINE_MS: '5000' })[0]).toMatch(
      /RENEW_DEADLINE_MS \(5000\) must be less than BLOCKPULL_LEASE_DURATION_MS \(5000\)/,
    );
    expect(problemsOf({ BLOCKPULL_RETRY_PERIOD_MS: '10000' })[0]).toMatch(
      /RETRY_PERIOD_MS \(10000\) must be less than/,
    );
    expect(problemsOf({ BLOCKPULL_HEALTH_PORT: '9000', BLOCKPULL_METRICS_PORT: '9000' })[0]).toMatch(/must differ/);
    // with leader election off, the timing rules do not apply
    expect(
      loadConfig({ BLOCKPULL_LEADER_ELECT: 'false', BLOCKPULL_RETRY_PERIOD_MS: '10000' }).leaderElection.retryPeriodMs,
    ).toBe(10000);
  });

  it('lists its environment variables', () => {
    expect(ENV_VARS).toContain('BLOCKPULL_MAX_PULLS_PER_NODE');
    expect(ENV_VARS.every((v) => v.startsWith('BLOCKPULL_'))).toBe(true);
  });

  it('loadConfigOrExit exits with code 2 and prints the problems', () => {
    const node = process.execPath; // vitest runs under the project's Node 24
    const cfg = path.join(import.meta.dirname, 'config.ts');
    const script = `import { loadConfigOrExit } from ${JSON.stringify(cfg)}; loadConfigOrExit(); console.log('unreachable');`;
    const r = spawnSync(node, ['--input-type=module', '-e', script], {
      env: { PATH: process.env['PATH'], BLOCKPULL_WORKERS: '-1', BLOCKPULL_TRANSPORT: 'local' },
      encoding: 'utf8',
    });
    expect(r.status).toBe(CONFIG_EXIT_CODE);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('invalid configuration');
    expect(r.stderr).toContain('BLOCKPULL_WORKERS="-1"');
    expect(r.stderr).toContain('BLOCKPULL_LOCAL_LAUNCHERS_DIR: required');
  });
});
