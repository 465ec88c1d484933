//! Fuzz targets for everything the master parses from outside: the config file, the workers'
//! notify datagrams, control-socket requests and the metrics endpoint's HTTP request heads.
//!
//! The parsers run under proptest (the stable toolchain has no libFuzzer; proptest's shrinking
//! gives a minimal failing input, kept in `proptest-regressions/` when one is found): arbitrary
//! bytes, and structured inputs mutated from valid ones, which reach deeper than noise.
//! `CORRAL_FUZZ_CASES` sets the cases per target (default 2000, a few seconds in all); a long
//! run is `CORRAL_FUZZ_CASES=1000000 cargo test --release --test fuzz`.
//! The last target throws the same kinds of junk at a running master's sockets and checks that
//! it still supervises and answers.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("CORRAL_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
}

/// The SPEC's example config (also what `config::tests` checks parses to the expected values).
const FULL: &str = include_str!("data/full.toml");

/// A valid text with one random edit: a range cut out, junk put in, or a value replaced.
fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    let len = base.len();
    (0..len, 0..len, prop::collection::vec(any::<u8>(), 0..40), 0u8..3).prop_map(move |(a, b, junk, op)| {
        let (lo, hi) = (a.min(b), a.max(b));
        let junk = String::from_utf8_lossy(&junk).into_owned();
        let lo = (0..=lo).rev().find(|i| base.is_char_boundary(*i)).unwrap_or(0);
        let hi = (hi..=len).find(|i| base.is_char_boundary(*i)).unwrap_or(len);
        match op {
            0 => format!("{}{}", &base[..lo], &base[hi..]),
            1 => format!("{}{junk}{}", &base[..lo], &base[lo..]),
            _ => format!("{}{junk}{}", &base[..lo], &base[hi..]),
        }
    })
}

/// Values of the kinds users get wrong, for every key.
fn junk_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "[a-z0-9%. -]{0,12}".prop_map(|s| format!("{s:?}")),
        Just("\"18446744073709551615s\"".to_string()),
        Just("\"max-18446744073709551615\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("true".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = corral::config::Config::parse(Path::new("/f.toml"), &text, 4);
    }

    #[test]
    fn config_parser_never_panics_on_mutated_configs(text in mutated(FULL)) {
        let _ = corral::config::Config::parse(Path::new("/f.toml"), &text, 4);
    }

    #[test]
    fn config_parser_never_panics_on_any_value_for_any_key(line in 0usize..40, value in junk_value()) {
        // Replace the value of one `key = value` line of the full config.
        let text: String = FULL
            .lines()
            .enumerate()
            .map(|(i, l)| match l.split_once(" = ") {
                Some((k, _)) if i == line => format!("{k} = {value}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        if let Err(e) = corral::config::Config::parse(Path::new("/f.toml"), &text, 4) {
            // Every error points into the file.
            prop_assert!(e.line >= 1 && e.line <= text.lines().count() + 1, "{e}");
        }
    }

    #[test]
    fn notify_parser_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        fields in prop::collection::vec(("(READY|STATUS|WATCHDOG|STOPPING|MAINPID|[A-Z_]{0,8})", "[^\n]{0,20}"), 0..8),
    ) {
        let _ = corral::notify::parse(&bytes);
        let text: String = fields.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let parsed = corral::notify::parse(text.as_bytes());
        prop_assert!(parsed.len() <= fields.len());
    }

    /// A worker's answer, however broken, never panics the parser; whatever it accepts merges
    /// into an exposition that reads back (what Prometheus gets is always well formed).
    #[test]
    fn worker_expositions_never_panic_and_what_is_taken_reads_back(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        lines in prop::collection::vec(prop_oneof![
            "# (HELP|TYPE|UNIT) [a-z_]{1,6}( (counter|gauge|histogram|summary|info|stateset|untyped|[a-z]{0,5}|[^\n]{0,12}))?",
            "[a-z_:]{1,6}(_total|_bucket|_sum|_count|_created|_info)?(\\{([a-z_]{1,4}=\"([^\"\\\\\n]|\\\\[\\\\n\"t])*\",?){0,3}\\})? (-?[0-9.e+]{1,6}|NaN|\\+Inf|-Inf|[a-z]{1,3})( [0-9]{1,4})?",
            "# EOF",
            "[^\n]{0,30}",
        ], 0..12),
        openmetrics in any::<bool>(),
    ) {
        use corral::metrics::exposition::{parse, Merged, Origin};
        let _ = parse(&String::from_utf8_lossy(&bytes), openmetrics);
        let text = lines.join("\n");
        if let Ok(families) = parse(&text, openmetrics) {
            let mut m = Merged::default();
            m.add(families.clone(), &Origin { slot: 1, generation: 2 });
            m.add(families, &Origin { slot: 2, generation: 2 });
            let out = m.render();
            let back = parse(&out, false);
            prop_assert!(back.is_ok(), "{text:?} rendered as {out:?}: {back:?}");
        }
    }

    #[test]
    fn control_requests_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        cmd in "(status|reload|scale|[a-z]{0,6})",
        to in "[-+0-9a-z]{0,25}",
        wait in any::<bool>(),
    ) {
        let _ = corral::control::parse_request(&bytes);
        let json = format!(r#"{{"cmd":"{cmd}","to":"{to}","wait":{wait}}}"#);
        let _ = corral::control::parse_request(json.as_bytes());
        let _ = corral::control::parse_scale(&to);
    }

    #[test]
    fn http_request_heads_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        method in "(GET|HEAD|POST|[A-Z]{0,5})",
        path in "[ -~]{0,40}",
    ) {
        let _ = corral::metrics::request_line(&bytes);
        let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (m, p) = corral::metrics::request_line(head.as_bytes());
        prop_assert!(m.len() <= head.len() && p.len() <= head.len());
    }
}

