/**
 * The non-root user QEMU runs as, like virt-launcher's uid 107 "qemu". Created when missing (idempotent).
 * uid 107 is used when free; otherwise useradd picks a free system uid (reported by ensureQemuUser).
 */
import { run } from '../support/process.ts';

export const QEMU_USER = 'bpqemu';
export const PREFERRED_UID = 107;

export interface UserIds {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  readonly home: string;
}

async function getent(db: 'passwd' | 'group', key: string): Promise<string[] | undefined> {
  try {
    const { stdout } = await run(['getent', db, key]);
    return stdout.trim().split(':');
  } catch {
    return undefined; // getent exits 2 when the key is absent
  }
}

function toIds(fields: string[]): UserIds {
  const [name, , uid, gid, , home] = fields;
  return { name: name ?? '', uid: Number(uid), gid: Number(gid), home: home ?? '/' };
}

let pending: Promise<UserIds> | undefined;

export function ensureQemuUser(name: string = QEMU_USER): Promise<UserIds> {
  pending ??= (async () => {
    const existing = await getent('passwd', name);
    if (existing !== undefined) return toIds(existing);
    const uidFree = (await getent('passwd', String(PREFERRED_UID))) === undefined;
    const gidFree = (await getent('group', String(PREFERRED_UID))) === undefined;
    const args = [
      '--system',
      '--user-group',
      '--no-create-home',
      '--home-dir',
      '/nonexistent',
      '--shell',
      '/usr/sbin/nologin',
    ];
    if (uidFree) args.push('--uid', String(PREFERRED_UID));
    if (uidFree && gidFree) args.push('--key', `GID_MIN=${PREFERRED_UID}`, '--key', `GID_MAX=${PREFERRED_UID}`);
    try {
      await run(['useradd', ...args, name]);
    } catch (err) {
      // A concurrent creator may have won the race.
      if ((await getent('passwd', name)) === undefined) throw err;
    }
    const created = await getent('passwd', name);
    if (created === undefined) throw new Error(`useradd ${name} succeeded but the user is absent`);
    return toIds(created);
  })().catch((err: unknown) => {
    pending = undefined;
    throw err;
  });
  return pending;
}
