import net from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { parseProcNetTcp, tcpConnectionsTo } from './sockets.ts';

const SAMPLE = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:921D 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41892 2 0000000012096e1c 100 0 0 10 0
   1: 0100007F:D2F4 0100007F:921D 01 00000000:00000000 02:000A3A1C 00000000     0        0 52011 2 00000000b1828252 20 4 30 10 -1
   2: garbage
`;

describe('parseProcNetTcp', () => {
  it('reads ports (hex), state and inode; skips the header and malformed lines', () => {
    expect(parseProcNetTcp(SAMPLE)).toEqual([
      { localPort: 0x921d, remotePort: 0, state: '0A', inode: 41892 },
      { localPort: 0xd2f4, remotePort: 0x921d, state: '01', inode: 52011 },
    ]);
  });
});

describe('tcpConnectionsTo', () => {
  const server = net.createServer();
  const clients: net.Socket[] = [];
  afterAll(() => {
    for (const c of clients) c.destroy();
    server.close();
  });

  it('counts this process own established connections to a port', async () => {
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    expect(tcpConnectionsTo(port)).toBe(0);
    for (let i = 0; i < 3; i++) {
      const c = net.connect(port, '127.0.0.1');
      clients.push(c);
      await new Promise<void>((r) => c.on('connect', () => r()));
    }
    // The server's accepted ends are ours too but point the other way (remote = client port).
    expect(tcpConnectionsTo(port)).toBe(3);
    clients.pop()?.destroy();
    await expect.poll(() => tcpConnectionsTo(port)).toBe(2);
  });
});
