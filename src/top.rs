//! `corral top [NAME]`: the live view of a pool, as `pm2 monit` gives it. Each second it asks
//! the control socket for the pool's status (the same snapshot `corral status` shows) and draws
//! one row per worker, with a sparkline of each slot's memory over the last minute; `r` reloads,
//! `+`/`-` scale by one, Tab moves between pools, `q` quits. Drawn with ratatui in the terminal's
//! alternate screen; when its output is not a terminal it prints the plain status table every
//! second instead.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};

use crate::control::{Reply, Request};
use crate::status::{Health, PoolStatus};
use crate::text::{escape_terminal, human_bytes, human_duration};

/// How many samples a sparkline shows: one minute at one per second.
const HISTORY: usize = 60;

/// What the view shows, without drawing it: the pools' last statuses and each slot's memory over
/// the last minute.
#[derive(Default)]
pub struct View {
    pub pools: Vec<PoolStatus>,
    /// (pool, slot) → RSS samples, oldest first.
    memory: BTreeMap<(String, usize), VecDeque<u64>>,
    /// The pool the keys act on.
    pub selected: usize,
    /// The last action's outcome, shown at the bottom.
    pub message: Option<(String, bool)>,
    /// Pools that could not be asked, and why.
    pub errors: Vec<String>,
}

impl View {
    /// Take in a new round of statuses.
    pub fn update(&mut self, pools: Vec<PoolStatus>, errors: Vec<String>) {
        for p in &pools {
            for w in p.workers.iter().filter(|w| w.state != crate::pool::WorkerPhase::Stopping) {
                if let Some(rss) = w.rss_bytes {
                    let h = self.memory.entry((p.name.clone(), w.slot)).or_default();
                    h.push_back(rss);
                    while h.len() > HISTORY {
                        h.pop_front();
                    }
                }
            }
        }
        // Slots that are gone (scaled down, pool stopped) are forgotten.
        self.memory.retain(|(pool, slot), _| {
            pools.iter().any(|p| &p.name == pool && p.workers.iter().any(|w| w.slot == *slot))
        });
        self.pools = pools;
        self.errors = errors;
        if self.selected >= self.pools.len() {
            self.selected = 0;
        }
    }

    /// A slot's memory over the last minute, in `width` block characters (the newest on the
    /// right), scaled from the least to the most it used in that time.
    pub fn sparkline(&self, pool: &str, slot: usize, width: usize) -> String {
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let Some(h) = self.memory.get(&(pool.to_string(), slot)) else { return String::new() };
        let recent: Vec<u64> = h.iter().rev().take(width).rev().copied().collect();
        let (lo, hi) = (recent.iter().min().copied().unwrap_or(0), recent.iter().max().copied().unwrap_or(0));
        recent.iter().map(|v| if hi == lo { BARS[0] } else { BARS[((v - lo) * 7 / (hi - lo)) as usize] }).collect()
    }

    fn selected_name(&self) -> Option<String> {
        self.pools.get(self.selected).map(|p| p.name.clone())
    }
}

/// Ask every pool in `names` for its status.
fn poll(names: &[String]) -> (Vec<PoolStatus>, Vec<String>) {
    let mut pools = Vec::new();
    let mut errors = Vec::new();
    for n in names {
        match crate::control::ask(n, &Request::Status, Duration::from_secs(2)) {
            Ok(Reply { status: Some(s), .. }) => pools.push(s),
            Ok(Reply { error, .. }) => errors.push(format!("{n}: {}", error.unwrap_or_else(|| "no status".into()))),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (pools, errors)
}

/// The pools to show: NAME, or every pool running (looked up again each round).
fn names(name: Option<&str>) -> Vec<String> {
    match name {
        Some(n) => vec![n.to_string()],
        None => crate::rundir::running_pools(),
    }
}

/// `corral top`: until `q` (or `count` refreshes); the exit status.
pub fn run(name: Option<&str>, count: Option<u64>) -> u8 {
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        match interactive(name, count) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("corral top: the terminal failed: {e}");
                1
            }
        }
    } else {
        plain(name, count)
    }
}

