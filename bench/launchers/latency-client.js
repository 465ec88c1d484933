// A load client that records every request: `node latency-client.js PORT SECONDS CONC CLOSE OUT`.
// CONC loops each send one request at a time (a new connection per request when CLOSE is 1,
// else keep-alive) for SECONDS, and OUT gets JSON lines of [start_ms, latency_ms, ok] relative
// to the client's start: the latency time series around a reload (bench/reload_latency.py).
'use strict';
const http = require('http');
const fs = require('fs');
const [port, seconds, conc, close, out] = process.argv.slice(2);
const agent = close === '1' ? new http.Agent({ keepAlive: false }) : new http.Agent({ keepAlive: true, maxSockets: Number(conc) });
const t0 = process.hrtime.bigint();
const now = () => Number(process.hrtime.bigint() - t0) / 1e6;
const end = Number(seconds) * 1000;
const rows = [];
function one() {
  return new Promise((resolve) => {
    const start = now();
    const req = http.get({ host: '127.0.0.1', port: Number(port), path: '/api/v1/hello', agent,
      headers: close === '1' ? { Connection: 'close' } : {} }, (res) => {
      res.resume();
      res.on('end', () => { rows.push([start, now() - start, res.statusCode === 200 ? 1 : 0]); resolve(); });
    });
    req.setTimeout(5000, () => req.destroy(new Error('timeout')));
    req.on('error', () => { rows.push([start, now() - start, 0]); resolve(); });
  });
}
async function loop() {
  while (now() < end) await one();
}
Promise.all(Array.from({ length: Number(conc) }, loop)).then(() => {
  fs.writeFileSync(out, rows.map((r) => JSON.stringify(r)).join('\n'));
  process.exit(0);
});
