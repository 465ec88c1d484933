// The Express-style app from PM2's cluster-mode docs, on Node's plain `http` module (no
// dependencies), adapted to corral: it listens on the socket handed over at fd 3 instead of
// binding a port, so every worker shares one kernel accept queue and corral never touches a
// request.
//
//   GET /health        -> {"status":"ok","pid":...}
//   GET /api/v1/hello  -> Hello from worker <pid>
//
// Readiness: with `[ready] mode = "listen"` (what `corral init` writes) nothing is needed: corral
// sees the worker accept. For mode "notify" (Node cannot send unix datagrams itself) the app runs
// `systemd-notify --ready` once it listens, when that tool is installed (corral accepts it: the
// helper stays in the worker's process group).
'use strict';
const http = require('http');
const { execFile } = require('child_process');

const routes = {
  '/health': (req, res) => json(res, 200, { status: 'ok', pid: process.pid }),
  '/api/v1/hello': (req, res) => text(res, 200, `Hello from worker ${process.pid}\n`),
};

function json(res, code, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function text(res, code, body) {
  res.writeHead(code, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

// For bench/: with BENCH_COUNT_DIR set, each process records how many requests it served in
// BENCH_COUNT_DIR/<pid> (written when it starts listening, then every 100 ms).
let served = 0;
let closing = false;
const countDir = process.env.BENCH_COUNT_DIR;
function writeCount() {
  require('fs').writeFileSync(`${countDir}/${process.pid}`, String(served));
}

const server = http.createServer((req, res) => {
  served++;
  // Stopping: answer what is in flight, but tell keep-alive clients not to send more on this
  // connection, so none of their requests meets a closing socket.
  if (closing) res.setHeader('Connection', 'close');
  const route = routes[req.url];
  if (route) route(req, res);
  else text(res, 404, 'not found\n');
});

const activated = process.env.LISTEN_PID === String(process.pid) && Number(process.env.LISTEN_FDS) >= 1;
const where = activated ? { fd: 3 } : { port: Number(process.env.PORT || 3000), host: '127.0.0.1' };

server.listen(where, () => {
  console.log(`worker ${process.env.CORRAL_WORKER ?? '-'} (pid ${process.pid}) listening`);
  if (countDir) {
    writeCount();
    setInterval(writeCount, 100).unref();
  }
  if (process.env.NOTIFY_SOCKET) {
    execFile('systemd-notify', ['--ready', `--status=serving as pid ${process.pid}`], (err) => {
      // No systemd-notify (a slim container): fine with ready.mode = "listen".
      if (err && err.code !== 'ENOENT') console.error(`systemd-notify failed (${err.message})`);
    });
  }
});

function shutdown() {
  if (closing) return;
  closing = true;
  if (countDir) writeCount();
  // Stop accepting (the shared socket stays open for the other workers). Not http.Server#close:
  // since Node 19 it also cuts idle keep-alive connections, racing requests already on the wire.
  // Each connection instead closes after its next response (Connection: close above), or when
  // the keep-alive timeout ends it; then the process exits. A deadline bounds the drain.
  require('net').Server.prototype.close.call(server, () => process.exit(0));
  setTimeout(() => {
    server.closeAllConnections?.();
    process.exit(0);
  }, 10000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
