// Hono on Node under corral. Socket: fd 3. `@hono/node-server`'s `serve()` takes a port, not a
// descriptor: build the server with `createAdaptorServer` and listen on fd 3 yourself. Ready:
// mode = "listen". SHUTDOWN=stock uses the usual `server.close()` instead of the drain.
'use strict';
const { Hono } = require('hono');
const { createAdaptorServer } = require('@hono/node-server');
const { drain } = require('./drain');

const app = new Hono();
app.get('/', (c) => c.text(`hello from ${process.pid}\n`));
const server = createAdaptorServer({ fetch: app.fetch });
server.listen({ fd: 3 });

if (process.env.SHUTDOWN === 'stock') {
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
} else {
  drain(server);
}
