//! The TUI's state: the daemon's numbers as last fetched ([`Snapshot`], from
//! the API's bodies), what the user has selected, and key handling. Pure.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use crate::wire::{CarbonView, EvalStatus, JobView, LevelStats, List, PlanView, Reading, Stats};

/// Panels, in tab order.
pub const PANELS: [&str; 4] = ["Queue", "Emissions", "Directive mix", "Evaluator"];

#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobRow {
    pub id: String,
    pub state: String,
    pub directive: String,
    pub tokens: Option<u64>,
    pub carbon_g: Option<f64>,
    pub position: Option<u64>,
    /// Deferred: planned start (Unix s) and its forecast intensity.
    pub deferred_until: Option<f64>,
    pub deferred_forecast: Option<f64>,
    pub prompt: String,
}

impl JobRow {
    pub fn cancellable(&self) -> bool {
        matches!(self.state.as_str(), "queued" | "running" | "deferred")
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Jobs by state: deferred, queued, running (the daemon's counts).
    pub deferred: u64,
    pub queued: u64,
    pub running: u64,
    /// Recent jobs, newest first.
    pub jobs: Vec<JobRow>,
    pub ci_now: f64,
    pub ci_source: String,
    pub ci_fallback: bool,
    /// Hourly intensity over the recent past (oldest first) and ahead.
    pub past: Vec<f64>,
    pub forecast: Vec<f64>,
    pub carbon_g: f64,
    pub saved_g: Option<f64>,
    pub deferral_saved_g: f64,
    /// Since midnight UTC.
    pub carbon_today_g: f64,
    pub saved_today_g: Option<f64>,
    pub requests: u64,
    pub measured: u64,
    pub estimated: u64,
    pub meter: String,
    pub levels: Vec<String>,
    pub plan_x: Vec<f64>,
    pub plan_status: String,
    pub floor: Option<f64>,
    pub realized: Vec<f64>,
    pub mean_tokens: Vec<f64>,
    pub mean_energy_j: Vec<f64>,
    pub q: Option<Vec<f64>>,
    pub q_source: String,
    /// Per class, each shorter level's lower bound of kept quality (the
    /// optimizer's q) and its samples.
    pub kept: Vec<(String, Vec<(f64, u64)>)>,
    pub last_eval: Option<String>,
    pub next_eval: String,
    pub eval_running: bool,
    /// Where answers are made (`/v1/backends`).
    pub backends: Vec<crate::backends::BackendView>,
}

impl Snapshot {
    /// From `/v1/stats`, `/v1/carbon`, `/v1/plan`, `/v1/eval/status`, `/v1/jobs`.
    pub fn new(stats: &Stats, carbon: &CarbonView, plan: &PlanView, eval: &EvalStatus, jobs: &List<JobView>) -> Snapshot {
        let levels = plan.levels.clone();
        let per = |f: fn(&LevelStats) -> f64| -> Vec<f64> { levels.iter().map(|l| stats.levels.get(l).map(f).unwrap_or(0.0)).collect() };
        let jobs = jobs
            .data
            .iter()
            .map(|j| JobRow {
                id: j.id.clone(),
                state: j.state.as_str().to_string(),
                directive: j.directive.clone(),
                // Running jobs: the tokens so far.
                tokens: j.tokens(),
                carbon_g: j.receipt().map(|r| r.carbon_g),
                position: j.position,
                deferred_until: j.deferred.as_ref().map(|d| d.until),
                deferred_forecast: j.deferred.as_ref().map(|d| d.forecast_gco2_per_kwh),
                prompt: j.prompt().replace('\n', " "),
            })
            .collect();
        let next = &eval.next;
        let next_eval = if eval.running {
            "running now".to_string()
        } else if next.run_now {
            format!("now ({})", next.reason)
        } else {
            format!("{} at {:.0} gCO2/kWh forecast ({})", hhmm(next.at as f64), next.forecast_gco2_per_kwh, next.reason)
        };
        let intensities = |r: &[Reading]| r.iter().map(|r| r.gco2_per_kwh).collect();
        Snapshot {
            deferred: stats.queue.deferred,
            queued: stats.queue.queued,
            running: stats.queue.running,
            jobs,
            ci_now: carbon.now.gco2_per_kwh,
            ci_source: carbon.source.name.clone(),
            ci_fallback: carbon.source.fallback,
            past: intensities(&carbon.past),
            forecast: intensities(&carbon.forecast),
            carbon_g: stats.carbon_g,
            saved_g: stats.savings.carbon_g,
            deferral_saved_g: stats.deferral.saving_g,
            carbon_today_g: 0.0,
            saved_today_g: None,
            requests: stats.requests,
            measured: stats.measured_requests,
            estimated: stats.estimated_requests,
            meter: stats.meter.meter.clone(),
            plan_x: plan.x.clone().unwrap_or_default(),
            plan_status: plan.status.clone(),
            floor: plan.floor,
            realized: per(|l| l.share),
            mean_tokens: per(|l| l.mean_completion_tokens),
            mean_energy_j: per(|l| l.mean_energy_j),
            levels,
            q: eval.q.clone(),
            q_source: eval.q_source.clone(),
            kept: eval.kept.iter().map(|(class, ks)| (class.clone(), ks.iter().skip(1).map(|k| (k.lower, k.n as u64)).collect())).collect(),
            last_eval: eval.last_run.as_ref().map(|r| format!("{} at {}, {} unreadable", r.id, hhmm(r.at), r.failures)),
            next_eval,
            eval_running: eval.running,
            backends: Vec::new(),
        }
    }

    /// Today's figures, from `/v1/stats?since=<midnight UTC>`.
    pub fn today(&mut self, stats: &Stats) {
        self.carbon_today_g = stats.carbon_g;
        self.saved_today_g = stats.savings.carbon_g;
    }
}

/// `HH:MM` UTC of a Unix time.
pub fn hhmm(secs: f64) -> String {
    let s = (secs as i64).rem_euclid(86_400);
    format!("{:02}:{:02}", s / 3600, s % 3600 / 60)
}

/// What a key asks the loop to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    None,
    Quit,
    Submit(String),
    Cancel(String),
}

#[derive(Debug, Default)]
pub struct App {
    pub snapshot: Option<Snapshot>,
    /// Why the last poll failed; Some while reconnecting.
    pub error: Option<String>,
    pub panel: usize,
    pub selected: usize,
    pub help: bool,
    /// Some while typing a prompt to submit.
    pub input: Option<String>,
    pub message: Option<String>,
}

impl App {
    pub fn update(&mut self, s: Snapshot) {
        self.selected = self.selected.min(s.jobs.len().saturating_sub(1));
        self.snapshot = Some(s);
        self.error = None;
    }

