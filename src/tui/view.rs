//! Rendering: [`App`] in, widgets out. No IO, so every panel is tested by
//! rendering into ratatui's `TestBackend` and comparing with a snapshot.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Sparkline, Table, Wrap};
use ratatui::Frame;

use super::state::{hhmm, App, Snapshot, PANELS};

fn block(title: &str, focused: bool) -> Block<'_> {
    let style = if focused { Style::default().fg(Color::Cyan).add_modifier(Modifier::BOLD) } else { Style::default() };
    Block::default().borders(Borders::ALL).title(format!(" {title} ")).border_style(style)
}

/// A bar of `width` cells for a share in [0, 1].
fn bar(share: f64, width: usize) -> String {
    let n = ((share.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(n), "·".repeat(width - n))
}

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Length(1), Constraint::Min(8), Constraint::Length(1)])
        .split(area);
    let status = match (&app.error, &app.snapshot) {
        (Some(e), _) => Line::from(vec![
            Span::styled(" sproutd: RECONNECTING ", Style::default().fg(Color::Black).bg(Color::Red)),
            Span::raw(format!(" {e} (retrying every 2 s; last numbers kept)")),
        ]),
        (None, Some(s)) => Line::from(format!(
            " sproutd: connected · {} requests · {:.0} gCO2/kWh now · ? for help",
            s.requests, s.ci_now
        )),
        (None, None) => Line::from(" sproutd: connecting..."),
    };
    f.render_widget(Paragraph::new(status), rows[0]);
    let halves = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
        .split(rows[1]);
    let top = Layout::default().direction(Direction::Horizontal).constraints([Constraint::Percentage(55), Constraint::Percentage(45)]).split(halves[0]);
    let bottom = Layout::default().direction(Direction::Horizontal).constraints([Constraint::Percentage(55), Constraint::Percentage(45)]).split(halves[1]);
    match &app.snapshot {
        // Never reached yet: one message, not four empty panels.
        None => f.render_widget(
            Paragraph::new("waiting for sproutd... (the line above says why)").block(Block::default().borders(Borders::ALL)),
            rows[1],
        ),
        Some(s) => {
            queue(f, top[0], app, s, app.panel == 0);
            emissions(f, top[1], s, app.panel == 1);
            mix(f, bottom[0], s, app.panel == 2);
            evaluator(f, bottom[1], s, app.panel == 3);
        }
    }
    let footer = match (&app.input, &app.message) {
        (Some(text), _) => Line::from(vec![Span::styled(" prompt> ", Style::default().fg(Color::Yellow)), Span::raw(format!("{text}_  (Enter submits, Esc cancels)"))]),
        (None, Some(m)) => Line::from(format!(" {m}")),
        (None, None) => Line::from(" tab/←→ panel · ↑↓ job · s submit · c cancel · ? help · q quit"),
    };
    f.render_widget(Paragraph::new(footer), rows[2]);
    if app.help {
        help(f, area);
    }
}

fn help(f: &mut Frame, area: Rect) {
    let w = area.width.min(58);
    let h = area.height.min(12);
    let r = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    let text = vec![
        Line::from("tab, →      next panel"),
        Line::from("shift-tab, ← previous panel"),
        Line::from("↑ ↓ (k j)   select a job in Queue"),
        Line::from("s           submit a prompt as a job"),
        Line::from("c           cancel the selected job"),
        Line::from("?  esc      close this help"),
        Line::from("q           quit"),
        Line::from(""),
        Line::from(format!("Panels: {}", PANELS.join(", "))),
    ];
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(text).block(block("Help", true)), r);
}

