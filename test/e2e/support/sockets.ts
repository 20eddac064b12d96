import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/** One row of /proc/<pid>/net/tcp or tcp6. */
export interface TcpEntry {
  readonly localPort: number;
  readonly remotePort: number;
  /** Kernel TCP state in hex as printed: '01' ESTABLISHED, '0A' LISTEN, '06' TIME_WAIT, ... */
  readonly state: string;
  readonly inode: number;
}

/** Parse the text of /proc/net/tcp or tcp6 (header line skipped, malformed lines ignored). */
export function parseProcNetTcp(text: string): TcpEntry[] {
  const out: TcpEntry[] = [];
  for (const line of text.split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 10) continue;
    const localPort = Number.parseInt(cols[1]?.split(':')[1] ?? '', 16);
    const remotePort = Number.parseInt(cols[2]?.split(':')[1] ?? '', 16);
    const inode = Number(cols[9]);
    if (!Number.isFinite(localPort) || !Number.isFinite(remotePort) || !Number.isInteger(inode)) continue;
    out.push({ localPort, remotePort, state: cols[3] ?? '', inode });
  }
  return out;
}

/** Socket inodes of a process's open file descriptors (/proc/<pid>/fd -> 'socket:[N]'). */
export function socketInodes(pid: number | 'self' = 'self'): Set<number> {
  const out = new Set<number>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m !== null) out.add(Number(m[1]));
  }
  return out;
}

/**
 * ESTABLISHED TCP connections that process `pid` (default: this one) holds to `remotePort`:
 * /proc/net/tcp lists the whole network namespace, so rows are kept only when their inode is
 * one of the process's open sockets.
 */
export function tcpConnectionsTo(remotePort: number, pid: number | 'self' = 'self'): number {
  const mine = socketInodes(pid);
  let n = 0;
  for (const f of ['tcp', 'tcp6']) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${f}`, 'utf8');
    } catch {
      continue;
    }
    for (const e of parseProcNetTcp(text))
      if (e.state === '01' && e.remotePort === remotePort && mine.has(e.inode)) n++;
  }
  return n;
}
