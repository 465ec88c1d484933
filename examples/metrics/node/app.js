// A Node app whose own metrics corral merges with every other worker's (docs/metrics.md).
// prom-client's default metrics include nodejs_eventloop_lag_seconds: the event-loop latency
// PM2's dashboard shows.
const http = require('node:http');
const client = require('prom-client');

client.collectDefaultMetrics();
const requests = new client.Counter({ name: 'http_requests_total', help: 'Requests served.', labelNames: ['code'] });

http.createServer((req, res) => {
  requests.inc({ code: 200 });
  res.end(`slot ${process.env.CORRAL_WORKER}\n`);
}).listen({ fd: 3 });

// corral asks each worker for its registry here when Prometheus scrapes corral's /metrics.
if (process.env.CORRAL_METRICS_SOCKET) {
  http.createServer(async (req, res) => {
    res.setHeader('Content-Type', client.register.contentType);
    res.end(await client.register.metrics());
  }).listen(process.env.CORRAL_METRICS_SOCKET);
}
