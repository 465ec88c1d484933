//! Table tests of the pool state machine: a fake clock, fake pids, no processes.
//!
//! Each row is `(milliseconds since start, event, actions expected)`. Spawn actions are answered
//! at once with `Spawned` and pids counting from 100, as the driver does; `STATUS=` lines are
//! left out of the tables (see `status_line_says_what_systemd_shows`).

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;

use proptest::prelude::*;

use super::*;

const BASE: &str = r#"
command = ["worker"]
instances = 2
[ready]
mode = "notify"
timeout = "10s"
[stop]
timeout = "5s"
[restart]
delay = "100ms"
max_delay = "1s"
min_uptime = "5s"
max_restarts = 5
window = "60s"
"#;

fn config(text: &str) -> Arc<Config> {
    Arc::new(Config::parse(Path::new("/etc/corral/t.toml"), text, 4).expect("test config is valid"))
}

fn with(extra: &str) -> Arc<Config> {
    // Top-level keys go before the first table.
    config(&format!("{extra}\n{BASE}"))
}

struct Sim {
    pool: Pool,
    t0: Instant,
    next_pid: i32,
    alive: BTreeSet<i32>,
    fail_spawns: bool,
    /// Priority actions, apart from the main log: "nice PID N" for a spawn at a lower
    /// priority, "normal PID" when it is restored.
    priority: Vec<String>,
}

