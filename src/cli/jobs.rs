//! Jobs: `submit`, `status`, `list`, `cancel`, `result`, and how a job and
//! its receipt are printed.

use std::io::Read;

use serde_json::{json, Value};

use super::{print_json, utc, CliError, SubmitArgs};
use crate::client::{Client, ClientError};

pub async fn submit(client: &Client, args: SubmitArgs) -> Result<(), CliError> {
    let SubmitArgs { prompt, system, directive, max_tokens, seed, priority, idempotency_key, deadline, wait, json } = args;
    let prompt = read_prompt(prompt)?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": prompt}));
    let mut body = json!({"messages": messages});
    if let Some(d) = directive {
        body["directive"] = json!(d);
    }
    if let Some(n) = max_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(s) = seed {
        body["seed"] = json!(s);
    }
    if let Some(p) = priority {
        body["priority"] = json!(p);
    }
    if let Some(d) = deadline {
        body["deadline"] = json!(d);
    }
    let job = client.submit_job(&body, idempotency_key.as_deref()).await?;
    let id = job["id"].as_str().ok_or_else(|| ClientError::Protocol("job without id".into()))?.to_string();
    if !wait {
        if json {
            print_json(&job);
        } else {
            println!("{id} {}", state_text(&job));
        }
        return Ok(());
    }
    let job = client.wait_job(&id).await?;
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
    let jobs = list["data"].as_array().cloned().unwrap_or_default();
    println!("{:<22} {:<12} {:>4} {:<5} {:>8} {:>10}  prompt", "ID", "STATE", "PRIO", "LEVEL", "TOKENS", "gCO2e");
    for j in &jobs {
        let usage = &j["result"]["usage"];
        // Running jobs: the tokens so far.
        let tokens = usage["completion_tokens"].as_u64().or(j["tokens_so_far"].as_u64()).map(|t| t.to_string()).unwrap_or_else(|| "-".into());
        let carbon = usage["sprout"]["carbon_g"].as_f64().map(|c| format!("{c:.4}")).unwrap_or_else(|| "-".into());
        let state = match j["position"].as_u64() {
            Some(p) => format!("queued #{}", p + 1),
            None => j["state"].as_str().unwrap_or("?").to_string(),
        };
        println!(
            "{:<22} {:<12} {:>4} {:<5} {:>8} {:>10}  {}",
            j["id"].as_str().unwrap_or("?"),
            state,
            j["priority"].as_i64().unwrap_or(0),
            j["directive"].as_str().unwrap_or("?"),
            tokens,
            carbon,
            prompt_preview(j, 50)
        );
        if j["state"] == "deferred" {
            println!("{:<22} {}", "", state_text(j));
        }
    }
    if jobs.is_empty() {
        println!("(no jobs)");
    }
    Ok(())
}

pub async fn cancel(client: &Client, id: &str, json: bool) -> Result<(), CliError> {
    let job = client.cancel(id).await?;
    if json {
        print_json(&job);
    } else {
        println!("{id} {}", job["state"].as_str().unwrap_or("?"));
    }
    Ok(())
}

pub async fn result(client: &Client, id: &str, wait: bool, json: bool) -> Result<(), CliError> {
    let job = if wait { client.wait_job(id).await? } else { client.job(id, None).await? };
    match job["state"].as_str() {
        Some("succeeded") => {
            if json {
                print_json(&job["result"]);
                Ok(())
            } else {
                print_answer(&job)
            }
        }
        Some(state @ ("queued" | "running")) => {
            Err(CliError::Usage(format!("job {id} is {state}; no result yet (use --wait to wait for it)")))
        }
        Some(state) => Err(CliError::Usage(format!(
            "job {id} ended {state}: {}",
            job["error"]["message"].as_str().unwrap_or("no result")
        ))),
        None => Err(ClientError::Protocol("job without state".into()).into()),
    }
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

fn prompt_preview(job: &Value, max: usize) -> String {
    let text = job["request"]["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .replace('\n', " ");
    if text.chars().count() > max {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    } else {
        text
    }
}

/// One line: the receipt of an answer.
pub fn receipt_line(job: &Value) -> String {
    let usage = &job["result"]["usage"];
    let s = &usage["sprout"];
    format!(
        "[{} | directive {} | {} prompt + {} completion tokens | {:.1} J | {:.4} gCO2e | {}]",
        job["id"].as_str().unwrap_or("?"),
        s["directive"].as_str().unwrap_or("?"),
        usage["prompt_tokens"],
        usage["completion_tokens"],
        s["energy_j"].as_f64().unwrap_or(f64::NAN),
        s["carbon_g"].as_f64().unwrap_or(f64::NAN),
        if s["estimated"].as_bool().unwrap_or(true) { "estimated" } else { "measured" },
    )
}

fn print_answer(job: &Value) -> Result<(), CliError> {
    match job["state"].as_str() {
        Some("succeeded") => {
            let text = job["result"]["choices"][0]["message"]["content"].as_str().unwrap_or("");
            println!("{}", text.trim_end());
            println!("{}", receipt_line(job));
            Ok(())
        }
        state => Err(CliError::Usage(format!(
            "job {} ended {}: {}",
            job["id"].as_str().unwrap_or("?"),
            state.unwrap_or("?"),
            job["error"]["message"].as_str().unwrap_or("no result")
        ))),
    }
}

/// "queued (position 3, directive L1)", "deferred until ... (forecast ...)" and the like.
fn state_text(job: &Value) -> String {
    let state = job["state"].as_str().unwrap_or("?");
    if state == "deferred" {
        let d = &job["deferred"];
        return format!(
            "deferred until {} (forecast {:.0} gCO2/kWh, {:.0} when submitted; deadline {}; directive {})",
            utc(d["until"].as_f64().unwrap_or(0.0)),
            d["forecast_gco2_per_kwh"].as_f64().unwrap_or(f64::NAN),
            d["submit_gco2_per_kwh"].as_f64().unwrap_or(f64::NAN),
            job["deadline_at"].as_f64().map(utc).unwrap_or_else(|| "-".into()),
            job["directive"].as_str().unwrap_or("?")
        );
    }
    match job["position"].as_u64() {
        Some(p) => format!("{state} (position {}, directive {})", p + 1, job["directive"].as_str().unwrap_or("?")),
        None => format!("{state} (directive {})", job["directive"].as_str().unwrap_or("?")),
    }
}

fn print_status(job: &Value) {
    println!("id:        {}", job["id"].as_str().unwrap_or("?"));
    println!("state:     {}", state_text(job));
    println!("priority:  {}", job["priority"]);
    println!("attempts:  {}", job["attempts"]);
    println!("prompt:    {}", prompt_preview(job, 70));
    if let Some(n) = job["tokens_so_far"].as_u64() {
        println!("tokens:    {n} so far");
    }
    if job["state"] == "succeeded" {
        println!("receipt:   {}", receipt_line(job));
    }
    if let Some(e) = job["error"]["message"].as_str() {
        println!("error:     {e}");
    }
}
