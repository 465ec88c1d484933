// A Node worker for the `ready.mode = "ipc"` tests: it serves HTTP on fd 3 and calls
// process.send('ready') (PM2's wait_ready) as told by its environment:
//   READY_AFTER=MS  wait this long after listening (default 0)
//   FLOOD=N         first send N junk messages of 1 KiB (as a chatty PM2 module would)
//   MARKER=DIR      write DIR/<pid> just before process.send('ready')
//   NEVER=1         never send 'ready'
//   PING_EVERY=MS   send 'ping' this often (a closed channel then crashes the worker: Node
//                   emits ERR_IPC_CHANNEL_CLOSED as an unhandled 'error')
'use strict';
const http = require('http');
const fs = require('fs');
const server = http.createServer((req, res) => res.end(`${process.pid}\n`));
process.on('SIGTERM', () => process.exit(0));
server.listen({ fd: 3 }, () => {
  const junk = 'x'.repeat(1024);
  for (let i = 0; i < Number(process.env.FLOOD || 0); i++) {
    process.send({ type: 'axm:monitor', data: junk, i });
  }
  if (process.env.PING_EVERY) setInterval(() => process.send('ping'), Number(process.env.PING_EVERY));
  setTimeout(() => {
    if (process.env.NEVER) return;
    if (process.env.MARKER) fs.writeFileSync(`${process.env.MARKER}/${process.pid}`, 'ready');
    process.send('ready');
  }, Number(process.env.READY_AFTER || 0));
});