impl Sim {
    fn new(config: Arc<Config>) -> Sim {
        Sim {
            pool: Pool::new(config),
            t0: Instant::now(),
            next_pid: 100,
            alive: BTreeSet::new(),
            fail_spawns: false,
            priority: Vec::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn step(&mut self, ms: u64, event: Event) -> Vec<String> {
        let now = self.at(ms);
        if let Event::Exited { pid, .. } = &event {
            assert!(self.alive.remove(&pid.as_raw()), "test bug: pid {pid} is not alive");
        }
        let mut queue = VecDeque::from([event]);
        let mut log = Vec::new();
        while let Some(event) = queue.pop_front() {
            for action in self.pool.handle(now, event) {
                match action {
                    Action::Spawn { id, slot, generation, nice, .. } => {
                        if nice > 0 && !self.fail_spawns {
                            self.priority.push(format!("nice {} {nice}", self.next_pid));
                        }
                        if self.fail_spawns {
                            log.push(format!("spawn {slot} g{generation} failed"));
                            queue.push_back(Event::SpawnFailed { id, error: "No such file or directory".into() });
                        } else {
                            let pid = self.next_pid;
                            self.next_pid += 1;
                            self.alive.insert(pid);
                            log.push(format!("spawn {slot} g{generation} = {pid}"));
                            queue.push_back(Event::Spawned { id, pid: Pid::from_raw(pid) });
                        }
                    }
                    Action::NormalPriority { pid } => {
                        assert!(self.alive.contains(&pid.as_raw()), "reniced pid {pid} is not alive");
                        self.priority.push(format!("normal {pid}"));
                    }
                    Action::Signal { pid, signal, .. } => {
                        assert!(self.alive.contains(&pid.as_raw()), "signalled pid {pid} is not alive");
                        log.push(format!("kill {pid} {}", signal.as_str()));
                    }
                    Action::Notify(fields) => {
                        for f in fields {
                            match f {
                                Notify::Status(_) => {}
                                Notify::Ready => log.push("READY".into()),
                                Notify::Reloading => log.push("RELOADING".into()),
                                Notify::Stopping => log.push("STOPPING".into()),
                                Notify::ExtendTimeout(d) => log.push(format!("EXTEND {}s", d.as_secs())),
                            }
                        }
                    }
                    Action::Reply { to, result } => match result {
                        Ok(_) => log.push(format!("reply {to} ok")),
                        Err(e) => log.push(format!("reply {to} err: {e}")),
                    },
                    Action::Exit(code) => log.push(format!("exit {code}")),
                }
            }
        }
        log
    }

    fn run(&mut self, table: &[(u64, Event, &[&str])]) {
        for (row, (ms, event, want)) in table.iter().enumerate() {
            let got = self.step(*ms, event.clone());
            assert_eq!(got, *want, "row {row}: at {ms}ms after {event:?}");
        }
    }
}

fn ready(pid: i32) -> Event {
    Event::Ready { pid: Pid::from_raw(pid), signal: ReadySignal::Notify }
}
fn exited(pid: i32, code: i32) -> Event {
    Event::Exited { pid: Pid::from_raw(pid), status: ExitStatus::Code(code), last_output: Vec::new() }
}
fn reload(config: Arc<Config>, reply: ReplyId) -> Event {
    Event::Reload { config: Ok(config), reply: Some(reply) }
}

/// Start the base pool and make both workers (pids 100, 101) ready.
fn started() -> Sim {
    let mut sim = Sim::new(config(BASE));
    sim.run(&[
        (0, Event::Start, &["spawn 0 g1 = 100", "spawn 1 g1 = 101"]),
        (10, ready(100), &[]),
        (20, ready(101), &["READY"]),
    ]);
    sim
}

#[test]
fn start_spawns_every_slot_and_reports_ready_once_all_are() {
    started();
}

#[test]
fn ready_from_an_unknown_pid_is_ignored() {
    let mut sim = Sim::new(config(BASE));
    sim.run(&[
        (0, Event::Start, &["spawn 0 g1 = 100", "spawn 1 g1 = 101"]),
        (10, ready(999), &[]),
        (10, ready(100), &[]),
    ]);
    assert_eq!(sim.pool.ready_count(), 1);
}

#[test]
fn crash_restarts_with_exponential_backoff_and_resets_after_min_uptime() {
    let mut sim = started();
    sim.run(&[
        // Crash after 1s of uptime (< min_uptime 5s): first restart after `delay`.
        (1_000, exited(100, 1), &[]),
        (1_099, Event::Tick, &[]),
        (1_100, Event::Tick, &["spawn 0 g1 = 102"]),
        // Dies before ready: backoff doubles, 200ms.
        (1_150, exited(102, 1), &[]),
        (1_349, Event::Tick, &[]),
        (1_350, Event::Tick, &["spawn 0 g1 = 103"]),
        (1_360, exited(103, 1), &[]),
        (1_760, Event::Tick, &["spawn 0 g1 = 104"]),
        (1_770, exited(104, 1), &[]),
        (2_570, Event::Tick, &["spawn 0 g1 = 105"]),
        // Capped at max_delay = 1s.
        (2_580, exited(105, 1), &[]),
        (3_580, Event::Tick, &["spawn 0 g1 = 106"]),
        (3_600, ready(106), &[]),
        // Up for 5s (min_uptime): the backoff starts afresh, and a crash after a healthy run
        // restarts at once.
        (8_600, exited(106, 1), &["spawn 0 g1 = 107"]),
    ]);
    assert_eq!(sim.pool.restarts_total(), 6);
    // 107 starts while 101 serves, so at reload.start_nice: raised at half its 10 s ready timeout.
    assert_eq!(sim.pool.next_deadline(), Some(sim.at(8_600 + 5_000)), "escalation of 107");
}

#[test]
fn next_deadline_is_the_backoff_of_an_empty_slot() {
    let mut sim = started();
    sim.step(1_000, exited(101, 1));
    assert_eq!(sim.pool.next_deadline(), Some(sim.at(1_100)));
}

#[test]
fn gives_up_after_max_restarts_in_window_when_no_worker_is_ready() {
    let mut sim = Sim::new(config(&BASE.replace("instances = 2", "instances = 1")));
    sim.run(&[(0, Event::Start, &["spawn 0 g1 = 100"])]);
    // 5 failures are allowed (max_restarts = 5), the 6th gives up.
    let mut t = 0;
    for pid in 100..105 {
        t += 10;
        sim.run(&[(t, exited(pid, 1), &[])]);
        t += 2_000;
        let want = format!("spawn 0 g1 = {}", pid + 1);
        sim.run(&[(t, Event::Tick, &[want.as_str()])]);
    }
    sim.run(&[(t + 10, exited(105, 1), &["STOPPING", "EXTEND 5s", "exit 1"])]);
}

#[test]
fn does_not_give_up_while_another_worker_is_ready() {
    let mut sim = started();
    let mut t = 0;
    let mut pid = 100;
    for _ in 0..8 {
        t += 2_000;
        sim.step(t, exited(pid, 1));
        t += 1_000;
        let spawned = sim.step(t, Event::Tick);
        assert_eq!(spawned.len(), 1, "{spawned:?}");
        pid = sim.next_pid - 1;
    }
    assert_eq!(sim.pool.restarts_total(), 8);
    assert_eq!(sim.pool.ready_count(), 1);
}

#[test]
fn failures_outside_the_window_are_forgotten_once_a_worker_was_ready() {
    let mut sim = Sim::new(config(&BASE.replace("instances = 2", "instances = 1")));
    sim.step(0, Event::Start);
    let mut pid = 100;
    for i in 0..20u64 {
        // One crash every 20s of a worker that was ready: never more than 3 in a 60s window,
        // and each readiness starts the count of failed starts afresh.
        let t = i * 20_000;
        sim.step(t + 5, ready(pid));
        assert!(!sim.step(t + 10, exited(pid, 1)).contains(&"exit 1".to_string()));
        sim.step(t + 5_000, Event::Tick);
        pid = sim.next_pid - 1;
    }
}

#[test]
fn a_pool_that_is_never_ready_gives_up_however_slowly_it_fails() {
    // One failure every 20s never fills the 60s window, yet max_restarts (5) failed starts in a
    // row with no worker ever ready is a crash loop: the 6th failure gives up.
    let mut sim = Sim::new(config(&BASE.replace("instances = 2", "instances = 1")));
    sim.step(0, Event::Start);
    let mut pid = 100;
    for i in 0..6u64 {
        let t = i * 20_000;
        let got = sim.step(t + 10, exited(pid, 1));
        assert_eq!(got.contains(&"exit 1".to_string()), i == 5, "failure {} at {t}ms: {got:?}", i + 1);
        sim.step(t + 5_000, Event::Tick);
        pid = sim.next_pid - 1;
    }
}

#[test]
fn give_up_with_the_default_restart_settings_within_about_a_minute() {
    let mut sim = Sim::new(config("command = [\"worker\"]\n"));
    sim.step(0, Event::Start);
    let mut now = 0;
    for failure in 1..=100 {
        // The worker exits 10ms after each start; the next start comes at the slot's deadline.
        let pid = sim.next_pid - 1;
        let got = sim.step(now + 10, exited(pid, 1));
        if got.contains(&"exit 1".to_string()) {
            assert_eq!(failure, 11, "defaults: max_restarts = 10, so the 11th failure gives up");
            assert!(now < 60_000, "gave up only after {now}ms");
            return;
        }
        let next = sim.pool.next_deadline().expect("a restart is due");
        now = next.duration_since(sim.t0).as_millis() as u64;
        sim.step(now, Event::Tick);
    }
    panic!("never gave up");
}

#[test]
fn ready_timeout_stops_the_worker_and_restarts_the_slot() {
    let mut sim = started();
    sim.run(&[
        (1_000, exited(100, 1), &[]),
        (1_100, Event::Tick, &["spawn 0 g1 = 102"]),
        (11_099, Event::Tick, &[]),
        (11_100, Event::Tick, &["kill 102 SIGTERM"]),
        // Backoff for the second failure of slot 0 is 200ms; the stopping worker does not hold it.
        (11_300, Event::Tick, &["spawn 0 g1 = 103"]),
        (16_100, Event::Tick, &["kill 102 SIGKILL"]),
        (16_110, exited(102, 137), &[]),
    ]);
}

#[test]
fn spawn_failures_back_off_like_crashes() {
    let mut sim = Sim::new(config(&BASE.replace("instances = 2", "instances = 1")));
    sim.fail_spawns = true;
    sim.run(&[
        (0, Event::Start, &["spawn 0 g1 failed"]),
        (100, Event::Tick, &["spawn 0 g1 failed"]),
        (300, Event::Tick, &["spawn 0 g1 failed"]),
    ]);
}

#[test]
fn reload_replaces_one_worker_at_a_time() {
    let mut sim = started();
    let next = with("env = { RELEASE = \"2\" }");
    sim.run(&[
        (1_000, reload(next, 7), &["RELOADING", "spawn 0 g2 = 102"]),
        (1_100, ready(102), &["kill 100 SIGTERM", "spawn 1 g2 = 103"]),
        (1_150, exited(100, 0), &[]),
        (1_200, ready(103), &["kill 101 SIGTERM", "reply 7 ok", "READY"]),
        (1_250, exited(101, 0), &[]),
    ]);
    assert_eq!(sim.pool.generation(), 2);
    assert!(sim.pool.workers().iter().all(|w| w.generation == 2));
}

#[test]
fn reload_batch_replaces_several_at_once() {
    let base = BASE.replace("instances = 2", "instances = 4");
    let mut sim = Sim::new(config(&base));
    sim.step(0, Event::Start);
    for pid in 100..104 {
        sim.step(10, ready(pid));
    }
    let next = config(&format!("{base}\n[reload]\nbatch = \"50%\"\n"));
    sim.run(&[
        (1_000, reload(next, 1), &["RELOADING", "spawn 0 g2 = 104", "spawn 1 g2 = 105"]),
        (1_100, ready(105), &["kill 101 SIGTERM", "spawn 2 g2 = 106"]),
        (1_100, ready(104), &["kill 100 SIGTERM", "spawn 3 g2 = 107"]),
        (1_200, ready(106), &["kill 102 SIGTERM"]),
        (1_200, ready(107), &["kill 103 SIGTERM", "reply 1 ok", "READY"]),
    ]);
}

#[test]
fn reload_aborts_when_a_new_worker_exits_and_the_old_generation_keeps_serving() {
    let mut sim = started();
    sim.run(&[
        (1_000, reload(with("env = { BROKEN = \"1\" }"), 3), &["RELOADING", "spawn 0 g2 = 102"]),
        (
            1_050,
            exited(102, 1),
            &["reply 3 err: reload failed, generation 1 keeps serving: worker 0 (pid 102) of generation 2 exited with exit code 1 before it was ready", "READY"],
        ),
        (5_000, Event::Tick, &[]),
    ]);
    assert_eq!(sim.pool.generation(), 1);
    assert_eq!(sim.pool.ready_count(), 2);
    assert!(matches!(sim.pool.last_reload(), Some(ReloadResult::Failed(_))));
    assert!(sim.pool.status_line().contains("last reload failed"));
}

#[test]
fn reload_aborts_on_ready_timeout_and_rolls_back_replaced_slots() {
    let mut sim = started();
    sim.run(&[
        (1_000, reload(with("env = { SLOW = \"1\" }"), 4), &["RELOADING", "spawn 0 g2 = 102"]),
        // Slot 0 is replaced by generation 2...
        (1_100, ready(102), &["kill 100 SIGTERM", "spawn 1 g2 = 103"]),
        (1_150, exited(100, 0), &[]),
        // ...but slot 1's new worker never gets ready: abort, stop it, and put generation 1
        // back into slot 0.
        (
            11_100,
            Event::Tick,
            &[
                "kill 103 SIGTERM",
                "reply 4 err: reload failed, generation 1 keeps serving: worker 1 (pid 103) of generation 2 was not ready within 10s",
                "READY",
                "spawn 0 g1 = 104",
            ],
        ),
        (11_200, ready(104), &["kill 102 SIGTERM"]),
        (11_300, exited(103, 143), &[]),
        (11_300, exited(102, 0), &[]),
    ]);
    assert!(sim.pool.workers().iter().all(|w| w.generation == 1));
    assert_eq!(sim.pool.ready_count(), 2);
}

#[test]
fn a_rollback_that_cannot_start_backs_off_instead_of_spinning() {
    // CI once saw this: a reload aborted with slot 0 already on generation 2, and generation 1
    // could not be started there (the master was out of descriptors). The replacement of a
    // slot that still serves must wait out its backoff like an empty slot does, not be asked
    // for again in the same turn of the loop, forever.
    let mut sim = started();
    sim.run(&[
        (1_000, reload(with("env = { R = \"2\" }"), 4), &["RELOADING", "spawn 0 g2 = 102"]),
        (1_100, ready(102), &["kill 100 SIGTERM", "spawn 1 g2 = 103"]),
        (1_150, exited(100, 0), &[]),
    ]);
    sim.fail_spawns = true;
    sim.run(&[
        (
            1_200,
            exited(103, 1),
            &[
                "reply 4 err: reload failed, generation 1 keeps serving: worker 1 (pid 103) of generation 2 exited with exit code 1 before it was ready",
                "READY",
                "spawn 0 g1 failed",
            ],
        ),
    ]);
    // The driver's timer wakes it for the retry.
    assert_eq!(sim.pool.next_deadline(), Some(sim.at(1_300)));
    sim.run(&[
        (1_250, Event::Tick, &[]),
        (1_300, Event::Tick, &["spawn 0 g1 failed"]),
        (1_400, Event::Tick, &[]),
        (1_500, Event::Tick, &["spawn 0 g1 failed"]),
    ]);
    // Generation 2 keeps serving slot 0 meanwhile.
    assert_eq!(sim.pool.ready_count(), 2);
    sim.fail_spawns = false;
    sim.run(&[(1_900, Event::Tick, &["spawn 0 g1 = 104"]), (1_950, ready(104), &["kill 102 SIGTERM"])]);
}

#[test]
fn invalid_config_on_reload_keeps_everything() {
    let mut sim = started();
    sim.run(&[(
        1_000,
        Event::Reload { config: Err(config_error(3, "unknown field `bogus`")), reply: Some(9) },
        &["reply 9 err: t.toml:3:1: unknown field `bogus`", "RELOADING", "READY"],
    )]);
    assert_eq!(sim.pool.generation(), 1);
    assert!(sim.pool.status_line().ends_with("last reload failed: t.toml:3:1: unknown field `bogus`"));
}

#[test]
fn reloads_requested_mid_reload_coalesce_into_one_more() {
    let mut sim = started();
    sim.run(&[
        (1_000, reload(with("env = { R = \"2\" }"), 1), &["RELOADING", "spawn 0 g2 = 102"]),
        (1_010, reload(with("env = { R = \"3\" }"), 2), &[]),
        (1_020, reload(with("env = { R = \"4\" }"), 3), &[]),
        (1_100, ready(102), &["kill 100 SIGTERM", "spawn 1 g2 = 103"]),
        // Generation 2 done; the two queued requests become one reload to generation 3.
        (1_200, ready(103), &["kill 101 SIGTERM", "reply 1 ok", "spawn 0 g3 = 104"]),
        (1_300, ready(104), &["kill 102 SIGTERM", "spawn 1 g3 = 105"]),
        (1_400, ready(105), &["kill 103 SIGTERM", "reply 2 ok", "reply 3 ok", "READY"]),
    ]);
    assert_eq!(sim.pool.generation(), 3);
    assert_eq!(sim.pool.config().env.get("R").map(String::as_str), Some("4"));
}

#[test]
fn reload_applies_a_changed_instance_count() {
    let mut sim = started();
    let next = config(&BASE.replace("instances = 2", "instances = 3"));
    sim.run(&[
        (1_000, reload(next, 1), &["RELOADING", "spawn 2 g2 = 102", "spawn 0 g2 = 103"]),
        (1_100, ready(102), &[]),
        (1_100, ready(103), &["kill 100 SIGTERM", "spawn 1 g2 = 104"]),
        (1_200, ready(104), &["kill 101 SIGTERM", "reply 1 ok", "READY"]),
    ]);
    assert_eq!(sim.pool.desired(), 3);
}

#[test]
fn scale_up_and_down_gracefully_never_below_one() {
    let mut sim = started();
    sim.run(&[
        (1_000, Event::Scale { request: ScaleRequest::Add(1), reply: Some(1) }, &["reply 1 ok", "spawn 2 g1 = 102"]),
        (1_100, ready(102), &[]),
        (2_000, Event::Scale { request: ScaleRequest::Set(1), reply: None }, &["kill 101 SIGTERM", "kill 102 SIGTERM"]),
        (2_100, exited(101, 0), &[]),
        (2_100, exited(102, 0), &[]),
        (3_000, Event::Scale { request: ScaleRequest::Add(-5), reply: Some(2) }, &["reply 2 ok"]),
    ]);
    assert_eq!(sim.pool.desired(), 1);
    assert_eq!(sim.pool.workers().len(), 1);
}

#[test]
fn stop_escalates_to_sigkill_after_the_timeout_then_exits() {
    let mut sim = started();
    sim.run(&[
        (1_000, Event::Stop, &["STOPPING", "EXTEND 10s", "kill 100 SIGTERM", "kill 101 SIGTERM"]),
        (1_100, exited(100, 0), &[]),
        (5_999, Event::Tick, &[]),
        (6_000, Event::Tick, &["kill 101 SIGKILL"]),
        (6_010, exited(101, 137), &["exit 0"]),
        (7_000, Event::Tick, &[]),
    ]);
}

#[test]
fn the_stop_log_says_how_long_after_its_stop_signal_a_worker_ended_and_whether_it_was_killed() {
    let mut sim = started();
    let term = |pid: i32| Event::Exited {
        pid: Pid::from_raw(pid),
        status: ExitStatus::Signaled(libc::SIGTERM),
        last_output: Vec::new(),
    };
    sim.run(&[(1_000, Event::Stop, &["STOPPING", "EXTEND 10s", "kill 100 SIGTERM", "kill 101 SIGTERM"])]);
    sim.pool.take_notices();
    let stopped = |sim: &mut Sim| -> Vec<String> {
        sim.pool.take_notices().iter().filter(|n| matches!(n, Notice::Stopped(..))).map(|n| n.to_string()).collect()
    };
    // Puma: drains, then re-raises SIGTERM 2.5 s later. A server without a handler: at once.
    sim.step(3_500, term(100));
    assert_eq!(
        stopped(&mut sim),
        ["worker stopped (signal SIGTERM) 2s 500ms after its stop signal, within stop.timeout (5s)"]
    );
    let mut sim = started();
    sim.run(&[(1_000, Event::Stop, &["STOPPING", "EXTEND 10s", "kill 100 SIGTERM", "kill 101 SIGTERM"])]);
    sim.pool.take_notices();
    sim.step(1_002, term(100));
    assert_eq!(
        stopped(&mut sim),
        ["worker stopped (signal SIGTERM) 2ms after its stop signal, within stop.timeout (5s), at once: killed by \
          the signal itself, no graceful drain"]
    );
    sim.step(6_000, Event::Tick);
    sim.step(6_010, Event::Exited { pid: Pid::from_raw(101), status: ExitStatus::Signaled(9), last_output: vec![] });
    assert_eq!(stopped(&mut sim), ["worker stopped (signal SIGKILL): killed, it had not stopped on its own"]);
}

#[test]
fn a_second_stop_signal_kills_at_once() {
    let mut sim = started();
    sim.run(&[
        (1_000, Event::Stop, &["STOPPING", "EXTEND 10s", "kill 100 SIGTERM", "kill 101 SIGTERM"]),
        (1_001, Event::Stop, &["kill 100 SIGKILL", "kill 101 SIGKILL"]),
        (1_002, exited(100, 137), &[]),
        (1_003, exited(101, 137), &["exit 0"]),
    ]);
}

#[test]
fn stop_during_a_reload_answers_the_waiting_client() {
    let mut sim = started();
    sim.run(&[
        (1_000, reload(with("env = { R = \"2\" }"), 5), &["RELOADING", "spawn 0 g2 = 102"]),
        (
            1_001,
            Event::Stop,
            &[
                "reply 5 err: the pool is stopping",
                "STOPPING",
                "EXTEND 10s",
                "kill 100 SIGTERM",
                "kill 101 SIGTERM",
                "kill 102 SIGTERM",
            ],
        ),
        (1_002, reload(with("env = { R = \"3\" }"), 6), &["reply 6 err: the pool is stopping"]),
    ]);
}

#[test]
fn crashes_while_stopping_are_not_restarted() {
    let mut sim = started();
    sim.step(1_000, Event::Stop);
    sim.run(&[(1_100, exited(100, 1), &[]), (2_000, Event::Tick, &[]), (2_100, exited(101, 1), &["exit 0"])]);
}

#[test]
fn delay_and_spawn_ready_modes() {
    let text = BASE.replace("mode = \"notify\"\ntimeout = \"10s\"", "mode = \"delay\"\ndelay = \"2s\"");
    let mut sim = Sim::new(config(&text));
    sim.run(&[
        (0, Event::Start, &["spawn 0 g1 = 100", "spawn 1 g1 = 101"]),
        (1_999, Event::Tick, &[]),
        (2_000, Event::Tick, &["READY"]),
    ]);
    let text = BASE.replace("mode = \"notify\"\ntimeout = \"10s\"", "mode = \"spawn\"");
    let mut sim = Sim::new(config(&text));
    sim.run(&[(0, Event::Start, &["spawn 0 g1 = 100", "spawn 1 g1 = 101", "READY"])]);
}

#[test]
fn status_line_says_what_systemd_shows() {
    let mut sim = started();
    assert_eq!(sim.pool.status_line(), "2/2 workers ready · generation 1 · 0 restarts");
    sim.step(1_000, exited(100, 1));
    assert_eq!(sim.pool.status_line(), "1/2 workers ready · generation 1 · 1 restart");
    sim.step(1_100, Event::Tick);
    sim.step(1_200, reload(with("env = { R = \"2\" }"), 1));
    assert_eq!(sim.pool.status_line(), "1/2 workers ready · generation 2 · 1 restart · reloading to generation 2");
}

#[test]
fn status_is_sent_when_it_changes() {
    let mut pool = Pool::new(config(BASE));
    let now = Instant::now();
    let actions = pool.handle(now, Event::Start);
    assert!(
        actions.contains(&Action::Notify(vec![Notify::Status("0/2 workers ready · generation 1 · 0 restarts".into())]))
    );
    let actions = pool.handle(now, Event::Tick);
    assert!(actions.is_empty(), "no change, no status: {actions:?}");
}

#[derive(Debug, Clone)]
enum Op {
    Ready(usize),
    Exit(usize),
    Tick(u64),
    Reload(bool),
    Scale(i64),
    Stop,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..16).prop_map(Op::Ready),
        3 => (0usize..16).prop_map(Op::Exit),
        4 => (1u64..15_000).prop_map(Op::Tick),
        1 => any::<bool>().prop_map(Op::Reload),
        1 => (-3i64..4).prop_map(Op::Scale),
        1 => Just(Op::Stop),
    ]
}

