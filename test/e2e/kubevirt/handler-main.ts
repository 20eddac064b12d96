/**
 * The handler stand-in as its own process (see handler.ts), one per node, started by kubevirt.ts:
 *   node test/e2e/kubevirt/handler-main.ts --kubeconfig K --node NAME --kubelet-root DIR \
 *     --containerd-state DIR --work-dir DIR --proto CMD_PROTO
 * Logs JSON lines (pino) on stdout; SIGTERM stops it.
 */
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { HandlerStandIn } from './handler.ts';

const { values } = parseArgs({
  options: {
    kubeconfig: { type: 'string' },
    node: { type: 'string' },
    'kubelet-root': { type: 'string' },
    'containerd-state': { type: 'string' },
    'work-dir': { type: 'string' },
    proto: { type: 'string' },
  },
});
const need = (name: keyof typeof values): string => {
  const v = values[name];
  if (v === undefined || v === '') throw new Error(`--${name} is required`);
  return v;
};
const logger = pino({ name: 'handler-standin' });
const handler = new HandlerStandIn({
  kubeconfigPath: need('kubeconfig'),
  nodeName: need('node'),
  kubeletRoot: need('kubelet-root'),
  containerdState: need('containerd-state'),
  workDir: need('work-dir'),
  protoFile: need('proto'),
  log: (msg, fields) => logger.info(fields ?? {}, msg),
});
handler.start();
logger.info({ node: values.node }, 'handler stand-in started');
const stop = (): void => {
  void handler.stop().then(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
