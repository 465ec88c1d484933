//! The operating-system edge: the only code where `unsafe` is allowed (the crate root denies it,
//! so the compiler holds the rule). Every `unsafe` block here carries a `// SAFETY:` note.
//!
//! - [`spawn`]: fork and exec of one worker; between the two only async-signal-safe system calls,
//!   with `LISTEN_PID` written into a reserved envp buffer.
//! - [`fds`]: taking ownership of the descriptors systemd handed over (`LISTEN_FDS`).
//! - [`priority`]: the nice value of a worker's process group (`reload.start_nice`).
//! - [`memory`]: freed heap memory given back to the kernel (`malloc_trim`).
//! - [`peer`]: the supplementary groups of a control-socket client (`SO_PEERGROUPS`).

#![allow(unsafe_code)]

pub mod fds;
pub mod memory;
pub mod peer;
pub mod priority;
pub mod spawn;
