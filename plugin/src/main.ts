#!/usr/bin/env node
/**
 * kubectl-blockpull: `kubectl blockpull VERB ...` (kubectl runs any kubectl-* program on PATH).
 * The entry point only: Ctrl-C, a closed pipe, and the exit code once the output is written.
 */
import { runCli } from './cli.ts';
import { EXIT } from './verdict.ts';

const ac = new AbortController();
const interrupt = (): void => {
  ac.abort();
  // A watch ends at once; a request to an API server that does not answer is not waited for.
  setTimeout(() => {
    if (process.stdout.isTTY) process.stdout.write('\x1b[?25h');
    process.exit(EXIT.interrupted);
  }, 1000).unref();
};
process.once('SIGINT', interrupt);
process.once('SIGTERM', interrupt);
// `kubectl blockpull status | head -1`: a closed pipe ends the program quietly.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(EXIT.ok);
});

const code = await runCli(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, signal: ac.signal });
// Exit once stdout is drained (a pipe may still hold output); open keep-alive sockets must not hold the process.
process.stdout.write('', () => process.exit(code));
