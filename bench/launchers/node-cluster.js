// Node's cluster module running the examples' app in N workers (N = argv[2]).
// Scheduling: Node's default (round-robin in the primary on Linux), or the OS's shared handle
// with NODE_CLUSTER_SCHED_POLICY=none. The primary restarts a worker that dies; SIGHUP is a
// rolling reload as PM2 and most cluster scripts do it: for each old worker in turn, fork a new
// one, wait until it listens, then disconnect the old one (it finishes what it serves).
'use strict';
const cluster = require('cluster');
const path = require('path');
const n = Number(process.argv[2] || 2);
if (cluster.isPrimary) {
  for (let i = 0; i < n; i++) cluster.fork();
  cluster.on('exit', (w, code, signal) => {
    if (!w.exitedAfterDisconnect) cluster.fork();
  });
  let reloading = false;
  process.on('SIGHUP', async () => {
    if (reloading) return;
    reloading = true;
    for (const old of Object.values(cluster.workers)) {
      const fresh = cluster.fork();
      await new Promise((resolve) => fresh.once('listening', resolve));
      old.disconnect();
      await new Promise((resolve) => old.once('exit', resolve));
    }
    reloading = false;
    if (process.env.BENCH_RELOAD_DONE) require('fs').writeFileSync(process.env.BENCH_RELOAD_DONE, String(Date.now()));
  });
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  require(path.join(__dirname, '..', '..', 'examples', 'node', 'app.js'));
}
