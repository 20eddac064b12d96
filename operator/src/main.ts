/**
 * blockpull-operator entry point: config -> logger -> kube client -> metrics/health servers ->
 * leader election -> the BlockPull controller and (unless BLOCKPULL_POLICY_CONTROLLER=false) the
 * policy controller, both run by the leader only. SIGTERM/SIGINT: stop the controller (running pulls are NOT
 * aborted: the next leader adopts them), release the Lease, close the servers, exit 0.
 * A lost Lease exits 1 at once, like controller-runtime; so does an unhandled rejection or an
 * uncaught exception (logged at fatal level, crash.ts): crash loudly rather than run half-broken.
 */
import { loadConfigOrExit } from './config.ts';
import { installCrashHandlers } from './crash.ts';
import { createLogger } from './log.ts';
import { createKubeClients, fenceWrites, loadKubeConfig } from './kube/client.ts';
import { EventRecorder } from './kube/events.ts';
import { LeaderElector } from './kube/leader-election.ts';
import { createMetrics } from './kube/metrics.ts';
import { leaderAwareReadiness, startHealthServer, startMetricsServer } from './kube/server.ts';
import { Controller } from './controller/controller.ts';
import { PolicyController } from './policy/controller.ts';
import { ExecTransport, LocalTransport, type DriverProvider } from './kubevirt/transport.ts';

async function main(): Promise<number> {
  const config = loadConfigOrExit();
  const logger = createLogger({ level: config.logLevel, base: { pod: config.podName } });
  installCrashHandlers(logger);
  logger.info(
    {
      transport: config.transport,
      leaderElection: config.leaderElection.enabled,
      workers: config.workers,
      maxConcurrentPulls: config.maxConcurrentPulls,
      maxPullsPerNode: config.maxPullsPerNode,
      statusUpdateIntervalMs: config.statusUpdateIntervalMs,
      maxCommandOutputBytes: config.maxCommandOutputBytes,
      observeTimeoutMs: config.observeTimeoutMs,
      actionTimeoutMs: config.actionTimeoutMs,
      watchNamespace: config.watchNamespace ?? '(all)',
      policyController: config.policyController,
    },
    'starting blockpull-operator',
  );
  const kc = loadKubeConfig(config.kubeconfig);
  const clients = createKubeClients(kc);
  const metrics = createMetrics();
  const events = new EventRecorder({
    events: clients.events,
    reportingInstance: config.podName,
    logger,
    onDropped: () => metrics.eventsDropped.inc(),
  });
  const drivers: DriverProvider =
    config.transport === 'local' && config.localLaunchersDir !== undefined
      ? new LocalTransport(config.localLaunchersDir, { maxOutputBytes: config.maxCommandOutputBytes })
      : new ExecTransport(kc, { maxOutputBytes: config.maxCommandOutputBytes });

  const controller = new Controller({
    clients,
    drivers,
    logger,
    metrics,
    events,
    workers: config.workers,
    pollIntervalMs: config.pollIntervalMs,
    statusUpdateIntervalMs: config.statusUpdateIntervalMs,
    maxConcurrentPulls: config.maxConcurrentPulls,
    maxPullsPerNode: config.maxPullsPerNode,
    observeTimeoutMs: config.observeTimeoutMs,
    actionTimeoutMs: config.actionTimeoutMs,
    spaceMarginBytes: config.spaceMarginBytes,
    spaceMarginPercent: config.spaceMarginPercent,
    ...(config.watchNamespace !== undefined ? { namespace: config.watchNamespace } : {}),
  });

  const policies = config.policyController
    ? new PolicyController({
        clients,
        logger,
        metrics,
        events,
        ...(config.watchNamespace !== undefined ? { namespace: config.watchNamespace } : {}),
      })
    : undefined;
  // One leader runs both; either ending (its signal aborted) ends the other's wait too.
  const runControllers = async (signal: AbortSignal): Promise<void> => {
    await Promise.all([controller.run(signal), policies?.run(signal)]);
  };
  const synced = (): boolean => controller.synced() && (policies?.synced() ?? true);

  const stop = new AbortController();
  let exitCode = 0;
  const onSignal = (sig: string): void => {
    if (stop.signal.aborted) return;
    logger.info({ signal: sig }, 'shutting down (running pulls continue; the next leader adopts them)');
    stop.abort(new Error(sig));
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));

  const elector = config.leaderElection.enabled
    ? new LeaderElector({
        coordination: clients.coordination,
        namespace: config.leaderElection.leaseNamespace,
        leaseName: config.leaderElection.leaseName,
        identity: config.leaderElection.identity,
        leaseDurationMs: config.leaderElection.leaseDurationMs,
        renewDeadlineMs: config.leaderElection.renewDeadlineMs,
        retryPeriodMs: config.leaderElection.retryPeriodMs,
        logger,
        metrics,
        onStartedLeading: (signal) => runControllers(signal),
        onStoppedLeading: () => {
          if (!stop.signal.aborted) {
            // No graceful shutdown: it would await requests hung on the API server, and what
            // they and the workers write after this point would overwrite a new leader's truth.
            fenceWrites();
            logger.error('leader lease lost; exiting');
            logger.flush();
            process.exit(1);
          }
        },
      })
    : undefined;

  const metricsServer = await startMetricsServer({
    port: config.metricsPort,
    host: config.metricsBindAddress,
    registry: metrics.registry,
    logger,
  });
  const health = await startHealthServer({
    port: config.healthPort,
    readiness: { controller: leaderAwareReadiness(elector, synced) },
    logger,
  });
  try {
    if (elector !== undefined) {
      const how = await elector.run(stop.signal);
      if (how === 'lost') exitCode = 1;
    } else {
      await runControllers(stop.signal);
    }
  } finally {
    await Promise.allSettled([metricsServer.close(), health.close()]);
  }
  logger.info({ exitCode }, 'stopped');
  return exitCode;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(
      `blockpull-operator: fatal: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
