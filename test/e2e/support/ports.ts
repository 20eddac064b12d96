/** Loopback TCP ports: free ones to start daemons on, and waiting until a stopped daemon's are free. */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** Loopback TCP ports in LISTEN state (from /proc/net/tcp and tcp6). */
export function listeningPorts(): Set<number> {
  const out = new Set<number>();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] !== '0A') continue; // LISTEN
      const port = Number.parseInt(cols[1]?.split(':')[1] ?? '', 16);
      if (Number.isFinite(port)) out.add(port);
    }
  }
  return out;
}

export async function waitPortsFree(ports: readonly number[], timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const busy = ports.filter((p) => listeningPorts().has(p));
    if (busy.length === 0) return;
    if (Date.now() > deadline) throw new Error(`ports still listening after stop: ${busy.join(', ')}`);
    await sleep(50);
  }
}

/** `count` distinct free loopback ports (bound then released; callers retry on the rare race). */
export async function freePorts(count: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const s = net.createServer();
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(0, '127.0.0.1', resolve);
      });
      servers.push(s);
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}
