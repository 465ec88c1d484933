// Fastify 5 under corral. Socket: fd 3 (`listen({ fd: 3 })`). Ready: mode = "listen".
// The recipe turns off Fastify's own closing behaviour (503 while closing, idle connections
// closed at once) and drains the underlying server instead. SHUTDOWN=stock: `app.close()`.
'use strict';
const Fastify = require('fastify');
const { drain } = require('./drain');

const stock = process.env.SHUTDOWN === 'stock';
const app = Fastify(stock ? {} : { return503OnClosing: false, forceCloseConnections: false });
app.get('/', async () => `hello from ${process.pid}\n`);

app.listen({ fd: 3 }).catch((err) => {
  console.error(err);
  process.exit(1);
});

if (stock) {
  process.on('SIGTERM', () => app.close().then(() => process.exit(0)));
} else {
  drain(app.server);
}
