//! A typed HTTP client for sproutd, used by `sproutctl` and the TUI: it
//! sends and returns the bodies of [`crate::wire`].

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::wire::{
    BackendView, CarbonView, ChatCompletion, ErrorBody, EvalRunReply, EvalRunRequest, EvalRunSummary, EvalStatus, JobSubmission, JobView, List,
    PlanView, Stats,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach sproutd at {url}: {reason} (is sproutd running? set --url or SPROUT_URL)")]
    Unreachable { url: String, reason: String },
    #[error("sproutd answered {status}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("unexpected answer from sproutd: {0}")]
    Protocol(String),
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a default reqwest client builds");
        Self { base: base.trim_end_matches('/').to_string(), http, token }
    }

    /// Sends `body` (if any) and reads the answer as `T`.
    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        let text = self.request_text(method, path, body, idempotency_key).await?;
        serde_json::from_str(&text).map_err(|e| {
            ClientError::Protocol(format!("{path}: {e} in {}", text.chars().take(200).collect::<String>()))
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(reqwest::Method::GET, path, None, None).await
    }

    /// The body of a successful answer as text; an error answer becomes
    /// `ClientError::Api` with the server's OpenAI-shaped message.
    async fn request_text(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        idempotency_key: Option<&str>,
    ) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable { url: self.base.clone(), reason: root_cause(&e) })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| ClientError::Protocol(root_cause(&e)))?;
        if status.is_success() {
            return Ok(text);
        }
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => ClientError::Api { status: status.as_u16(), code: b.error.code.unwrap_or_default(), message: b.error.message },
            Err(_) => ClientError::Api { status: status.as_u16(), code: String::new(), message: text.chars().take(200).collect() },
        })
    }

    /// Queues a job; a repeated `idempotency_key` returns the earlier job.
    pub async fn submit_job(&self, body: &JobSubmission, idempotency_key: Option<&str>) -> Result<JobView, ClientError> {
        self.send(reqwest::Method::POST, "/v1/jobs", Some(json(body)), idempotency_key).await
    }

    /// A job; with `wait`, the server holds the answer until the job ends or `wait` seconds pass.
    pub async fn job(&self, id: &str, wait: Option<f64>) -> Result<JobView, ClientError> {
        match wait {
            Some(w) => self.get(&format!("/v1/jobs/{id}?wait={w}")).await,
            None => self.get(&format!("/v1/jobs/{id}")).await,
        }
    }

    /// Waits until the job is finished, however long that takes.
    pub async fn wait_job(&self, id: &str) -> Result<JobView, ClientError> {
        loop {
            let job = self.job(id, Some(60.0)).await?;
            if job.state.is_terminal() {
                return Ok(job);
            }
        }
    }

    pub async fn jobs(&self, state: Option<&str>, limit: usize) -> Result<List<JobView>, ClientError> {
        let mut path = format!("/v1/jobs?limit={limit}");
        if let Some(s) = state {
            path.push_str(&format!("&state={s}"));
        }
        self.get(&path).await
    }

    pub async fn cancel(&self, id: &str) -> Result<JobView, ClientError> {
        self.send(reqwest::Method::DELETE, &format!("/v1/jobs/{id}"), None, None).await
    }

    /// The ledger as text (`format` "csv" or "json"), for export as it is.
    pub async fn ledger(&self, format: &str, since: Option<f64>) -> Result<String, ClientError> {
        let mut path = format!("/v1/ledger?format={format}");
        if let Some(s) = since {
            path.push_str(&format!("&since={s}"));
        }
        self.request_text(reqwest::Method::GET, &path, None, None).await
    }

    pub async fn stats(&self, since: Option<f64>) -> Result<Stats, ClientError> {
        match since {
            Some(s) => self.get(&format!("/v1/stats?since={s}")).await,
            None => self.get("/v1/stats").await,
        }
    }

    pub async fn carbon(&self) -> Result<CarbonView, ClientError> {
        self.get("/v1/carbon").await
    }

    /// Forces an evaluation run: the run with `wait`, else that it started.
    pub async fn eval_run(&self, body: &EvalRunRequest) -> Result<EvalRunReply, ClientError> {
        self.send(reqwest::Method::POST, "/v1/eval/runs", Some(json(body)), None).await
    }

    pub async fn eval_status(&self) -> Result<EvalStatus, ClientError> {
        self.get("/v1/eval/status").await
    }

    pub async fn eval_history(&self, limit: usize) -> Result<List<EvalRunSummary>, ClientError> {
        self.get(&format!("/v1/eval/runs?limit={limit}")).await
    }

    /// `POST /v1/chat/completions`, not streamed: `body` is OpenAI's request.
    pub async fn chat(&self, body: &serde_json::Value) -> Result<ChatCompletion, ClientError> {
        self.send(reqwest::Method::POST, "/v1/chat/completions", Some(json(body)), None).await
    }

    pub async fn backends(&self) -> Result<List<BackendView>, ClientError> {
        self.get("/v1/backends").await
    }

    pub async fn plan(&self) -> Result<PlanView, ClientError> {
        self.get("/v1/plan").await
    }
}

/// A request body as JSON text.
fn json(body: &impl serde::Serialize) -> String {
    serde_json::to_string(body).expect("a request body serializes")
}
