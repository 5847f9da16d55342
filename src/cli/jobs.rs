//! Jobs: `submit`, `status`, `list`, `cancel`, `result`, and how a job and
//! its receipt are printed.

use std::io::Read;

use super::{print_json, utc, CliError, SubmitArgs};
use crate::client::Client;
use crate::job::{JobState, Message, Role};
use crate::wire::{JobSubmission, JobView};

pub async fn submit(client: &Client, args: SubmitArgs) -> Result<(), CliError> {
    let SubmitArgs { prompt, system, directive, max_tokens, seed, priority, idempotency_key, deadline, wait, json } = args;
    let prompt = read_prompt(prompt)?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(Message::new(Role::System, s));
    }
    messages.push(Message::new(Role::User, prompt));
    let body = JobSubmission { messages, directive, max_tokens, seed, priority, deadline };
    let job = client.submit_job(&body, idempotency_key.as_deref()).await?;
    if !wait {
        if json {
            print_json(&job);
        } else {
            println!("{} {}", job.id, state_text(&job));
        }
        return Ok(());
    }
    let job = client.wait_job(&job.id).await?;
    if json {
        print_json(&job);
        return Ok(());
    }
    print_answer(&job)
}

pub async fn status(client: &Client, id: &str, json: bool) -> Result<(), CliError> {
    let job = client.job(id, None).await?;
    if json {
        print_json(&job);
    } else {
        print_status(&job);
    }
    Ok(())
}

pub async fn list(client: &Client, state: Option<&str>, limit: usize, json: bool) -> Result<(), CliError> {
    let list = client.jobs(state, limit).await?;
    if json {
        print_json(&list);
        return Ok(());
    }
    println!("{:<22} {:<12} {:>4} {:<5} {:>8} {:>10}  prompt", "ID", "STATE", "PRIO", "LEVEL", "TOKENS", "gCO2e");
    for j in &list.data {
        // Running jobs: the tokens so far.
        let tokens = j.tokens().map(|t| t.to_string()).unwrap_or_else(|| "-".into());
        let carbon = j.receipt().map(|r| format!("{:.4}", r.carbon_g)).unwrap_or_else(|| "-".into());
        let state = match j.position {
            Some(p) => format!("queued #{}", p + 1),
            None => j.state.as_str().to_string(),
        };
        println!("{:<22} {:<12} {:>4} {:<5} {:>8} {:>10}  {}", j.id, state, j.priority, j.directive, tokens, carbon, prompt_preview(j, 50));
        if j.state == JobState::Deferred {
            println!("{:<22} {}", "", state_text(j));
        }
    }
    if list.data.is_empty() {
        println!("(no jobs)");
    }
    Ok(())
}

pub async fn cancel(client: &Client, id: &str, json: bool) -> Result<(), CliError> {
    let job = client.cancel(id).await?;
    if json {
        print_json(&job);
    } else {
        println!("{id} {}", job.state.as_str());
    }
    Ok(())
}

pub async fn result(client: &Client, id: &str, wait: bool, json: bool) -> Result<(), CliError> {
    let job = if wait { client.wait_job(id).await? } else { client.job(id, None).await? };
    match job.state {
        JobState::Succeeded if json => {
            print_json(&job.result);
            Ok(())
        }
        JobState::Succeeded => print_answer(&job),
        JobState::Deferred | JobState::Queued | JobState::Running => Err(CliError::Usage(format!(
            "job {id} is {}; no result yet (use --wait to wait for it)",
            job.state.as_str()
        ))),
        JobState::Failed | JobState::Cancelled => Err(ended(&job)),
    }
}

/// "job X ended failed: why".
fn ended(job: &JobView) -> CliError {
    CliError::Usage(format!(
        "job {} ended {}: {}",
        job.id,
        job.state.as_str(),
        job.error.as_ref().map(|e| e.message.as_str()).unwrap_or("no result")
    ))
}

fn read_prompt(prompt: String) -> Result<String, CliError> {
    let text = if prompt == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Usage(format!("cannot read the prompt from stdin: {e}")))?;
        s
    } else {
        prompt
    };
    if text.trim().is_empty() {
        return Err(CliError::Usage("the prompt is empty".into()));
    }
    Ok(text)
}

fn prompt_preview(job: &JobView, max: usize) -> String {
    let text = job.prompt().replace('\n', " ");
    if text.chars().count() > max {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    } else {
        text
    }
}

/// One line: the receipt of an answer.
pub fn receipt_line(job: &JobView) -> String {
    let Some(u) = job.usage() else {
        return format!("[{} | no receipt]", job.id);
    };
    let s = &u.sprout;
    format!(
        "[{} | directive {} | {} prompt + {} completion tokens | {:.1} J | {:.4} gCO2e | {}]",
        job.id,
        s.directive,
        u.prompt_tokens,
        u.completion_tokens,
        s.energy_j,
        s.carbon_g,
        if s.estimated { "estimated" } else { "measured" },
    )
}

fn print_answer(job: &JobView) -> Result<(), CliError> {
    if job.state != JobState::Succeeded {
        return Err(ended(job));
    }
    println!("{}", job.answer().unwrap_or("").trim_end());
    println!("{}", receipt_line(job));
    Ok(())
}

/// "queued (position 3, directive L1)", "deferred until ... (forecast ...)" and the like.
fn state_text(job: &JobView) -> String {
    let state = job.state.as_str();
    if let (JobState::Deferred, Some(d)) = (job.state, &job.deferred) {
        return format!(
            "deferred until {} (forecast {:.0} gCO2/kWh, {:.0} when submitted; deadline {}; directive {})",
            utc(d.until),
            d.forecast_gco2_per_kwh,
            d.submit_gco2_per_kwh,
            job.deadline_at.map(utc).unwrap_or_else(|| "-".into()),
            job.directive
        );
    }
    match job.position {
        Some(p) => format!("{state} (position {}, directive {})", p + 1, job.directive),
        None => format!("{state} (directive {})", job.directive),
    }
}

fn print_status(job: &JobView) {
    println!("id:        {}", job.id);
    println!("state:     {}", state_text(job));
    println!("priority:  {}", job.priority);
    println!("attempts:  {}", job.attempts);
    println!("prompt:    {}", prompt_preview(job, 70));
    if let Some(n) = job.tokens_so_far {
        println!("tokens:    {n} so far");
    }
    if job.state == JobState::Succeeded {
        println!("receipt:   {}", receipt_line(job));
    }
    if let Some(e) = &job.error {
        println!("error:     {}", e.message);
    }
}
