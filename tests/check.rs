//! `corral check` and config errors as users see them: exit 78 with `file:line:col: message`.

mod common;

use common::*;

fn check(text: &str) -> (Option<i32>, String, String) {
    let dir = TempDir::new("check");
    let path = dir.join("api.toml");
    std::fs::write(&path, text).unwrap();
    let out = corral(&["check", "-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&dir.0.to_string_lossy().into_owned(), "DIR");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

#[test]
fn valid_config_exits_0() {
    let (code, stdout, _) = check("command = [\"node\", \"index.js\"]\ninstances = 3\n");
    assert_eq!(code, Some(0));
    assert!(stdout.contains("ok — pool \"api\", 3 workers of `node index.js`"), "{stdout}");
}

#[test]
fn every_kind_of_error_exits_78_with_its_location() {
    let cases = [
        ("command = [\"x\"]\nunknown_key = 1\n", "DIR/api.toml:2:1: unknown field `unknown_key`"),
        ("command = [\"x\"]\ninstances = \"three\"\n", "DIR/api.toml:2:13: invalid instances \"three\""),
        ("command = [\"x\"]\ninstances = 0\n", "DIR/api.toml:2:13: instances must be at least 1"),
        ("command = []\n", "DIR/api.toml:1:11: command must not be empty"),
        ("command = [\"x\"]\n[stop]\ntimeout = 30\n", "DIR/api.toml:3:11: expected a duration as a string"),
        ("command = [\"x\"]\n[limits]\nmemory = \"300 parsecs\"\n", "DIR/api.toml:3:10: invalid size \"300 parsecs\""),
        ("command = [\"x\"]\n[restart]\nmax_restarts = \"many\"\n", "DIR/api.toml:3:16: invalid type"),
        ("command = [\"x\"\n", "DIR/api.toml:1:"),
    ];
    for (text, want) in cases {
        let (code, _, stderr) = check(text);
        assert_eq!(code, Some(78), "{text:?}: {stderr}");
        assert!(stderr.starts_with(want), "{text:?}\n got: {stderr}\nwant: {want}");
    }
}

#[test]
fn missing_file_is_a_config_error() {
    let out = corral(&["check", "-c", "/nonexistent/corral.toml"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/corral.toml:1:1: cannot read config: No such file"), "{stderr}");
}

#[test]
fn run_refuses_a_bad_config_the_same_way() {
    let mut m = Master::start("badrun", "command = [\"x\"]\ninstances = -2\n", Options::default());
    assert_eq!(m.wait_exit(), Some(78));
    assert!(m.log_text().contains("pool.toml:2:13: instances must be at least 1"), "{}", m.log_text());
}

#[test]
fn config_from_corral_config_variable() {
    let dir = TempDir::new("envcfg");
    let path = dir.join("x.toml");
    std::fs::write(&path, "command = [\"x\"]\n").unwrap();
    let out = std::process::Command::new(CORRAL).arg("check").env("CORRAL_CONFIG", &path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn man_pages_are_lint_clean() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/man");
    let out = std::process::Command::new("mandoc")
        .args(["-T", "lint", "-W", "warning", &format!("{dir}/corral.1"), &format!("{dir}/corral.toml.5")])
        .output()
        .expect("mandoc is installed by scripts/test.sh");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_subcommand_is_in_the_man_page() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/corral.1")).unwrap();
    let help = String::from_utf8(corral(&["--help"]).stdout).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 6, "{help}");
    for c in commands {
        assert!(page.contains(&format!(".Cm {c}")), "corral(1) does not document `{c}`");
    }
}

#[test]
fn man_pages_render_their_value_lists_correctly() {
    // mdoc's Qq quotes everything to the end of its line, so `Qq a | Qq b` rendered as
    // `"a | "b""`: render the pages and look at what a reader sees.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/man");
    for page in ["corral.1", "corral.toml.5"] {
        let out = std::process::Command::new("mandoc")
            .args(["-T", "utf8", &format!("{dir}/{page}")])
            .output()
            .expect("mandoc is installed by scripts/test.sh");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).replace('\u{8}', "");
        let plain: String = {
            // Drop overstrike (x\bx) and underline (_\bx) sequences mandoc uses for bold/italic.
            let raw = String::from_utf8_lossy(&out.stdout);
            let mut s = String::new();
            let mut chars = raw.chars().peekable();
            while let Some(c) = chars.next() {
                if chars.peek() == Some(&'\u{8}') {
                    chars.next();
                    continue;
                }
                s.push(c);
            }
            s
        };
        assert!(!plain.contains("\"\""), "{page} renders doubled quotes:\n{text}");
        if page == "corral.toml.5" {
            for want in [
                "mode = \"notify\" | \"listen\" | \"ipc\" | \"spawn\" | \"delay\"",
                "instances = N | \"max\" | \"max-K\" | \"P%\"",
                "target = \"auto\" | \"journal\" | \"stderr\" | \"inherit\"",
            ] {
                assert!(plain.contains(want), "{page} does not render {want:?}:\n{plain}");
            }
        }
    }
}
