//! Config parsing: defaults, every error with its line and column, instance resolution.

use nix::sys::signal::Signal;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/corral/api.toml"), text, 8)
}

fn err(text: &str) -> String {
    parse(text).expect_err("config should be rejected").to_string()
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse("command = [\"node\", \"index.js\"]\n").unwrap();
    assert_eq!(c.name, "api");
    assert_eq!(c.instances, 1);
    assert_eq!(c.ready.mode, ReadyMode::Listen);
    assert_eq!(c.stop.signal, Sig(Signal::SIGTERM));
    assert_eq!(c.restart.max_restarts, 10);
    assert_eq!(c.restart.max_delay, Dur(Duration::from_secs(10)));
    assert_eq!(c.batch(4), 1);
}

#[test]
fn full_config_from_the_spec_parses() {
    // The SPEC's example config, also the fuzz targets' seed (tests/fuzz.rs).
    let text = include_str!("../../tests/data/full.toml");
    let c = parse(text).unwrap();
    assert_eq!(c.instances, 8);
    assert_eq!(c.batch(8), 2);
    assert_eq!(c.limits.memory, Some(Size(300 * 1024 * 1024)));
    assert_eq!(c.listen.len(), 3);
    assert_eq!(c.listen[2], ListenAddr::Port(8080));
    assert_eq!(c.recycle.unwrap().after, Dur(Duration::from_secs(86400)));
}

#[test]
fn errors_point_at_line_and_column() {
    let cases: &[(&str, &str)] = &[
        ("command = [\"x\"]\nbogus = 1\n", "api.toml:2:1: unknown field `bogus`"),
        ("command = [\"x\"]\ninstances = 0\n", "api.toml:2:13: instances must be at least 1"),
        ("command = [\"x\"]\ninstances = \"lots\"\n", "api.toml:2:13: invalid instances \"lots\""),
        ("command = []\n", "api.toml:1:11: command must not be empty"),
        ("command = \"node x.js\"\n", "api.toml:1:11: command must be an array of strings"),
        ("command = [\"x\"]\n[stop]\ntimeout = \"soon\"\n", "api.toml:3:11: invalid duration \"soon\""),
        ("command = [\"x\"]\n[limits]\nmemory = \"lots\"\n", "api.toml:3:10: invalid size \"lots\""),
        ("command = [\"x\"]\n[stop]\nsignal = \"SIGFOO\"\n", "api.toml:3:10: unknown signal \"SIGFOO\""),
        ("command = [\"x\"]\n[ready]\nmode = \"soon\"\n", "api.toml:3:8: unknown variant `soon`"),
        ("command = [\"x\"]\nlisten = [\"nowhere\"]\n", "api.toml:2:11: invalid listen address \"nowhere\""),
        ("command = [\"x\"]\nworkdir = \"srv\"\n", "api.toml:2:11: workdir must be an absolute path"),
        ("command = [\"x\"]\nenv = { LISTEN_FDS = \"1\" }\n", "api.toml:2:9: LISTEN_FDS is set by corral"),
        (
            "command = [\"x\"]\n[restart]\ndelay = \"10s\"\nmax_delay = \"1s\"\n",
            "api.toml:4:13: restart.max_delay must not be shorter",
        ),
        ("command = [\"x\"]\n[reload]\nbatch = 0\n", "api.toml:3:9: reload.batch must be"),
        ("name = \"a b\"\ncommand = [\"x\"]\n", "api.toml:1:8: invalid pool name \"a b\""),
        ("[ready]\nmode = \"spawn\"\n", "api.toml:1:1: missing `command`"),
        ("command = [\"x\"\n", "api.toml:1:"),
        ("name = \"..\"\ncommand = [\"x\"]\n", "api.toml:1:8: invalid pool name \"..\""),
        ("name = \".\"\ncommand = [\"x\"]\n", "api.toml:1:8: invalid pool name"),
        ("name = \"a/b\"\ncommand = [\"x\"]\n", "api.toml:1:8: invalid pool name"),
        ("name = \"-x\"\ncommand = [\"x\"]\n", "api.toml:1:8: invalid pool name"),
        ("command = [\"x\"]\ninstances = 100000\n", "api.toml:2:13: instances = 100000 is more than corral runs"),
        ("command = [\"x\"]\ninstances = 9223372036854775807\n", "api.toml:2:13: instances ="),
        ("command = [\"x\"]\n[reload]\nbatch = 5000\n", "api.toml:3:9: reload.batch must be"),
        (
            "command = [\"x\"]\n[reload]\nstart_nice = 20\n",
            "api.toml:3:14: start_nice must be from 0 (off) to 19, not 20",
        ),
        ("command = [\"x\"]\n[reload]\nstart_nice = -1\n", "api.toml:3:14: start_nice must be from 0 (off) to 19"),
        ("command = [\"x\"]\n[limits]\ninterval = \"1ns\"\n", "api.toml:3:12: limits.interval must be at least 100ms"),
    ];
    for (text, want) in cases {
        let got = err(text);
        assert!(got.contains(want), "for {text:?}\n got: {got}\nwant: {want}");
    }
}

