//! Rust axum under corral. Socket: fd 3 via `listenfd` (which checks LISTEN_PID like
//! `sd_listen_fds()`). Ready: mode = "listen" (tokio registers the socket in epoll).
//!
//! The drain, on SIGTERM: a middleware adds `Connection: close` to every response (clients move
//! to another worker after their answer), then after a grace second axum's graceful shutdown
//! stops accepting, closes idle connections and waits for requests in flight. The graceful
//! shutdown alone closes idle keep-alive connections at once, racing requests already sent on
//! them. SHUTDOWN=stock does only that, for comparison.
//!
//!     cargo build --example fw-axum

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{HeaderValue, CONNECTION};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

async fn close_when_draining(State(draining): State<Arc<AtomicBool>>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    if draining.load(Ordering::SeqCst) {
        res.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let listener = listenfd::ListenFd::from_env()
        .take_tcp_listener(0)?
        .ok_or_else(|| std::io::Error::other("no listening socket: run me under corral or a .socket unit"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let draining = Arc::new(AtomicBool::new(false));
    let app = Router::new()
        .route("/", get(|| async { format!("hello from {}\n", std::process::id()) }))
        .layer(middleware::from_fn_with_state(draining.clone(), close_when_draining));
    let stock = std::env::var("SHUTDOWN").as_deref() == Ok("stock");
    let shutdown = async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        term.recv().await;
        if !stock {
            draining.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