proptest! {
    /// Over random event sequences: never more than `desired + batch` live workers, every signal
    /// goes to a live pid (asserted by `Sim`), and no slot stays empty longer than the backoff.
    #[test]
    fn invariants_hold_for_any_event_sequence(ops in proptest::collection::vec(op(), 1..80)) {
        let mut sim = Sim::new(config(BASE));
        let mut t = 0u64;
        sim.step(t, Event::Start);
        let mut reply = 0;
        for op in ops {
            let live_pids: Vec<i32> = sim.alive.iter().copied().collect();
            let event = match op {
                Op::Ready(i) if !live_pids.is_empty() => ready(live_pids[i % live_pids.len()]),
                Op::Exit(i) if !live_pids.is_empty() => exited(live_pids[i % live_pids.len()], 1),
                Op::Tick(ms) => { t += ms; Event::Tick }
                Op::Reload(ok) => {
                    reply += 1;
                    if ok { reload(with("env = { R = \"x\" }"), reply) } else { Event::Reload { config: Err(config_error(1, "bad")), reply: Some(reply) } }
                }
                Op::Scale(d) => Event::Scale { request: ScaleRequest::Add(d), reply: None },
                Op::Stop => Event::Stop,
                _ => Event::Tick,
            };
            sim.step(t, event);
            let live = sim.pool.workers().iter().filter(|w| w.is_live()).count();
            let batch = sim.pool.config().batch(sim.pool.desired());
            prop_assert!(live <= sim.pool.desired() + batch, "{live} live workers for {} desired", sim.pool.desired());
            // Every tracked worker with a pid is one the harness believes alive.
            for w in sim.pool.workers() {
                if let Some(pid) = w.pid { prop_assert!(sim.alive.contains(&pid.as_raw())); }
            }
            // A slot without a worker has its restart scheduled no later than max_delay from now.
            if let Some(d) = sim.pool.next_deadline() {
                prop_assert!(d <= sim.at(t) + Duration::from_secs(15), "deadline too far");
            }
        }
        // Drive to the end: stop, let every process exit, expect exit.
        // Stop (a drain, with stop.drain), stop, and stop now.
        for _ in 0..3 {
            sim.step(t, Event::Stop);
        }
        let pids: Vec<i32> = sim.alive.iter().copied().collect();
        let mut exited_cleanly = false;
        for pid in pids {
            exited_cleanly = sim.step(t, exited(pid, 137)).iter().any(|a| a.starts_with("exit"));
        }
        prop_assert!(exited_cleanly || sim.pool.workers().is_empty());
    }
}

