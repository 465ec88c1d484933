// Express 4 under corral: the same recipe as Express 5 (express.js). Socket: fd 3
// (`app.listen({ fd: 3 })`). Ready: mode = "listen". SHUTDOWN=stock uses the usual
// `server.close()` instead of the drain (for comparison).
// Installed under the name `express4` (package.json: "express4": "npm:express@4…") beside
// Express 5; an app of its own requires 'express' as usual.
'use strict';
const express = require('express4');
const { drain } = require('./drain');

const app = express();
app.get('/', (req, res) => res.send(`hello from ${process.pid}\n`));
const server = app.listen({ fd: 3 });

if (process.env.SHUTDOWN === 'stock') {
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
} else {
  drain(server);
}
