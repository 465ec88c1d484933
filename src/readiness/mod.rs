//! The ready modes the master observes itself, rather than being told by the worker
//! (`READY=1` over the notify socket is the notify module's):
//! - [`listen`] ("listen"): a worker waiting for connections on an inherited socket, seen in
//!   /proc (no change to the app);
//! - [`ipc`] ("ipc"): Node's `process.send('ready')` over `NODE_CHANNEL_FD`, PM2's `wait_ready`.

pub mod ipc;
pub mod listen;
