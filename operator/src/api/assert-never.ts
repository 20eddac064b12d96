/** The end of a switch over a union: a member left unhandled fails to compile (and throws if reached). */
export function assertNever(value: never): never {
  throw new Error(`unhandled case: ${JSON.stringify(value)}`);
}
