pub mod config;
pub mod pool;