pub fn queue(f: &mut Frame, area: Rect, app: &App, s: &Snapshot, focused: bool) {
    let b = block(PANELS[0], focused);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let parts = Layout::default().direction(Direction::Vertical).constraints([Constraint::Length(1), Constraint::Min(1)]).split(inner);
    let finished = |st: &str| s.jobs.iter().filter(|j| j.state == st).count();
    f.render_widget(
        Paragraph::new(format!(
            "deferred {}  queued {}  running {}  · recent: ok {}  failed {}  cancelled {}",
            s.deferred,
            s.queued,
            s.running,
            finished("succeeded"),
            finished("failed"),
            finished("cancelled")
        )),
        parts[0],
    );
    let rows: Vec<Row> = s
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let state = match (j.state.as_str(), j.position, j.deferred_until) {
                ("deferred", _, Some(t)) => format!("defer→{} {:.0}g", hhmm(t), j.deferred_forecast.unwrap_or(f64::NAN)),
                ("queued", Some(p), _) => format!("queued #{}", p + 1),
                (st, _, _) => st.to_string(),
            };
            let style = if i == app.selected && focused { Style::default().add_modifier(Modifier::REVERSED) } else { Style::default() };
            Row::new(vec![
                match j.id.trim_start_matches("job-").trim_start_matches('0') {
                    "" => "0".to_string(),
                    short => short.to_string(),
                },
                state,
                j.directive.clone(),
                j.tokens.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                j.carbon_g.map(|c| format!("{c:.4}")).unwrap_or_else(|| "-".into()),
                j.prompt.chars().take(40).collect(),
            ])
            .style(style)
        })
        .collect();
    let table = Table::new(
        rows,
        [Constraint::Length(5), Constraint::Length(17), Constraint::Length(3), Constraint::Length(6), Constraint::Length(8), Constraint::Min(10)],
    )
    .header(Row::new(vec!["job", "state", "lvl", "tokens", "gCO2e", "prompt"]).style(Style::default().add_modifier(Modifier::BOLD)));
    f.render_widget(table, parts[1]);
}

pub fn emissions(f: &mut Frame, area: Rect, s: &Snapshot, focused: bool) {
    let b = block(PANELS[1], focused);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let parts = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Length(2), Constraint::Length(3), Constraint::Length(3), Constraint::Min(3)])
        .split(inner);
    let mut now = vec![Span::styled(format!("now {:.0} gCO2/kWh", s.ci_now), Style::default().add_modifier(Modifier::BOLD))];
    if s.ci_fallback {
        now.push(Span::styled(" FALLBACK", Style::default().fg(Color::Red)));
    }
    now.push(Span::raw(format!("  ({})", s.ci_source)));
    f.render_widget(Paragraph::new(Line::from(now)).wrap(Wrap { trim: true }), parts[0]);
    let max = s.forecast.iter().chain(&s.past).cloned().fold(1.0, f64::max);
    let spark = |v: &[f64]| v.iter().map(|x| (x / max * 100.0).round() as u64).collect::<Vec<u64>>();
    let past = spark(&s.past);
    let next = spark(&s.forecast);
    let high = s.past.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let title = if s.past.is_empty() { "past: none yet".to_string() } else { format!("past {} h (high {high:.0})", s.past.len()) };
    f.render_widget(Sparkline::default().block(Block::default().title(title)).data(&past), parts[1]);
    let low = s.forecast.iter().cloned().fold(f64::INFINITY, f64::min);
    f.render_widget(Sparkline::default().block(Block::default().title(format!("next {} h forecast (low {low:.0})", s.forecast.len()))).data(&next), parts[2]);
    let g = |v: Option<f64>| v.map(|g| format!("{g:.4} g")).unwrap_or_else(|| "-".into());
    let mut text = vec![
        Line::from(format!("emitted {:.4} g today, {:.4} gCO2e in all {} requests", s.carbon_today_g, s.carbon_g, s.requests)),
        Line::from(format!("saved   {} today, {} in all by directives; {:.4} g by deferral", g(s.saved_today_g), g(s.saved_g), s.deferral_saved_g)),
        Line::from(format!("energy  {} measured, {} estimated ({})", s.measured, s.estimated, s.meter)),
    ];
    // More than the embedded engine: one line per backend.
    if s.backends.iter().any(|b| b.kind != "embedded") {
        for b in &s.backends {
            let health = if !b.ready { "loading" } else if b.healthy { "up" } else { "DOWN" };
            text.push(Line::from(format!(
                "{:<8} {:<4} {}/{} {:>4.0} g/kWh {:>4} req {:.4} g{}",
                b.name, health, b.running, b.capacity, b.gco2_per_kwh, b.requests, b.carbon_g, if b.measured { "" } else { " est." }
            )));
        }
    }
    f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), parts[3]);
}