fn ping(pid: i32) -> Event {
    Event::WatchdogPing { pid: Pid::from_raw(pid) }
}
fn memory(pid: i32, mib: u64) -> Event {
    Event::MemorySamples(vec![(Pid::from_raw(pid), mib * 1024 * 1024)])
}
fn count(sim: &Sim, reason: RestartReason) -> u64 {
    sim.pool.restarts_by_reason().into_iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| n)
}

#[test]
fn a_worker_that_stops_pinging_the_watchdog_is_aborted_and_replaced() {
    let mut sim = Sim::new(config(&format!("{BASE}\n[watchdog]\ntimeout = \"1s\"\n")));
    sim.run(&[
        (0, Event::Start, &["spawn 0 g1 = 100", "spawn 1 g1 = 101"]),
        (10, ready(100), &[]),
        (10, ready(101), &["READY"]),
        (800, ping(100), &[]),
        (1_009, Event::Tick, &[]),
        // 101 never pinged: 1s after it became ready it is aborted, like systemd does.
        (1_010, Event::Tick, &["kill 101 SIGABRT"]),
        (1_110, Event::Tick, &["spawn 1 g1 = 102"]),
        (1_799, ping(100), &[]),
        (1_800, Event::Tick, &[]),
        // 100 was up for 6s (over min_uptime): its replacement starts at once.
        (6_010, Event::Tick, &["kill 100 SIGABRT", "kill 101 SIGKILL", "spawn 0 g1 = 103"]),
    ]);
    assert_eq!(count(&sim, RestartReason::Watchdog), 2);
}

