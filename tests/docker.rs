//! examples/docker/Dockerfile against hadolint's rules. hadolint itself cannot be installed here
//! (its releases are on GitHub, which these machines do not reach; Debian 12 does not package
//! it), so the rules that apply to this file are checked by reading it: a rule broken is a
//! failure with hadolint's code. Building and running the image (podman) is in tests/e2e.rs.

const DOCKERFILE: &str = include_str!("../examples/docker/Dockerfile");

/// The instructions, with continuation lines joined and comments kept apart.
fn instructions() -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut comments = Vec::new();
    let mut current = String::new();
    for line in DOCKERFILE.lines() {
        let t = line.trim();
        if t.starts_with('#') {
            comments.push(t.to_string());
            continue;
        }
        if t.is_empty() && current.is_empty() {
            continue;
        }
        current.push_str(t.trim_end_matches('\\'));
        current.push(' ');
        if !t.ends_with('\\') {
            out.push((std::mem::take(&mut comments), current.trim().to_string()));
            current.clear();
        }
    }
    out
}

fn ignored(comments: &[String], rule: &str) -> bool {
    comments.iter().any(|c| c.starts_with("# hadolint ignore=") && c.contains(rule))
}

#[test]
fn the_dockerfile_follows_hadolints_rules() {
    let ins = instructions();
    let mut problems = Vec::new();
    let mut stages = Vec::new();
    let mut last_user = None;
    for (comments, i) in &ins {
        let (op, rest) = i.split_once(' ').unwrap_or((i, ""));
        match op {
            "FROM" => {
                let image = rest.split_whitespace().next().unwrap_or("");
                let known_stage = stages.iter().any(|s: &String| s == image);
                // DL3006: tag the image; DL3007: not `latest`.
                if !known_stage && !image.contains(':') {
                    problems.push(format!("DL3006 untagged image {image}"));
                }
                if image.ends_with(":latest") {
                    problems.push(format!("DL3007 {image}"));
                }
                if let Some(name) = rest.split_whitespace().skip_while(|w| !w.eq_ignore_ascii_case("AS")).nth(1) {
                    stages.push(name.to_string());
                }
                last_user = None;
            }
            "RUN" => {
                if rest.contains("apt-get install") {
                    // DL3015 no recommends; DL3014 -y; DL3009 lists removed; DL3008 pins (or ignored with a reason).
                    if !rest.contains("--no-install-recommends") {
                        problems.push("DL3015 apt-get install without --no-install-recommends".into());
                    }
                    if !rest.contains(" -y") {
                        problems.push("DL3014 apt-get install without -y".into());
                    }
                    if !rest.contains("rm -rf /var/lib/apt/lists/*") {
                        problems.push("DL3009 apt lists not removed".into());
                    }
                    if !ignored(comments, "DL3008") {
                        problems.push("DL3008 unpinned apt packages without a reason".into());
                    }
                }
                if rest.contains("apt ") || rest.starts_with("apt") && !rest.starts_with("apt-get") {
                    problems.push("DL3027 use apt-get, not apt".into());
                }
                if rest.split("&&").any(|c| c.trim().starts_with("cd ")) {
                    problems.push("DL3003 use WORKDIR, not cd".into());
                }
                if rest.contains("sudo ") {
                    problems.push("DL3004 sudo".into());
                }
                if rest.contains('|') && !DOCKERFILE.contains("SHELL [\"/bin/bash\", \"-o\", \"pipefail\"") {
                    problems.push("DL4006 a pipe without SHELL -o pipefail".into());
                }
            }
            "ADD" => problems.push("DL3020 COPY, not ADD, for files".into()),
            "WORKDIR" if !rest.starts_with('/') => problems.push(format!("DL3000 relative WORKDIR {rest}")),
            "CMD" | "ENTRYPOINT" if !rest.starts_with('[') => problems.push(format!("DL3025 {op} not in JSON form")),
            "USER" => last_user = Some(rest.to_string()),
            "MAINTAINER" => problems.push("DL4000 MAINTAINER is deprecated".into()),
            _ => {}
        }
    }
    // DL3002: the last stage does not run as root.
    match last_user.as_deref() {
        None | Some("root") | Some("0") => problems.push("DL3002 the final stage runs as root".into()),
        _ => {}
    }
    if ins.iter().filter(|(_, i)| i.starts_with("ENTRYPOINT") || i.starts_with("CMD")).count() > 2 {
        problems.push("DL4003/DL4004 more than one CMD or ENTRYPOINT".into());
    }
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    assert!(problems.is_empty(), "{problems:#?}");
}