pub fn mix(f: &mut Frame, area: Rect, s: &Snapshot, focused: bool) {
    let b = block(PANELS[2], focused);
    let mut lines = vec![Line::from(format!(
        "plan: {}  quality floor {}",
        s.plan_status,
        s.floor.map(|x| format!("{:.0}% of all-L0", x * 100.0)).unwrap_or_else(|| "-".into())
    ))];
    for (i, l) in s.levels.iter().enumerate() {
        let x = s.plan_x.get(i).copied().unwrap_or(0.0);
        let r = s.realized.get(i).copied().unwrap_or(0.0);
        lines.push(Line::from(format!("{l:<3} plan   {} {:>4.0}%", bar(x, 12), x * 100.0)));
        lines.push(Line::from(format!(
            "    served {} {:>4.0}%  {:>5.0} tok {:>7.1} J",
            bar(r, 12),
            r * 100.0,
            s.mean_tokens.get(i).copied().unwrap_or(0.0),
            s.mean_energy_j.get(i).copied().unwrap_or(0.0)
        )));
    }
    f.render_widget(Paragraph::new(lines).block(b), area);
}

pub fn evaluator(f: &mut Frame, area: Rect, s: &Snapshot, focused: bool) {
    let b = block(PANELS[3], focused);
    let q = match &s.q {
        Some(q) => s.levels.iter().zip(q).map(|(l, v)| format!("{l} {v:.2}")).collect::<Vec<_>>().join("  "),
        None => "-".into(),
    };
    let mut lines = vec![Line::from("kept quality, 95% lower bound (samples):")];
    for (class, ks) in &s.kept {
        let cells: Vec<String> = s.levels.iter().skip(1).zip(ks).map(|(l, (lower, n))| format!("{l} {lower:.2} ({n})")).collect();
        lines.push(Line::from(format!("  {class:<11} {}", cells.join("  "))));
    }
    lines.extend([
        Line::from(format!("judged q: {q}")),
        Line::from(format!("   from {}", s.q_source)),
        Line::from(format!("last run: {}", s.last_eval.clone().unwrap_or_else(|| "none yet".into()))),
        Line::from(format!("next run: {}", s.next_eval)),
    ]);
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }).block(b), area);
}

/// A snapshot with fixed numbers, for tests and screenshots.
pub fn sample_snapshot() -> Snapshot {
    use super::state::JobRow;
    Snapshot {
        deferred: 1,
        queued: 1,
        running: 1,
        jobs: vec![
            JobRow { id: "job-0000000000000012".into(), state: "deferred".into(), directive: "L1".into(), deferred_until: Some(1_700_020_800.0), deferred_forecast: Some(48.0), prompt: "Summarise the logs".into(), ..JobRow::default() },
            JobRow { id: "job-0000000000000011".into(), state: "queued".into(), directive: "L2".into(), position: Some(0), prompt: "What is 12 x 7?".into(), ..JobRow::default() },
            JobRow { id: "job-0000000000000010".into(), state: "running".into(), directive: "L0".into(), prompt: "Why is the sky blue?".into(), tokens: Some(12), ..JobRow::default() },
            JobRow { id: "job-0000000000000009".into(), state: "succeeded".into(), directive: "L2".into(), tokens: Some(10), carbon_g: Some(0.0043), prompt: "Capital of Australia?".into(), ..JobRow::default() },
        ],
        ci_now: 212.0,
        ci_source: "trace GB 2023".into(),
        ci_fallback: false,
        past: vec![150.0, 170.0, 190.0, 230.0, 240.0, 225.0, 212.0],
        forecast: vec![200.0, 180.0, 150.0, 120.0, 100.0, 90.0, 110.0, 160.0],
        carbon_g: 0.1838,
        saved_g: Some(0.0901),
        carbon_today_g: 0.0612,
        saved_today_g: Some(0.0307),
        deferral_saved_g: 0.0125,
        requests: 10,
        measured: 0,
        estimated: 10,
        meter: "estimate (20 W idle + 65 W x utilisation of 2 cores)".into(),
        levels: vec!["L0".into(), "L1".into(), "L2".into()],
        plan_x: vec![0.5, 0.25, 0.25],
        plan_status: "optimal".into(),
        floor: Some(0.95),
        realized: vec![0.4, 0.3, 0.3],
        mean_tokens: vec![80.5, 38.0, 19.0],
        mean_energy_j: vec![280.8, 154.3, 101.8],
        q: Some(vec![0.38, 0.34, 0.28]),
        q_source: "the last run's judged prompts (pick-best shares)".into(),
        kept: vec![("math".into(), vec![(0.62, 40), (0.31, 40)]), ("question".into(), vec![(0.93, 64), (0.71, 64)])],
        last_eval: Some("eval-1700000000000 at 22:13, 0 unreadable".into()),
        next_eval: "04:00 at 95 gCO2/kWh forecast (waiting for a cleaner hour)".into(),
        eval_running: false,
        backends: vec![backend("local", "embedded", true, 2, 4, 212.0, 7), backend("gpu-fr", "openai", false, 0, 16, 31.0, 3)],
    }
}

