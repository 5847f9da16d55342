//! `sproutctl tui`: the daemon at a glance. State ([`state`]: what was
//! fetched, what is selected, key handling; pure), rendering ([`view`]:
//! state in, widgets out; tested on ratatui's `TestBackend`) and the IO loop
//! ([`run`]: polling the daemon, terminal events) are kept apart.

pub mod state;
pub mod view;

use std::io;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};

use crate::client::Client;
use crate::job::{Message, Role};
use crate::wire::{JobSubmission, Stats};
use state::{Action, App, Snapshot};

/// How often the daemon is polled: five small GETs every two seconds (the
/// totals come from running sums, not a ledger scan) ...
pub const POLL: Duration = Duration::from_secs(2);
/// ... and today's figures, which sum the ledger since midnight, every 30 s.
pub const TODAY_POLL: Duration = Duration::from_secs(30);

/// Today's stats and when they were fetched.
type Today = Option<(Instant, Stats)>;

async fn fetch(client: &Client, today: &mut Today) -> Result<Snapshot, String> {
    let e = |e: crate::client::ClientError| e.to_string();
    let stats = client.stats(None).await.map_err(e)?;
    let midnight = (crate::clock::wall_ms() / 1000 / 86_400 * 86_400) as f64;
    if today.as_ref().is_none_or(|(at, _)| at.elapsed() >= TODAY_POLL) {
        *today = Some((Instant::now(), client.stats(Some(midnight)).await.map_err(e)?));
    }
    let carbon = client.carbon().await.map_err(e)?;
    let plan = client.plan().await.map_err(e)?;
    let eval = client.eval_status().await.map_err(e)?;
    let jobs = client.jobs(None, 50).await.map_err(e)?;
    let mut snap = Snapshot::new(&stats, &carbon, &plan, &eval, &jobs);
    snap.backends = client.backends().await.map_err(e)?.data;
    if let Some((_, t)) = today {
        snap.today(t);
    }
    Ok(snap)
}

/// Runs the TUI until `q`. The daemon being down is shown, not fatal.
pub async fn run(client: Client) -> io::Result<()> {
    enable_raw_mode()?;
    let mut stdout = io::stdout();
    execute!(stdout, EnterAlternateScreen)?;
    let mut terminal = ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(stdout))?;
    let result = event_loop(&mut terminal, &client).await;
    disable_raw_mode()?;
    execute!(terminal.backend_mut(), LeaveAlternateScreen)?;
    terminal.show_cursor()?;
    result
}

async fn event_loop<B: ratatui::backend::Backend>(terminal: &mut ratatui::Terminal<B>, client: &Client) -> io::Result<()> {
    let mut app = App::default();
    let mut last_poll: Option<Instant> = None;
    let mut today: Today = None;
    loop {
        if last_poll.is_none_or(|t| t.elapsed() >= POLL) {
            match fetch(client, &mut today).await {
                Ok(s) => app.update(s),
                Err(e) => app.disconnected(e),
            }
            last_poll = Some(Instant::now());
        }
        terminal.draw(|f| view::draw(f, &app))?;
        // Wait for a key (or a resize) until the next poll is due.
        let wait = POLL.saturating_sub(last_poll.map(|t| t.elapsed()).unwrap_or_default()).min(Duration::from_millis(250));
        if !event::poll(wait)? {
            continue;
        }
        match event::read()? {
            Event::Key(k) if k.kind != KeyEventKind::Release => match app.key(k) {
                Action::Quit => return Ok(()),
                Action::Submit(prompt) => {
                    let body = JobSubmission { messages: vec![Message::new(Role::User, prompt)], ..Default::default() };
                    app.message = Some(match client.submit_job(&body, None).await {
                        Ok(j) => format!("submitted {}", j.id),
                        Err(e) => format!("submit failed: {e}"),
                    });
                    last_poll = None;
                }
                Action::Cancel(id) => {
                    app.message = Some(match client.cancel(&id).await {
                        Ok(_) => format!("cancelled {id}"),
                        Err(e) => format!("cancel failed: {e}"),
                    });
                    last_poll = None;
                }
                Action::None => {}
            },
            // A resize redraws at the new size on the next pass.
            Event::Resize(_, _) => terminal.autoresize()?,
            _ => {}
        }
    }
}