/// Output that is not a terminal: the status table every second.
fn plain(name: Option<&str>, count: Option<u64>) -> u8 {
    let mut out = std::io::stdout().lock();
    let mut n = 0;
    loop {
        let (pools, errors) = poll(&names(name));
        let mut text = String::new();
        if pools.is_empty() && errors.is_empty() {
            text.push_str("no pools running\n");
        }
        text.push_str(&crate::status::render(&pools, false));
        for e in &errors {
            text.push_str(e);
            text.push('\n');
        }
        text.push('\n');
        // A reader that went away (`| head`) ends it quietly.
        if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
            return 0;
        }
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return u8::from(!errors.is_empty());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn interactive(name: Option<&str>, count: Option<u64>) -> std::io::Result<u8> {
    let mut terminal = ratatui::try_init()?;
    let result = (|| {
        let mut view = View::default();
        let mut rounds = 0;
        loop {
            let (pools, errors) = poll(&names(name));
            view.update(pools, errors);
            terminal.draw(|f| draw(f, &view))?;
            rounds += 1;
            if count.is_some_and(|c| rounds >= c) {
                return Ok(0);
            }
            // Keys until the next refresh, a second after this one.
            let next = Instant::now() + Duration::from_secs(1);
            while let Some(left) = next.checked_duration_since(Instant::now()) {
                if !event::poll(left)? {
                    break;
                }
                let Event::Key(key) = event::read()? else { continue };
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(0),
                    _ if ctrl_c => return Ok(0),
                    KeyCode::Tab if !view.pools.is_empty() => view.selected = (view.selected + 1) % view.pools.len(),
                    KeyCode::Char(c @ ('r' | '+' | '-')) => {
                        if let Some(pool) = view.selected_name() {
                            view.message = Some(act(&pool, c));
                        }
                    }
                    _ => {}
                }
                terminal.draw(|f| draw(f, &view))?;
            }
        }
    })();
    ratatui::restore();
    result
}

/// A key's action on `pool`: (what happened, whether it worked).
fn act(pool: &str, key: char) -> (String, bool) {
    let (request, what) = match key {
        'r' => (Request::Reload { wait: false }, "reload"),
        '+' => (Request::Scale { to: "+1".into() }, "scale +1"),
        _ => (Request::Scale { to: "-1".into() }, "scale -1"),
    };
    match crate::control::ask(pool, &request, Duration::from_secs(5)) {
        Ok(Reply { ok: true, message, .. }) => {
            (format!("{pool}: {what}: {}", message.unwrap_or_else(|| "ok".into())), true)
        }
        Ok(Reply { error, .. }) => (format!("{pool}: {what}: {}", error.unwrap_or_else(|| "failed".into())), false),
        Err(e) => (format!("{what}: {e}"), false),
    }
}

fn state_color(state: crate::pool::WorkerPhase) -> Color {
    match state {
        crate::pool::WorkerPhase::Ready => Color::Green,
        crate::pool::WorkerPhase::Starting => Color::Yellow,
        crate::pool::WorkerPhase::Stopping => Color::Red,
    }
}

fn draw(f: &mut ratatui::Frame, view: &View) {
    let area = f.area();
    let mut constraints: Vec<Constraint> = Vec::new();
    for p in &view.pools {
        constraints.push(Constraint::Length(1));
        constraints.push(Constraint::Length(p.workers.len() as u16 + 2));
    }
    for _ in &view.errors {
        constraints.push(Constraint::Length(1));
    }
    constraints.push(Constraint::Min(0));
    constraints.push(Constraint::Length(1));
    let chunks = Layout::vertical(constraints).split(area);
    let mut i = 0;
    if view.pools.is_empty() && view.errors.is_empty() {
        f.render_widget(Paragraph::new("no pools running"), chunks[0]);
    }
    for (n, p) in view.pools.iter().enumerate() {
        f.render_widget(Paragraph::new(pool_line(p, n == view.selected && view.pools.len() > 1)), chunks[i]);
        f.render_widget(worker_table(view, p, area.width), chunks[i + 1]);
        i += 2;
    }
    for e in &view.errors {
        let text = escape_terminal(e).into_owned();
        f.render_widget(Paragraph::new(text).style(Style::new().fg(Color::Red)), chunks[i]);
        i += 1;
    }
    let keys = "r reload · + / - scale · tab next pool · q quit";
    let footer = match &view.message {
        Some((m, ok)) => Line::from(vec![
            Span::styled(escape_terminal(m).into_owned(), Style::new().fg(if *ok { Color::Green } else { Color::Red })),
            Span::raw("   "),
            Span::styled(keys, Style::new().add_modifier(Modifier::DIM)),
        ]),
        None => Line::styled(keys, Style::new().add_modifier(Modifier::DIM)),
    };
    if let Some(last) = chunks.last() {
        f.render_widget(Paragraph::new(footer), *last);
    }
}

