import { readFileSync } from 'node:fs';

/**
 * Last `lines` lines of a log file, for error messages (a trailing newline does not count as a line);
 * '(no log)' when the file is missing or unreadable. The one log tail of the test tooling.
 */
export function tail(file: string, lines = 30): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}
