// Express 5 or 4 under corral. Socket: fd 3 (`app.listen({ fd: 3 })`). Ready: mode = "listen".
// SHUTDOWN=stock uses the usual `server.close()` instead of the drain (for comparison).
// EXPRESS=express4 runs Express 4, installed under that name beside Express 5 (package.json:
// "express4": "npm:express@4…"); an app of its own requires 'express' as usual.
'use strict';
const express = require(process.env.EXPRESS || 'express');
const { drain } = require('./drain');

const app = express();
app.get('/', (req, res) => res.send(`hello from ${process.pid}\n`));
const server = app.listen({ fd: 3 });

if (process.env.SHUTDOWN === 'stock') {
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
} else {
  drain(server);
}
