// Graceful drain for a Node HTTP server under corral: loses no request, keep-alive included.
//
// On SIGTERM (corral's stop signal, sent once the worker's replacement is ready):
//   1. stop accepting: other workers take new connections from the shared socket;
//   2. answer every request still arriving on open connections, with `Connection: close`, so
//      each client moves to another worker after its answer instead of reusing this one;
//   3. only after `grace` ms, end the connections that stayed idle (no request in flight);
//   4. exit once every connection is closed (corral SIGKILLs at `stop.timeout`: keep grace
//      well below it).
// Node's own `server.close()` does step 1 and, since Node 19, also closes idle keep-alive
// connections at once: a request the client already sent on one of them is lost (ECONNRESET).
// This closes the listening socket with net.Server's close instead, which leaves them open.
'use strict';
const net = require('net');

function drain(server, { grace = 1000, signal = 'SIGTERM', onDrained = () => process.exit(0) } = {}) {
  let closing = false;
  const inFlight = new Map(); // socket -> requests being answered
  const sockets = new Set();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => {
      sockets.delete(socket);
      inFlight.delete(socket);
    });
  });
  // First among the 'request' listeners: the app may answer synchronously in its own.
  server.prependListener('request', (req, res) => {
    const socket = req.socket;
    inFlight.set(socket, (inFlight.get(socket) || 0) + 1);
    if (closing) res.setHeader('Connection', 'close');
    res.on('close', () => {
      const n = (inFlight.get(socket) || 1) - 1;
      if (n > 0) inFlight.set(socket, n);
      else inFlight.delete(socket);
    });
  });
  process.once(signal, () => {
    closing = true;
    net.Server.prototype.close.call(server, () => onDrained());
    setTimeout(() => {
      for (const socket of sockets) if (!inFlight.has(socket)) socket.end();
    }, grace).unref();
  });
}

module.exports = { drain };
