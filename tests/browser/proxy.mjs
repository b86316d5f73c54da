// A TCP proxy between the page and the server that a test can cut: every open connection
// is reset at once, as when a network path dies, and for a while new ones are refused.
import net from 'node:net';

export async function startProxy(targetPort, targetHost = '127.0.0.1') {
  const sockets = new Set();
  let downUntil = 0;
  const server = net.createServer((client) => {
    if (Date.now() < downUntil) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(targetPort, targetHost);
    sockets.add(client);
    sockets.add(upstream);
    const drop = () => {
      sockets.delete(client);
      sockets.delete(upstream);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve); // loopback only
  });
  return {
    port: server.address().port,
    /** Resets every open connection; new ones are refused for `downMs`. Returns how many
     *  connections were cut. */
    cut(downMs = 0) {
      downUntil = Date.now() + downMs;
      const n = sockets.size;
      for (const s of [...sockets]) s.resetAndDestroy();
      sockets.clear();
      return n;
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
