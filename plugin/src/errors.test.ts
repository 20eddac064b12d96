import { ApiException } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { UsageError } from './args.ts';
import { CliError, describeError } from './errors.ts';

describe('describeError', () => {
  it("the API server's Status message, as kubectl prints it", () => {
    const body = JSON.stringify({
      kind: 'Status',
      status: 'Failure',
      message: 'blockpulls.blockpull.dev "x" is forbidden: User "alice" cannot create resource',
      reason: 'Forbidden',
      code: 403,
    });
    expect(describeError(new ApiException(403, 'Forbidden', body, {}))).toBe(
      'blockpulls.blockpull.dev "x" is forbidden: User "alice" cannot create resource',
    );
    expect(describeError(new ApiException(401, 'Unauthorized', '', {}))).toBe(
      'the API server refused your credentials (401 Unauthorized)',
    );
    expect(describeError(new ApiException(500, 'x', '', {}))).toBe('the API server answered 500');
  });

  it('a network error names the server, through the causes undici wraps it in', () => {
    const err = new TypeError('fetch failed', {
      cause: Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6443'), { code: 'ECONNREFUSED' }),
    });
    expect(describeError(err, 'https://127.0.0.1:6443')).toBe(
      'cannot reach the API server at https://127.0.0.1:6443: ECONNREFUSED',
    );
  });

  it('our own errors as they are; anything else on one line', () => {
    expect(describeError(new CliError('blockpull ns/x not found'))).toBe('blockpull ns/x not found');
    expect(describeError(new UsageError('start needs --disk'))).toBe('start needs --disk');
    expect(describeError(new Error('first\n    at stack line'))).toBe('first');
  });
});