#[test]
fn over_the_memory_limit_a_worker_is_replaced_without_downtime() {
    let mut sim = Sim::new(config(&format!("{BASE}\n[limits]\nmemory = \"100MiB\"\n")));
    sim.run(&[
        (0, Event::Start, &["spawn 0 g1 = 100", "spawn 1 g1 = 101"]),
        (10, ready(100), &[]),
        (10, ready(101), &["READY"]),
        (1_000, memory(100, 99), &[]),
        // Over the limit: a replacement starts first; the old worker serves until it is ready.
        (2_000, memory(101, 150), &["spawn 1 g1 = 102"]),
        (2_001, memory(101, 160), &[]),
        (2_100, ready(102), &["kill 101 SIGTERM"]),
        (2_200, exited(101, 0), &[]),
    ]);
    assert_eq!(count(&sim, RestartReason::Memory), 1);
    assert_eq!(sim.pool.restarts_total(), 0, "a replacement is not a crash");
}

#[test]
fn recycle_replaces_workers_one_batch_at_a_time_within_the_jitter() {
    let text = format!("{BASE}\n[recycle]\nafter = \"1h\"\njitter = \"10m\"\n");
    let mut sim = Sim::new(config(&text));
    sim.step(0, Event::Start);
    sim.step(0, ready(100));
    sim.step(0, ready(101));
    let due: Vec<Instant> = sim.pool.workers().iter().filter_map(|w| w.recycle_at).collect();
    assert_eq!(due.len(), 2);
    for d in &due {
        let age = d.duration_since(sim.t0);
        assert!(age >= Duration::from_secs(50 * 60) && age <= Duration::from_secs(70 * 60), "{age:?}");
    }
    assert_ne!(due[0], due[1], "jitter spreads the workers");
    // Both become due at once: still only `batch` (1) replacement at a time.
    let both = (*due.iter().max().unwrap()).duration_since(sim.t0).as_millis() as u64 + 1;
    let got = sim.step(both, Event::Tick);
    assert_eq!(got.len(), 1, "one replacement at a time: {got:?}");
    assert_eq!(count(&sim, RestartReason::Recycle), 2);
    sim.step(both + 100, ready(102));
    let got = sim.step(both + 100, Event::Tick);
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(sim.pool.workers().iter().filter(|w| w.replace.is_some() && w.is_live()).count(), 1);
}

#[test]
fn reload_counts_are_kept() {
    let mut sim = started();
    sim.step(1_000, reload(with("env = { R = \"2\" }"), 1));
    sim.step(1_100, ready(102));
    sim.step(1_200, ready(103));
    sim.step(2_000, Event::Reload { config: Err(config_error(1, "bad")), reply: None });
    assert_eq!(sim.pool.reload_counts(), (1, 1));
}

/// A duration as a config may spell it: ordinary, at the bounds, and far beyond them.
fn any_duration() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0s".to_string()),
        Just("1ns".to_string()),
        Just("10ms".to_string()),
        Just("100ms".to_string()),
        Just("5s".to_string()),
        Just("366d".to_string()),
        Just("367d".to_string()),
        Just("18446744073709551615s".to_string()),
        Just("584542046090y".to_string()),
        (0u64..u64::MAX, prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d"]))
            .prop_map(|(n, u)| format!("{n}{u}")),
        (0u64..100_000, prop::sample::select(vec!["ms", "s"])).prop_map(|(n, u)| format!("{n}{u}")),
    ]
}

fn any_count() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0i64..12).prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![1024i64, 1025, 100_000]).prop_map(|n| n.to_string()),
        1 => Just(i64::MAX.to_string()),
        1 => Just("\"max\"".to_string()),
        1 => Just("\"max-3\"".to_string()),
        2 => (0u32..150).prop_map(|p| format!("\"{p}%\"")),
    ]
}

