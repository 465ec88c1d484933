// Express 5 under corral. Socket: fd 3 (`app.listen({ fd: 3 })`). Ready: mode = "listen".
// SHUTDOWN=stock uses the usual `server.close()` instead of the drain (for comparison).
'use strict';
const express = require('express');
const { drain } = require('./drain');

const app = express();
app.get('/', (req, res) => res.send(`hello from ${process.pid}\n`));
const server = app.listen({ fd: 3 });

if (process.env.SHUTDOWN === 'stock') {
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
} else {
  drain(server);
}
