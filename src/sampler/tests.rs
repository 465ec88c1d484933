//! The sampler against real processes.

use super::*;

/// The kept-open sampler finds what the one-shot one finds, sample after sample, at both
/// depths and on a quiet host, and drops a member that exits.
#[test]
fn group_sampler_agrees_with_a_fresh_look() {
    use std::os::unix::process::CommandExt;
    let mut leader =
        std::process::Command::new("sh").args(["-c", "sleep 30 & sleep 30 & wait"]).process_group(0).spawn().unwrap();
    let pid = leader.id() as i32;
    let mut sampler = GroupSampler::default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sample_groups(&[pid]).get(&pid).map_or(0, |g| g.pids.len()) < 3 {
        assert!(std::time::Instant::now() < deadline, "the group never had 3 processes");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Just exec'd, a `sleep` is still mapping its libraries: wait until the group's RSS
    // holds still for 100ms before comparing one look with another.
    let mut last = 0;
    loop {
        let rss = sampler.sample(&[pid], false)[&pid].rss_bytes;
        if rss == last {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the group's RSS never held still");
        last = rss;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let sorted = |mut v: Vec<i32>| {
        v.sort_unstable();
        v
    };
    for quiet in [false, true, false, true] {
        let fresh = &sample_groups(&[pid])[&pid];
        let full = &sampler.sample_as(&[pid], true, quiet)[&pid];
        assert_eq!(sorted(full.pids.clone()), sorted(fresh.pids.clone()));
        assert!(full.cpu_ticks.is_some());
        // Idle sleeps and a waiting shell: their RSS does not move between two looks.
        let memory = &sampler.sample_as(&[pid], false, quiet)[&pid];
        assert_eq!((memory.rss_bytes, memory.cpu_ticks), (full.rss_bytes, None), "quiet: {quiet}");
    }
    let victim = sample_groups(&[pid])[&pid].pids.iter().copied().find(|p| *p != pid).unwrap();
    let rss_before = sampler.sample_as(&[pid], false, true)[&pid].rss_bytes;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // A member gone is noticed without a walk (its kept statm reads nothing)...
    while sampler.sample_as(&[pid], false, true)[&pid].rss_bytes == rss_before {
        assert!(std::time::Instant::now() < deadline, "an exited member is still counted");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // ...and forgotten, once its parent (the shell, waiting) has reaped it: until then it is a
    // zombie whose stat a full sample still reads.
    while std::path::Path::new(&format!("/proc/{victim}")).exists() {
        assert!(std::time::Instant::now() < deadline, "the shell never reaped its killed child");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!sampler.sample_as(&[pid], true, true)[&pid].pids.contains(&victim));
    assert!(!sampler.procs.contains_key(&victim));
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    let _ = leader.wait();
}

/// A process forked into a group after samples that found nothing new is found by the
/// next one: the fork moved the host's count of created processes.
#[test]
fn group_sampler_finds_a_child_forked_later() {
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!("corral-sampler-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let go = dir.join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done; sleep 30 & wait", go.display());
    let mut leader = std::process::Command::new("sh").args(["-c", &script]).process_group(0).spawn().unwrap();
    let pid = leader.id() as i32;
    let mut sampler = GroupSampler::default();
    // The shell forks a `sleep` every 50ms: wait for a sample that sees only the shell.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sampler.sample(&[pid], true)[&pid].pids != [pid] {
        assert!(std::time::Instant::now() < deadline, "never saw the shell alone");
    }
    std::fs::write(&go, "").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        sampler.sample(&[pid], false);
        let pids = &sampler.sample(&[pid], true)[&pid].pids;
        if pids.len() == 2 && sample_groups(&[pid])[&pid].pids.len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the child forked later was never counted");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    let _ = leader.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The host's count of created processes is read (and a fork moves it).
#[test]
fn a_fork_counts_as_the_tree_may_have_grown() {
    let mut sampler = GroupSampler::default();
    assert!(sampler.tree_may_have_grown(), "nothing to compare with yet");
    let before = sampler.forks.expect("`processes` read from /proc/stat");
    std::process::Command::new("true").status().unwrap();
    assert!(sampler.tree_may_have_grown());
    assert!(sampler.forks.unwrap() > before);
}

#[test]
fn parses_proc_stat_with_odd_names() {
    let stat = "1234 (my (odd) app) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000000 300 18446744073709551615";
    let (pgrp, u) = parse_stat(stat, 4096).unwrap();
    assert_eq!(pgrp, 1234);
    assert_eq!(u, GroupUsage { rss_bytes: 300 * 4096, cpu_ticks: Some(300), pids: vec![] });
    assert!(parse_stat("garbage", 4096).is_none());
}

#[test]
fn samples_this_process_group() {
    let me = nix::unistd::getpgrp().as_raw();
    let groups = sample_groups(&[me]);
    assert!(groups.get(&me).is_some_and(|g| g.rss_bytes > 0));
}