/// Config texts: every duration and count setting drawn from `any_duration`/`any_count`.
fn any_config() -> impl Strategy<Value = String> {
    (
        any_count(),
        prop::sample::select(vec!["notify", "spawn", "delay"]),
        prop::collection::vec(any_duration(), 11),
        any_count(),
        (0u32..40, any::<bool>(), any::<bool>()),
    )
        .prop_map(|(instances, mode, d, batch, (max_restarts, watchdog, recycle))| {
            let mut text = format!(
                "command = [\"w\"]\ninstances = {instances}\n[ready]\nmode = \"{mode}\"\ntimeout = \"{}\"\ndelay = \"{}\"\n\
                 [stop]\ntimeout = \"{}\"\n[restart]\ndelay = \"{}\"\nmax_delay = \"{}\"\nmin_uptime = \"{}\"\n\
                 max_restarts = {max_restarts}\nwindow = \"{}\"\n[reload]\nbatch = {batch}\n[limits]\ninterval = \"{}\"\n",
                d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
            );
            if watchdog {
                text += &format!("[watchdog]\ntimeout = \"{}\"\n", d[8]);
            }
            if recycle {
                text += &format!("[recycle]\nafter = \"{}\"\njitter = \"{}\"\n", d[9], d[10]);
            }
            text
        })
}

impl Sim {
    /// Jump to the pool's next deadline (if any) and tick; at most `n` times.
    fn tick_through(&mut self, n: usize) -> u64 {
        let mut now = 0;
        for _ in 0..n {
            let Some(next) = self.pool.next_deadline() else { break };
            now = next.saturating_duration_since(self.t0).as_millis() as u64 + 1;
            self.step(now, Event::Tick);
        }
        now
    }

    fn ready_all(&mut self, ms: u64) {
        for pid in self.alive.clone() {
            self.step(ms, ready(pid));
        }
    }