#[test]
fn instances_resolve_against_cpus() {
    let table = [
        ("1", 4, 1),
        ("max", 4, 4),
        ("max-1", 4, 3),
        ("max-1", 1, 1),
        ("max-8", 4, 1),
        ("50%", 4, 2),
        ("50%", 3, 2),
        ("50%", 1, 1),
        ("100%", 2, 2),
    ];
    for (spec, cpus, want) in table {
        let i: Instances = spec.parse().unwrap();
        assert_eq!(i.resolve(cpus), want, "{spec} on {cpus} cpus");
    }
    assert!("0%".parse::<Instances>().is_err());
    assert!("101%".parse::<Instances>().is_err());
    assert!("0".parse::<Instances>().is_err());
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("é=\nx", 2), (1, 2));
}

#[test]
fn config_lookup_order() {
    assert_eq!(locate(Some(Path::new("a.toml")), Some("b.toml"), Some("n")), PathBuf::from("a.toml"));
    assert_eq!(locate(None, Some("b.toml"), Some("n")), PathBuf::from("b.toml"));
    assert_eq!(locate(None, None, Some("n")), PathBuf::from("/etc/corral/n.toml"));
    assert_eq!(locate(None, Some(""), None), PathBuf::from("corral.toml"));
}

#[test]
fn durations_beyond_what_the_runtime_represents_are_refused_where_they_are_written() {
    let huge = "\"18446744073709551615s\"";
    let cases = [
        ("ready", "timeout"),
        ("ready", "delay"),
        ("stop", "timeout"),
        ("restart", "delay"),
        ("restart", "max_delay"),
        ("restart", "min_uptime"),
        ("restart", "window"),
        ("limits", "interval"),
        ("watchdog", "timeout"),
        ("recycle", "after"),
        ("recycle", "jitter"),
    ];
    for (table, key) in cases {
        let extra = if table == "recycle" && key == "jitter" { "after = \"1h\"\n" } else { "" };
        let text = format!("command = [\"x\"]\n[{table}]\n{extra}{key} = {huge}\n");
        let line = 3 + extra.lines().count();
        let col = key.len() + 4;
        let want = format!("api.toml:{line}:{col}: duration \"18446744073709551615s\" is too long");
        let got = err(&text);
        assert!(got.contains(&want), "[{table}] {key}\n got: {got}\nwant: {want}");
    }
    // The bound itself is accepted: a year fits.
    parse("command = [\"x\"]\n[recycle]\nafter = \"1y\"\njitter = \"366d\"\n").unwrap();
    assert!(err("command = [\"x\"]\n[recycle]\nafter = \"367d\"\n").contains("too long"));
}

#[test]
fn checks_after_parsing_point_at_the_right_table_whatever_the_layout() {
    // Every table with a `timeout`, with an earlier valid `timeout` in another table: the error
    // names the line of the bad one.
    let cases = [
        ("[stop]\ntimeout = \"3s\"\n[watchdog]\ntimeout = \"1ms\"\n", "5:11: watchdog.timeout must be at least 10ms"),
        ("[stop]\ntimeout = \"3s\"\n[ready]\ntimeout = \"0s\"\n", "5:11: ready.timeout must be longer than 0"),
        ("[watchdog]\ntimeout = \"1s\"\n[ready]\ntimeout = \"0s\"\n", "5:11: ready.timeout must be longer than 0"),
        ("[ready]\ntimeout = \"1s\"\n[watchdog]\ntimeout = \"0s\"\n", "5:11: watchdog.timeout must be at least 10ms"),
        // Inline tables and dotted keys.
        ("stop = { timeout = \"1s\" }\nwatchdog = { timeout = \"1ms\" }\n", "3:24: watchdog.timeout"),
        ("stop.timeout = \"1s\"\nwatchdog.timeout = \"1ms\"\n", "3:20: watchdog.timeout"),
        ("[restart]\nwindow = \"0s\"\n[limits]\ninterval = \"1s\"\n", "3:10: restart.window must be longer than 0"),
    ];
    for (tables, want) in cases {
        let text = format!("command = [\"x\"]\n{tables}");
        let got = err(&text);
        assert!(got.contains(&format!("api.toml:{want}")), "for {text:?}\n got: {got}\nwant: {want}");
    }
}

#[test]
fn pool_names_follow_one_rule() {
    for good in ["api", "my-api", "api_2", "a.b", "_x", "api@blue", &"a".repeat(64)] {
        assert_eq!(check_pool_name(good).as_deref(), Ok(good), "{good}");
    }
    for bad in ["", ".", "..", ".hidden", "-x", "a/b", "a b", "ä", &"a".repeat(65), "a\0b"] {
        assert!(check_pool_name(bad).is_err(), "{bad:?} accepted");
    }
    // A name taken from the file name follows it too.
    let got = Config::parse(Path::new("/etc/corral/...toml"), "command = [\"x\"]\n", 1).unwrap_err().to_string();
    assert!(got.contains("set `name ="), "{got}");
}
