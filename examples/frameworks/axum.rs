//! Rust axum under corral. Socket: fd 3 via `listenfd` (which checks LISTEN_PID like
//! `sd_listen_fds()`). Ready: mode = "listen" (tokio registers the socket in epoll).
//!
//! The drain, on SIGTERM: stop accepting (the listener below stops taking connections: they
//! stay in the shared queue for the other workers), a middleware adds `Connection: close` to
//! every response (clients move to another worker after their answer), then after a grace
//! second axum's graceful shutdown closes the connections left idle and waits for requests in
//! flight. The graceful shutdown alone closes idle keep-alive connections at once, and those
//! just accepted whose request has not arrived, racing requests already on the wire.
//! SHUTDOWN=stock does only that, for comparison.
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
use axum::serve::Listener;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A listener that stops accepting once draining starts.
struct DrainingListener {
    inner: TcpListener,
    draining: watch::Receiver<bool>,
}

impl Listener for DrainingListener {
    type Io = TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (TcpStream, std::net::SocketAddr) {
        loop {
            if *self.draining.borrow() {
                std::future::pending::<()>().await;
            }
            tokio::select! {
                _ = self.draining.changed() => {}
                accepted = self.inner.accept() => match accepted {
                    Ok(conn) => return conn,
                    // Out of descriptors, say: wait a little, as axum's own listener does.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

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
    let inner = TcpListener::from_std(listener)?;
    let (stop_accepting, stopped) = watch::channel(false);
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
            let _ = stop_accepting.send(true);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    if stock {
        axum::serve(inner, app).with_graceful_shutdown(shutdown).await
    } else {
        axum::serve(DrainingListener { inner, draining: stopped }, app).with_graceful_shutdown(shutdown).await
    }
}