    fn exit_all(&mut self, ms: u64) {
        for pid in self.alive.clone() {
            self.step(ms, exited(pid, 0));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever `corral check` accepts, the pool runs: start, crash, deadlines, a reload into
    /// another accepted config, scale, stop. A panic (an overflow, say) fails the test.
    #[test]
    fn every_config_check_accepts_runs(first in any_config(), second in any_config()) {
        let parse = |t: &str| Config::parse(Path::new("/etc/corral/p.toml"), t, 4).map(Arc::new);
        let Ok(config) = parse(&first) else { return Ok(()) };
        let mut sim = Sim::new(config);
        sim.step(0, Event::Start);
        sim.ready_all(1);
        if let Some(pid) = sim.alive.iter().next().copied() {
            sim.step(2, exited(pid, 1));
        }
        let mut now = sim.tick_through(5).max(3);
        sim.ready_all(now);
        let reload = parse(&second);
        now += 1;
        sim.step(now, Event::Reload { config: reload, reply: Some(1) });
        sim.ready_all(now);
        now = now.max(sim.tick_through(5));
        sim.ready_all(now);
        sim.step(now, Event::Scale { request: ScaleRequest::Add(i64::MAX), reply: None });
        sim.step(now, Event::Scale { request: ScaleRequest::Add(i64::MIN), reply: None });
        sim.step(now, Event::Stop);
        sim.tick_through(3);
        let later = sim.tick_through(1).max(now) + 1;
        sim.exit_all(later);
        prop_assert!(sim.pool.workers().is_empty());
    }
}

#[test]
fn scale_requests_saturate_and_refuse_what_is_over_the_limit() {
    let mut sim = started();
    let got = sim.step(1_000, Event::Scale { request: ScaleRequest::Add(i64::MAX), reply: Some(1) });
    assert_eq!(got[0], "reply 1 err: a pool runs at most 1024 workers: 9223372036854775807 refused, still 2 workers");
    assert_eq!(sim.pool.desired(), 2, "nothing changed");
    let got = sim.step(1_000, Event::Scale { request: ScaleRequest::Set(usize::MAX), reply: Some(2) });
    assert!(got[0].starts_with("reply 2 err: a pool runs at most 1024 workers"), "{got:?}");
    let got = sim.step(1_000, Event::Scale { request: ScaleRequest::Add(i64::MIN), reply: Some(3) });
    assert!(got.contains(&"reply 3 ok".to_string()), "{got:?}");
    assert_eq!(sim.pool.desired(), 1, "shrinking stops at one worker");
    let got = sim.step(1_000, Event::Scale { request: ScaleRequest::Set(1025), reply: Some(4) });
    assert!(got[0].starts_with("reply 4 err: a pool runs at most 1024 workers: 1025 refused"), "{got:?}");
    let got = sim.step(1_000, Event::Scale { request: ScaleRequest::Set(8), reply: Some(5) });
    assert!(got.contains(&"reply 5 ok".to_string()), "{got:?}");
    assert_eq!(sim.pool.desired(), 8);
}

#[test]
fn time_the_master_was_stopped_is_not_held_against_its_workers() {
    let mut sim = Sim::new(config(&format!("{BASE}\n[watchdog]\ntimeout = \"1s\"\n")));
    let stalled = |ms| Event::Stalled { duration: Duration::from_millis(ms) };
    sim.run(&[
        (0, Event::Start, &["spawn 0 g1 = 100", "spawn 1 g1 = 101"]),
        (10, ready(100), &[]),
        (10, ready(101), &["READY"]),
        (800, ping(100), &[]),
        (900, ping(101), &[]),
        // The master was stopped from 950ms to 60s: the workers' pings were queued, but 101's
        // last one was lost. Neither is killed on resume: the pause does not count.
        (60_000, ping(100), &[]),
        (60_000, stalled(59_050), &[]),
        (60_000, Event::Tick, &[]),
        // From now on the watchdog counts again: a full period for every worker.
        (60_999, Event::Tick, &[]),
        (61_000, Event::Tick, &["kill 100 SIGABRT", "kill 101 SIGABRT", "spawn 0 g1 = 102", "spawn 1 g1 = 103"]),
    ]);
    // A starting worker's ready timeout moves too.
    let mut sim = started();
    sim.run(&[
        (1_000, exited(100, 1), &[]),
        (1_100, Event::Tick, &["spawn 0 g1 = 102"]),
        (30_000, stalled(25_000), &[]),
        (30_000, Event::Tick, &[]),
        (36_099, Event::Tick, &[]),
        (36_100, Event::Tick, &["kill 102 SIGTERM"]),
    ]);
}

#[test]
fn a_snapshot_restored_carries_on_exactly_like_the_original() {
    // Two identical pools; one is snapshotted (through JSON, as `corral upgrade` does) and
    // restored mid-way, with a memory replacement in flight, a watchdog and a crashed slot in
    // backoff. From then on both must do exactly the same.
    let text = format!("{BASE}\n[limits]\nmemory = \"100MiB\"\n[watchdog]\ntimeout = \"3s\"\n");
    let mut a = Sim::new(config(&text));
    let mut b = Sim::new(config(&text));
    let prefix: Vec<(u64, Event)> = vec![
        (0, Event::Start),
        (10, ready(100)),
        (10, ready(101)),
        (1_000, ping(100)),
        (1_500, memory(101, 150)),
        (2_000, exited(100, 1)),
    ];
    for (ms, e) in &prefix {
        assert_eq!(a.step(*ms, e.clone()), b.step(*ms, e.clone()));
    }
    let state = b.pool.snapshot(b.at(2_050)).expect("a snapshot between events");
    let json = serde_json::to_string(&state).unwrap();
    b.pool = Pool::restore(serde_json::from_str(&json).unwrap(), b.at(2_050), 4).expect("restored");
    assert_eq!(b.pool.status_line(), a.pool.status_line());
    // Each sim has its own clock origin: compare deadlines from there.
    let since = |sim: &Sim| sim.pool.next_deadline().map(|d| d.duration_since(sim.t0));
    assert_eq!(since(&b), since(&a));
    let rest: Vec<(u64, Event)> = vec![
        (2_100, Event::Tick),
        (2_200, ready(102)),
        (2_300, ready(103)),
        (3_000, Event::Tick),
        (8_000, Event::Tick),
        (9_000, Event::Stop),
    ];
    for (ms, e) in rest {
        let (got_a, got_b) = (a.step(ms, e.clone()), b.step(ms, e.clone()));
        assert_eq!(got_b, got_a, "at {ms}ms after {e:?}");
    }
    assert_eq!(b.pool.restarts_by_reason(), a.pool.restarts_by_reason());
}

#[test]
fn no_snapshot_during_a_reload() {
    let mut sim = started();
    sim.step(1_000, reload(with("env = { R = \"2\" }"), 1));
    let err = sim.pool.snapshot(sim.at(1_001)).unwrap_err();
    assert_eq!(err, Refusal::Reloading(2));
    assert!(err.to_string().contains("a reload to generation 2 is in progress"), "{err}");
}

#[test]
fn the_first_crash_after_a_healthy_run_restarts_at_once_and_a_crash_loop_backs_off() {
    let mut sim = started();
    sim.run(&[
        // Ready at 10ms, up for 10s (over min_uptime 5s): restarted in the same instant.
        (10_000, exited(100, 1), &["spawn 0 g1 = 102"]),
        (10_100, ready(102), &[]),
        // The replacement crashes within min_uptime: that is a loop starting; `delay` (100ms).
        (11_000, exited(102, 1), &[]),
        (11_099, Event::Tick, &[]),
        (11_100, Event::Tick, &["spawn 0 g1 = 103"]),
        // And doubling: 200ms.
        (11_200, exited(103, 1), &[]),
        (11_399, Event::Tick, &[]),
        (11_400, Event::Tick, &["spawn 0 g1 = 104"]),
        (11_500, ready(104), &[]),
        // Healthy for min_uptime again: the count starts afresh, at once.
        (16_600, exited(104, 1), &["spawn 0 g1 = 105"]),
    ]);
    assert_eq!(sim.pool.restarts_total(), 4);
    assert_eq!(count(&sim, RestartReason::Crash), 4);
}

/// Each ready mode takes its own signals: "listen" only what the master saw (not `READY=1`,
/// which gunicorn's arbiter sends before its workers accept), "ipc" Node's message or
/// `READY=1`, the others `READY=1`; and "listen"/"ipc" have `ready.timeout` like "notify".
#[test]
fn each_ready_mode_takes_its_own_signals() {
    use crate::config::ReadySignal::{Ipc, Listening, Notify};
    let table = [
        ("notify", Notify, true),
        ("notify", Listening, false),
        ("notify", Ipc, false),
        ("listen", Listening, true),
        ("listen", Notify, false),
        ("listen", Ipc, false),
        ("ipc", Ipc, true),
        ("ipc", Notify, true),
        ("ipc", Listening, false),
        ("delay", Notify, true),
        ("delay", Listening, false),
        ("delay", Ipc, false),
    ];
    for (mode, signal, taken) in table {
        let mut sim = Sim::new(config(&BASE.replace("mode = \"notify\"\n", &format!("mode = \"{mode}\"\n"))));
        assert_eq!(sim.step(0, Event::Start), ["spawn 0 g1 = 100", "spawn 1 g1 = 101"]);
        if mode != "delay" {
            assert_eq!(sim.pool.next_deadline(), Some(sim.at(10_000)), "{mode}: ready.timeout applies");
        }
        assert!(sim.step(5, Event::Ready { pid: Pid::from_raw(100), signal }).is_empty());
        let want: &[&str] = if taken { &["READY"] } else { &[] };
        assert_eq!(sim.step(6, Event::Ready { pid: Pid::from_raw(101), signal }), want, "{mode} {signal:?}");
    }
}

/// `stop.drain`: the first stop signal keeps the pool serving (crashed workers still replaced,
/// health off, reloads and scaling refused) until the drain ends, then stops as usual; a second
/// signal ends the drain at once.
#[test]
fn a_drain_keeps_serving_then_stops() {
    let drained = || {
        let mut sim = Sim::new(config(&BASE.replace("[stop]\n", "[stop]\ndrain = \"2s\"\n")));
        sim.run(&[
            (0, Event::Start, &["spawn 0 g1 = 100", "spawn 1 g1 = 101"]),
            (10, ready(100), &[]),
            (20, ready(101), &["READY"]),
        ]);
        sim
    };
    let mut sim = drained();
    sim.run(&[
        // 2s drain + 5s stop timeout + 5s margin for systemd.
        (1_000, Event::Stop, &["STOPPING", "EXTEND 12s"]),
        (1_100, exited(100, 1), &[]),
        (1_200, Event::Tick, &["spawn 0 g1 = 102"]),
        (1_250, reload(with("env = { R = \"2\" }"), 7), &["reply 7 err: the pool is stopping"]),
        (1_300, Event::Scale { request: ScaleRequest::Add(1), reply: Some(8) }, &["reply 8 err: the pool is stopping"]),
        (2_999, Event::Tick, &[]),
        (3_000, Event::Tick, &["STOPPING", "EXTEND 10s", "kill 101 SIGTERM", "kill 102 SIGTERM"]),
        (3_100, exited(101, 0), &[]),
        (3_200, exited(102, 0), &["exit 0"]),
    ]);
    assert!(sim.pool.status_line().starts_with("Stopping"));

    let mut sim = drained();
    assert!(!sim.pool.draining());
    sim.step(1_000, Event::Stop);
    assert!(sim.pool.draining());
    assert_eq!(sim.pool.next_deadline(), Some(sim.at(3_000)));
    assert_eq!(sim.pool.status_line(), "2/2 workers ready · generation 1 · 0 restarts · draining before stop");
    assert_eq!(sim.step(1_500, Event::Stop), ["STOPPING", "EXTEND 10s", "kill 100 SIGTERM", "kill 101 SIGTERM"]);
    assert!(!sim.pool.draining());
    // A third signal kills.
    assert_eq!(sim.step(1_600, Event::Stop), ["kill 100 SIGKILL", "kill 101 SIGKILL"]);
}

/// A config error in `t.toml` at `line`, column 1.
fn config_error(line: usize, message: &str) -> crate::config::ConfigError {
    crate::config::ConfigError { path: "t.toml".into(), line, col: 1, message: message.into() }
}

/// Every change of a worker's state is a notice at debug level ("slot 0: starting → ready"), as
/// systemd logs a unit's transitions; leaving the pool when reaped is one too.
#[test]
fn every_change_of_a_workers_state_is_a_debug_notice() {
    let mut sim = started();
    sim.step(1_000, exited(100, 1));
    let moves: Vec<String> =
        sim.pool.take_notices().iter().filter(|n| n.severity() == Severity::Debug).map(|n| n.to_string()).collect();
    assert_eq!(
        moves[..4],
        [
            "slot 0: spawning → starting",
            "slot 1: spawning → starting",
            "slot 0: starting → ready",
            "slot 1: starting → ready"
        ],
        "{moves:?}"
    );
    assert_eq!(moves.get(4).map(String::as_str), Some("slot 0: ready → gone"), "{moves:?}");
}

/// `reload.start_nice`: a worker started while others serve runs at the lower priority until
/// it is ready; the first generation starts at full speed.
#[test]
fn workers_started_while_others_serve_start_at_a_lower_priority_until_ready() {
    let mut sim = started();
    assert!(sim.priority.is_empty(), "the first generation is not niced: {:?}", sim.priority);
    sim.run(&[
        (1_000, reload(with("env = { R = \"2\" }"), 1), &["RELOADING", "spawn 0 g2 = 102"]),
        (1_100, ready(102), &["kill 100 SIGTERM", "spawn 1 g2 = 103"]),
    ]);
    assert_eq!(sim.priority, ["nice 102 10", "normal 102", "nice 103 10"]);
    sim.step(1_200, ready(103));
    assert_eq!(sim.priority.last().map(String::as_str), Some("normal 103"));
    // A crash restart while the other worker serves is gentle too (102 was up past min_uptime:
    // it restarts at once).
    sim.step(9_000, exited(102, 1));
    let respawned = sim.alive.iter().copied().max().unwrap();
    assert_eq!(sim.priority.last(), Some(&format!("nice {respawned} 10")), "{:?}", sim.priority);
}

/// A worker still starting at half its `ready.timeout` gets its normal priority back, so a
/// saturated machine cannot starve it into a failed reload; the reload goes on.
#[test]
fn a_slow_start_at_low_priority_is_raised_at_half_its_ready_timeout() {
    let mut sim = started();
    sim.step(1_000, reload(with("env = { R = \"2\" }"), 1));
    assert_eq!(sim.priority, ["nice 102 10"]);
    assert_eq!(sim.pool.next_deadline(), Some(sim.at(6_000)), "half of the 10 s ready timeout");
    sim.step(6_000, Event::Tick);
    assert_eq!(sim.priority, ["nice 102 10", "normal 102"]);
    assert!(sim.pool.take_notices().iter().any(|n| matches!(n, Notice::StillStartingAtLowPriority(..))));
    // Ready later: nothing more to restore.
    sim.run(&[(7_000, ready(102), &["kill 100 SIGTERM", "spawn 1 g2 = 103"])]);
    assert_eq!(sim.priority, ["nice 102 10", "normal 102", "nice 103 10"]);
}

/// `start_nice = 0` turns it off; `spawn` mode (ready on exec) has no start to spread.
#[test]
fn start_nice_zero_and_spawn_mode_start_at_full_priority() {
    for extra in ["[reload]\nstart_nice = 0\n", ""] {
        let base = if extra.is_empty() {
            BASE.replace("mode = \"notify\"\n", "mode = \"spawn\"\n")
        } else {
            format!("{BASE}\n{extra}")
        };
        let mut sim = Sim::new(config(&base));
        sim.step(0, Event::Start);
        sim.ready_all(10);
        let next = config(&base.replace("instances = 2", "instances = 2\nenv = { R = \"2\" }"));
        sim.step(1_000, reload(next, 1));
        sim.ready_all(1_100);
        sim.ready_all(1_200);
        assert!(sim.priority.is_empty(), "{extra:?}: {:?}", sim.priority);
    }
}

#[test]
fn slots_the_descriptors_cannot_hold_stay_empty_with_one_notice_and_a_reload_still_rolls() {
    let base = BASE.replace("instances = 2", "instances = 5");
    let mut sim = Sim::new(config(&base));
    // Room for 3 processes: 2 slots filled, one process of room kept for a replacement.
    sim.run(&[
        (0, Event::Capacity { processes: 3, nofile: 64 }, &["spawn 0 g1 = 100", "spawn 1 g1 = 101"]),
        (0, Event::Start, &[]),
        (10, ready(100), &[]),
        // Ready once the slots that fit are: systemd is not kept waiting for the others.
        (20, ready(101), &["READY"]),
        (5_000, Event::Tick, &[]),
    ]);
    let told: Vec<String> = sim
        .pool
        .take_notices()
        .iter()
        .filter(|n| matches!(n, Notice::OutOfDescriptors { .. }))
        .map(|n| n.to_string())
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].contains("5 workers wanted, but only 2 fit") && told[0].contains("LimitNOFILE="), "{told:?}");
    // Scaling beyond what fits is refused; within it, or down, is not.
    sim.run(&[(
        6_000,
        Event::Scale { request: ScaleRequest::Set(8), reply: Some(1) },
        &["reply 1 err: only 2 workers fit in this master's descriptor limit (RLIMIT_NOFILE 64): 8 refused, \
             still 5 workers; raise LimitNOFILE= in the unit (or ulimit -n) and restart the pool"],
    )]);
    // A reload replaces one worker at a time (batch 100% or not) in the room kept for it; the
    // next starts once the replaced one has exited, since a draining worker still holds its
    // descriptors (CI once saw a reload run out of them when replaced workers drained slowly).
    let next = config(&format!("{base}\n[reload]\nbatch = \"100%\"\n"));
    sim.run(&[
        (7_000, reload(next, 2), &["RELOADING", "spawn 0 g2 = 102"]),
        (7_100, ready(102), &["kill 100 SIGTERM"]),
        (7_200, Event::Tick, &[]),
        (7_300, exited(100, 0), &["spawn 1 g2 = 103"]),
        (7_400, ready(103), &["kill 101 SIGTERM", "reply 2 ok", "READY"]),
        (7_500, exited(101, 0), &[]),
    ]);
    assert_eq!(sim.pool.generation(), 2);
    // A config whose workers cost more leaves room for fewer processes than run: a reload
    // still goes ahead, one replacement at a time once nothing else is in flight or leaving.
    sim.run(&[
        (8_000, Event::Capacity { processes: 2, nofile: 64 }, &[]),
        (8_100, reload(config(&format!("env = {{ R = \"3\" }}\n{base}")), 3), &["RELOADING", "spawn 0 g3 = 104"]),
        (8_200, ready(104), &["kill 102 SIGTERM"]),
        (8_300, exited(102, 0), &["spawn 1 g3 = 105"]),
        (8_400, ready(105), &["kill 103 SIGTERM", "reply 3 ok", "READY"]),
    ]);
    assert_eq!(sim.pool.generation(), 3);
}