    /// The poll failed: keep the last numbers, say so, keep trying.
    pub fn disconnected(&mut self, why: String) {
        self.error = Some(why);
    }

    pub fn selected_job(&self) -> Option<&JobRow> {
        self.snapshot.as_ref()?.jobs.get(self.selected)
    }

    pub fn key(&mut self, k: KeyEvent) -> Action {
        if let Some(text) = &mut self.input {
            match k.code {
                KeyCode::Enter => {
                    let prompt = text.trim().to_string();
                    self.input = None;
                    return if prompt.is_empty() { Action::None } else { Action::Submit(prompt) };
                }
                KeyCode::Esc => self.input = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => {}
            }
            return Action::None;
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        match k.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc if self.help => self.help = false,
            KeyCode::Char('?') => self.help = !self.help,
            KeyCode::Tab | KeyCode::Right => self.panel = (self.panel + 1) % PANELS.len(),
            KeyCode::BackTab | KeyCode::Left => self.panel = (self.panel + PANELS.len() - 1) % PANELS.len(),
            KeyCode::Down | KeyCode::Char('j') => {
                let n = self.snapshot.as_ref().map(|s| s.jobs.len()).unwrap_or(0);
                self.selected = (self.selected + 1).min(n.saturating_sub(1));
            }
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Char('s') => self.input = Some(String::new()),
            KeyCode::Char('c') => match self.selected_job() {
                Some(j) if j.cancellable() => return Action::Cancel(j.id.clone()),
                Some(j) => self.message = Some(format!("{} is {}: nothing to cancel", j.id, j.state)),
                None => self.message = Some("no job selected".into()),
            },
            _ => {}
        }
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn app_with_jobs() -> App {
        let mut app = App::default();
        let jobs = vec![
            JobRow { id: "job-2".into(), state: "succeeded".into(), ..JobRow::default() },
            JobRow { id: "job-1".into(), state: "queued".into(), ..JobRow::default() },
        ];
        app.update(Snapshot { jobs, ci_now: 100.0, ..Snapshot::default() });
        app
    }

    #[test]
    fn keys_move_select_submit_cancel_and_quit() {
        let mut app = app_with_jobs();
        assert_eq!(app.key(key(KeyCode::Tab)), Action::None);
        assert_eq!(app.panel, 1);
        app.key(key(KeyCode::BackTab));
        app.key(key(KeyCode::Left));
        assert_eq!(app.panel, 3);
        // The finished job cannot be cancelled; the queued one can.
        assert_eq!(app.key(key(KeyCode::Char('c'))), Action::None);
        assert!(app.message.as_deref().unwrap().contains("nothing to cancel"));
        app.key(key(KeyCode::Down));
        app.key(key(KeyCode::Down));
        assert_eq!(app.selected, 1);
        assert_eq!(app.key(key(KeyCode::Char('c'))), Action::Cancel("job-1".into()));
        // Typing a prompt: q is a letter there, not quit.
        app.key(key(KeyCode::Char('s')));
        for c in "hi q".chars() {
            assert_eq!(app.key(key(KeyCode::Char(c))), Action::None);
        }
        app.key(key(KeyCode::Backspace));
        assert_eq!(app.key(key(KeyCode::Enter)), Action::Submit("hi".into()));
        app.key(key(KeyCode::Char('?')));
        assert!(app.help);
        app.key(key(KeyCode::Esc));
        assert!(!app.help);
        assert_eq!(app.key(key(KeyCode::Char('q'))), Action::Quit);
    }

    #[test]
    fn a_failed_poll_keeps_the_numbers_and_recovers() {
        let mut app = app_with_jobs();
        app.disconnected("connection refused".into());
        assert!(app.error.is_some() && app.snapshot.is_some());
        app.update(Snapshot { ci_now: 120.0, ..Snapshot::default() });
        assert!(app.error.is_none());
        assert_eq!(app.snapshot.as_ref().unwrap().ci_now, 120.0);
        assert_eq!(app.selected, 0);
    }
}
