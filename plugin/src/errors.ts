/** Errors as the user reads them: one line, no stack (pure). */
import { ApiException } from '@kubernetes/client-node';
import { UsageError } from './args.ts';

/** An error whose message is already what the user should read. */
export class CliError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'CliError';
  }
}

function statusMessage(body: unknown): string | undefined {
  let b: unknown = body;
  if (typeof body === 'string') {
    try {
      b = JSON.parse(body);
    } catch {
      return body.trim() !== '' ? body.trim().slice(0, 500) : undefined;
    }
  }
  if (typeof b === 'object' && b !== null && typeof (b as { message?: unknown }).message === 'string')
    return (b as { message: string }).message;
  return undefined;
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_SOCKET',
  'CERT_HAS_EXPIRED',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** The code of a network error, looking through `cause` (undici wraps them in "fetch failed"). */
function networkCode(err: unknown): string | undefined {
  let e: unknown = err;
  for (let i = 0; i < 5 && typeof e === 'object' && e !== null; i++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && NETWORK_CODES.has(code)) return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** The one line printed after `error: `; `server` names the API server in network errors. */
export function describeError(err: unknown, server?: string): string {
  if (err instanceof CliError || err instanceof UsageError) return err.message;
  if (err instanceof ApiException) {
    const code = (err as ApiException<unknown>).code;
    const msg = statusMessage((err as ApiException<unknown>).body);
    if (code === 401)
      return `the API server refused your credentials (401 Unauthorized)${msg !== undefined ? `: ${msg}` : ''}`;
    return msg ?? `the API server answered ${code}`;
  }
  const net = networkCode(err);
  if (net !== undefined) return `cannot reach the API server${server !== undefined ? ` at ${server}` : ''}: ${net}`;
  const text = err instanceof Error ? err.message : String(err);
  return text.split('\n')[0] ?? text;
}
