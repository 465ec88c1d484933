//! Output: the workers' lines to journald with per-worker fields, or to stderr as
//! `name[slot]: line` or JSON ([`journal`]); and the master's own stderr, written without ever
//! blocking the loop ([`stderr`]).

pub mod journal;
pub mod stderr;
