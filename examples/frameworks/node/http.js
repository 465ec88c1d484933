// Plain Node `http` under corral. Socket: fd 3 (`listen({ fd: 3 })`). Ready: mode = "listen".
// SHUTDOWN=stock uses Node's usual `server.close()` instead of the drain (for comparison).
'use strict';
const http = require('http');
const { drain } = require('./drain');

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end(`hello from ${process.pid}\n`);
});
server.listen({ fd: 3 });

if (process.env.SHUTDOWN === 'stock') {
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
} else {
  drain(server);
}
