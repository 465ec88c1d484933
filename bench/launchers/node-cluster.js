// Node's cluster module running the examples' app in N workers (N = argv[2]).
// Scheduling: Node's default (round-robin in the primary on Linux), or the OS's shared handle
// with NODE_CLUSTER_SCHED_POLICY=none. The primary restarts a worker that dies.
'use strict';
const cluster = require('cluster');
const path = require('path');
const n = Number(process.argv[2] || 2);
if (cluster.isPrimary) {
  for (let i = 0; i < n; i++) cluster.fork();
  cluster.on('exit', (w, code, signal) => {
    if (!w.exitedAfterDisconnect) cluster.fork();
  });
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  require(path.join(__dirname, '..', '..', 'examples', 'node', 'app.js'));
}
