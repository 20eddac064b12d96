/** Typed hypervisor errors: the controller maps each code to a status reason. */
export type HypervisorErrorCode =
  | 'DomainNotFound'
  | 'DiskNotFound'
  | 'DiskBusy'
  | 'Unreachable'
  | 'JobFailed'
  | 'JobCanceled'
  | 'InvalidBase'
  | 'CommandFailed'
  /** No block job is active on the disk (an abort of a job that has already ended). */
  | 'NoJob'
  /** An action (start, abort, bandwidth change) did not return within its bound and was ended: it may or may not have taken effect. */
  | 'Timeout';

export class HypervisorError extends Error {
  readonly code: HypervisorErrorCode;
  constructor(code: HypervisorErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HypervisorError';
    this.code = code;
  }
}

export function isHypervisorError(err: unknown, code?: HypervisorErrorCode): err is HypervisorError {
  return err instanceof HypervisorError && (code === undefined || err.code === code);
}