/// A backend as the TUI's sample shows it.
fn backend(name: &str, kind: &str, healthy: bool, running: usize, capacity: usize, ci: f64, requests: u64) -> crate::backends::BackendView {
    crate::backends::BackendView {
        name: name.into(),
        kind: kind.into(),
        url: None,
        model: "m".into(),
        healthy,
        ready: true,
        last_error: None,
        retry_in_s: None,
        running,
        capacity,
        zone: "z".into(),
        gco2_per_kwh: ci,
        energy_source: "estimate".into(),
        measured: kind != "embedded",
        j_per_token: 1.0,
        j_per_token_measured: true,
        expected_g_per_token: 0.0,
        requests,
        faults: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        energy_j: 0.0,
        carbon_g: 0.01 * requests as f64,
        idle_energy_j: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn app() -> App {
        let mut app = App::default();
        app.update(sample_snapshot());
        app
    }

    fn render(w: u16, h: u16, draw: impl FnOnce(&mut Frame)) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(draw).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>().trim_end().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Compares with `src/tui/snapshots/NAME.txt`; `UPDATE_SNAPSHOTS=1` rewrites it.
    fn snapshot(name: &str, got: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tui/snapshots").join(format!("{name}.txt"));
        if std::env::var("UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("{got}\n")).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} is missing (UPDATE_SNAPSHOTS=1 writes it)", path.display()));
        assert_eq!(got, want.trim_end_matches('\n'), "{name} differs from its snapshot; got:\n{got}");
    }

    #[test]
    fn queue_panel() {
        let a = app();
        snapshot("queue", &render(78, 9, |f| queue(f, f.area(), &a, a.snapshot.as_ref().unwrap(), true)));
    }

    #[test]
    fn emissions_panel() {
        let a = app();
        snapshot("emissions", &render(60, 18, |f| emissions(f, f.area(), a.snapshot.as_ref().unwrap(), false)));
    }

    #[test]
    fn mix_panel() {
        let a = app();
        snapshot("mix", &render(60, 9, |f| mix(f, f.area(), a.snapshot.as_ref().unwrap(), false)));
    }

    #[test]
    fn evaluator_panel() {
        let a = app();
        snapshot("evaluator", &render(60, 7, |f| evaluator(f, f.area(), a.snapshot.as_ref().unwrap(), false)));
    }

    #[test]
    fn the_whole_screen_reconnecting_and_with_help() {
        let mut a = app();
        a.disconnected("cannot reach sproutd at http://127.0.0.1:7878".into());
        a.help = true;
        snapshot("screen", &render(120, 36, |f| draw(f, &a)));
        // Small terminals still draw (resize).
        a.help = false;
        let small = render(50, 12, |f| draw(f, &a));
        assert!(small.contains("RECONNECTING"));
        // Never connected: one message in place of the panels.
        let mut never = App::default();
        never.disconnected("cannot reach sproutd at http://127.0.0.1:7878".into());
        let screen = render(80, 14, |f| draw(f, &never));
        assert_eq!(screen.matches("waiting for sproutd").count(), 1, "{screen}");
        assert!(screen.contains("RECONNECTING") && !screen.contains("Queue"), "{screen}");
    }
}