/// "api · 4/4 ready · gen 3 · 0 restarts · up 2h · last reload ok (gen 3)": 80 columns hold it.
fn pool_line(p: &PoolStatus, selected: bool) -> Line<'static> {
    let health = match p.health() {
        Health::AllReady => Color::Green,
        Health::SomeReady => Color::Yellow,
        Health::NoneReady => Color::Red,
    };
    let mut name = Style::new().add_modifier(Modifier::BOLD);
    if selected {
        name = name.add_modifier(Modifier::REVERSED);
    }
    let mut spans = vec![
        Span::styled(escape_terminal(&p.name).into_owned(), name),
        Span::raw(" · "),
        Span::styled(format!("{}/{} ready", p.ready, p.desired), Style::new().fg(health)),
        Span::raw(format!(
            " · gen {} · {} restarts · up {}",
            p.generation,
            p.restarts,
            human_duration(p.uptime_seconds)
        )),
    ];
    if p.reloading {
        spans.push(Span::styled(" · reloading", Style::new().fg(Color::Yellow)));
    }
    match &p.last_reload {
        Some(r) if r.ok => spans.push(Span::raw(format!(" · last reload ok (gen {})", r.generation.unwrap_or(0)))),
        Some(r) => spans.push(Span::styled(
            format!(" · last reload failed: {}", escape_terminal(r.error.as_deref().unwrap_or("unknown error"))),
            Style::new().fg(Color::Red),
        )),
        None => {}
    }
    Line::from(spans)
}

fn worker_table<'a>(view: &View, p: &PoolStatus, width: u16) -> Table<'a> {
    // Fixed columns and their spacing take 60 cells; the sparkline and STATUS share the rest
    // (10 each in 80 columns).
    let spark = usize::from(width.saturating_sub(60) / 2).clamp(4, HISTORY);
    let header = Row::new(["SLOT", "PID", "STATE", "GEN", "CPU", "MEM", "HISTORY", "RESTARTS", "UPTIME", "STATUS"])
        .style(Style::new().add_modifier(Modifier::DIM));
    let rows: Vec<Row> = p
        .workers
        .iter()
        .map(|w| {
            let status = w.status.as_deref().map(escape_terminal).unwrap_or_default();
            let status = match &w.replacing {
                Some(why) => format!("replacing ({why}) {status}"),
                None => status.into_owned(),
            };
            Row::new(vec![
                Cell::from(w.slot.to_string()),
                Cell::from(w.pid.map_or("-".into(), |p| p.to_string())),
                Cell::from(w.state.to_string()).style(Style::new().fg(state_color(w.state))),
                Cell::from(w.generation.to_string()),
                Cell::from(w.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%"))),
                Cell::from(w.rss_bytes.map_or("-".into(), human_bytes)),
                Cell::from(view.sparkline(&p.name, w.slot, spark)).style(Style::new().fg(Color::Cyan)),
                Cell::from(w.restarts.to_string()),
                Cell::from(human_duration(w.uptime_seconds)),
                Cell::from(status),
            ])
        })
        .collect();
    Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(3),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(spark as u16),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Min(8),
        ],
    )
    .header(header)
    .column_spacing(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(rss: &[(usize, u64)]) -> PoolStatus {
        let mut p: PoolStatus = serde_json::from_value(serde_json::json!({
            "name": "api", "pid": 1, "uptime_seconds": 1.0, "generation": 1, "desired": 2, "ready": 2,
            "reloading": false, "last_reload": null, "restarts": 0, "restarts_by_reason": {},
            "reloads_succeeded": 0, "reloads_failed": 0, "workers": []
        }))
        .unwrap();
        for (slot, b) in rss {
            p.workers.push(
                serde_json::from_value(serde_json::json!({
                    "slot": slot, "pid": 10, "generation": 1, "state": "ready", "uptime_seconds": 1.0,
                    "restarts": 0, "rss_bytes": b, "cpu_percent": null, "cpu_seconds": null, "status": null,
                    "replacing": null, "processes": 1, "listening_pids": []
                }))
                .unwrap(),
            );
        }
        p
    }

    #[test]
    fn sparklines_scale_each_slots_last_minute() {
        let mut v = View::default();
        for mib in [10, 20, 30, 40, 50, 60, 70, 80] {
            v.update(vec![pool(&[(0, mib << 20), (1, 5 << 20)])], vec![]);
        }
        assert_eq!(v.sparkline("api", 0, 8), "▁▂▃▄▅▆▇█");
        assert_eq!(v.sparkline("api", 0, 3), "▁▄█");
        assert_eq!(v.sparkline("api", 1, 8), "▁▁▁▁▁▁▁▁", "flat memory is a flat line");
        for _ in 0..100 {
            v.update(vec![pool(&[(0, 1), (1, 1)])], vec![]);
        }
        assert_eq!(v.memory[&("api".to_string(), 0)].len(), HISTORY);
        // Scaled down to one slot: slot 1's history goes.
        v.update(vec![pool(&[(0, 1)])], vec![]);
        assert_eq!(v.sparkline("api", 1, 8), "");
    }
}
