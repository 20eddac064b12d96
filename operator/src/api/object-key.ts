/**
 * The one key format of the operator's work queue, caches and memory: "namespace/name" (or
 * "name" for a cluster-scoped object), as client-go's MetaNamespaceKeyFunc makes it.
 */

/** The key of an object: "namespace/name", or "name" when it has no namespace. */
export function objectKey(obj: {
  readonly metadata?: { readonly namespace?: string | undefined; readonly name?: string | undefined } | undefined;
}): string {
  const ns = obj.metadata?.namespace;
  const name = obj.metadata?.name ?? '';
  return ns ? `${ns}/${name}` : name;
}

/** The namespace and name of a key (namespace "" for a cluster-scoped one). */
export function splitKey(key: string): { namespace: string; name: string } {
  const i = key.indexOf('/');
  return i < 0 ? { namespace: '', name: key } : { namespace: key.slice(0, i), name: key.slice(i + 1) };
}