/// A small deterministic generator for the live target (its seed is printed on failure).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % (max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn a_running_master_survives_junk_on_every_socket() {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let (port, mport) = (free_port(), free_port());
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\"]\nlisten = [\"127.0.0.1:{port}\"]\ninstances = 2\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"
    );
    let mut m = Master::start("fuzzlive", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let pids = m.wait_workers(2);
    let control = m.dir.join("run/pool/control.sock");
    let notify = m.dir.join("run/pool/notify.sock");
    let dgram = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let templates: [&[u8]; 6] = [
        b"GET /metrics HTTP/1.1\r\n\r\n",
        b"GET /health?x HTTP/1.0\n\n",
        br#"{"cmd":"scale","to":"+9223372036854775807"}"#,
        br#"{"cmd":"status"}"#,
        b"READY=1\nWATCHDOG=1\nSTATUS=x",
        b"\x00\xff\n=\n",
    ];
    for i in 0..300 {
        let mut payload = templates[i % templates.len()].to_vec();
        let junk = rng.bytes(64);
        let at = (rng.next() as usize) % (payload.len() + 1);
        payload.splice(at..at, junk);
        match i % 3 {
            0 => {
                if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", mport)) {
                    let _ = s.write_all(&payload);
                }
            }
            1 => {
                if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&control) {
                    let _ = s.write_all(&payload);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
            }
            _ => {
                let _ = dgram.send_to(&payload, &notify);
            }
        }
    }
    // Still supervising: same workers, answers on every socket, requests served.
    let out = std::process::Command::new(CORRAL)
        .args(["status", "pool", "--json"])
        .env("CORRAL_RUNTIME_ROOT", m.dir.join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "seed {seed}: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["desired"], 2, "seed {seed}: junk changed the pool");
    assert_eq!(m.wait_workers(2), pids, "seed {seed}");
    assert!(get(format!("127.0.0.1:{port}").parse().unwrap()).is_ok(), "seed {seed}");
    assert!(m.running(), "seed {seed}");
}
