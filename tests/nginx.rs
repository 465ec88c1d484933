//! NGINX in front of a corral pool, with examples/nginx/myapi.conf as shipped: Debian's nginx
//! (unpacked into target/nginx by scripts/test.sh) runs in a temporary prefix and proxies to a
//! pool of the test worker over TCP and over a unix socket, while the pool does rolling
//! reloads under a bounded request stream (new connections and keep-alive): no 502, no failed
//! request.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

const SITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nginx/myapi.conf");
const RELOADS: usize = 8;

fn nginx_binary() -> String {
    let unpacked = concat!(env!("CARGO_MANIFEST_DIR"), "/target/nginx/usr/sbin/nginx");
    if std::path::Path::new(unpacked).exists() {
        return unpacked.into();
    }
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("no nginx: scripts/test.sh unpacks Debian's into target/nginx");
}

struct Nginx {
    child: Child,
    dir: TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of the master and its worker processes.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGQUIT,
        );
        let deadline = std::time::Instant::now() + TIMEOUT;
        while self.child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- nginx error log ----\n{}",
                std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
            );
        }
    }
}

/// Run NGINX with the example site, its upstream pointed at `upstream` (as the site's
/// `server` line spells it) and listening on `port`.
fn nginx(upstream: &str, port: u16) -> Nginx {
    let dir = TempDir::new("nginx");
    let site = std::fs::read_to_string(SITE).unwrap();
    let site = site
        .replace("server 127.0.0.1:3000 ", &format!("server {upstream} "))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("listen [::]:80;\n", "");
    assert!(site.contains(upstream), "the example's upstream line moved: update this test");
    std::fs::write(dir.join("site.conf"), site).unwrap();
    let d = dir.path().display();
    let conf = format!(
        "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           include {d}/site.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let bin = nginx_binary();
    let t = Command::new(&bin)
        .args(["-t", "-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-c"])
        .arg(dir.join("nginx.conf"))
        .output()
        .unwrap();
    assert!(t.status.success(), "nginx -t: {}", String::from_utf8_lossy(&t.stderr));
    let child = Command::new(&bin)
        .args(["-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-g", "daemon off;", "-c"])
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let n = Nginx { child, dir };
    wait_until("nginx listens", TIMEOUT, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    n
}

fn through_reloads(tag: &str, listen: &str, upstream: &str) {
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\"]\ninstances = 2\nlisten = [\"{listen}\"]\n[stop]\ntimeout = \"10s\"\n"
    );
    let mut m = Master::start(tag, &cfg, Options::default());
    m.systemd().wait("READY=1");
    let port = free_port();
    let _nginx = nginx(upstream, port);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    get(addr).expect("nginx proxies to the pool");
    let stop = Arc::new(AtomicBool::new(false));
    let fresh = load(addr, 2, false, stop.clone());
    let kept = load(addr, 2, true, stop.clone());
    for i in 0..RELOADS {
        let (code, out, err) = m.cli(&["reload", "pool"]);
        assert_eq!(code, Some(0), "reload {i}: {out}{err}");
    }
    stop.store(true, Ordering::SeqCst);
    let (fresh, kept) = (fresh.join().unwrap(), kept.join().unwrap());
    let bad_gateway =
        |r: &LoadResult| r.errors.iter().filter(|(e, _)| e.contains(" 502 ")).map(|(_, n)| n).sum::<usize>();
    eprintln!(
        "{tag}: {RELOADS} reloads; new connections: {} ok, {} failed ({} 502); keep-alive: {} ok, {} failed ({} 502), {} idle closes",
        fresh.ok,
        fresh.failed,
        bad_gateway(&fresh),
        kept.ok,
        kept.failed,
        bad_gateway(&kept),
        kept.retried_idle_close
    );
    assert!(fresh.ok > 0 && kept.ok > 0);
    assert_eq!(
        (fresh.failed, kept.failed),
        (0, 0),
        "new connections: {:?}; keep-alive: {:?}",
        fresh.errors,
        kept.errors
    );
    // NGINX keeps its client connections whatever the pool does.
    assert_eq!(kept.retried_idle_close, 0);
    let served: std::collections::BTreeSet<i32> = fresh.pids.keys().chain(kept.pids.keys()).copied().collect();
    assert!(served.len() > 2, "requests reached more than one generation of workers: {served:?}");
}

#[test]
fn nginx_in_front_sees_no_502_through_rolling_reloads_over_tcp() {
    let port = free_port();
    through_reloads("nginx-tcp", &format!("127.0.0.1:{port}"), &format!("127.0.0.1:{port}"));
}

#[test]
fn nginx_in_front_sees_no_502_through_rolling_reloads_over_a_unix_socket() {
    let dir = TempDir::new("nginx-sock");
    let path = dir.join("http.sock");
    through_reloads("nginx-unix", &format!("unix:{}", path.display()), &format!("unix:{}", path.display()));
}
