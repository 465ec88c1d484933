//! `corral top` in a pseudo-terminal of 80×24 (util-linux `script` gives it one): it draws each
//! worker's row, `+` scales up, `r` reloads, `q` quits and gives the terminal back. With its
//! output not a terminal, it prints the status table each refresh.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;

/// The 80×24 screen the terminal shows after receiving `raw`.
fn screen_text(raw: &[u8]) -> String {
    let mut vt = vt100::Parser::new(24, 80, 0);
    vt.process(raw);
    vt.screen().contents()
}

#[test]
fn top_in_a_terminal_shows_every_worker_and_its_keys_scale_and_reload() {
    let p = TestPool::start("top", ", \"--status\", \"serving\"", "");
    let workers = p.m.wait_workers(2);
    let cmd = format!("stty cols 80 rows 24; exec '{CORRAL}' top pool");
    let mut top = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("CORRAL_RUNTIME_ROOT", p.m.dir.join("run"))
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux)");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        let mut out = top.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let screen = || screen_text(&seen.lock().unwrap());
    // Each worker's row: its pid, its state, its own STATUS=, under the table's header.
    wait_until("top draws both workers", TIMEOUT, || {
        let s = screen();
        s.contains("2/2 ready") && s.contains("HISTORY") && workers.iter().all(|w| s.contains(&w.to_string()))
    });
    assert!(screen().contains("serving"), "{}", screen());
    let mut keys = top.stdin.take().unwrap();

    keys.write_all(b"+").unwrap();
    keys.flush().unwrap();
    wait_until("+ scaled the pool to 3", TIMEOUT, || p.status()["desired"] == 3);
    wait_until("top shows 3/3 ready and what + did", TIMEOUT, || {
        let s = screen();
        s.contains("3/3 ready") && s.contains("scale +1")
    });

    keys.write_all(b"r").unwrap();
    keys.flush().unwrap();
    wait_until("r reloaded the pool", TIMEOUT, || p.status()["last_reload"]["generation"] == 2);
    wait_until("top shows the reload", TIMEOUT, || screen().contains("last reload ok (gen 2)"));

    keys.write_all(b"q").unwrap();
    keys.flush().unwrap();
    let status = wait_for("top to quit", TIMEOUT, || top.try_wait().ok().flatten());
    assert!(status.success(), "{status:?}");
    reader.join().unwrap();
    // It gave the terminal back: left the alternate screen it drew in.
    let raw = seen.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("\x1b[?1049h") && text.rfind("\x1b[?1049l") > text.rfind("\x1b[?1049h"));
    p.m.wait_workers(3);
    // The pool still serves.
    assert!(p.answers().iter().all(|a| a.contains("generation 2")));
}

#[test]
fn top_into_a_pipe_prints_the_status_table_each_refresh() {
    let p = TestPool::start("top-plain", "", "");
    let out = Command::new(CORRAL)
        .args(["top", "pool", "-n", "2"])
        .env("CORRAL_RUNTIME_ROOT", p.m.dir.join("run"))
        .stdin(Stdio::null())
        .output()
        .expect("run corral top");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("SLOT").count(), 2, "two refreshes: {text}");
    assert!(!text.contains('\x1b'), "no escape sequences into a pipe: {text:?}");
    let (code, _, err) = p.m.cli(&["top", "nosuchpool", "-n", "1"]);
    assert_eq!(code, Some(1), "{err}");
}
