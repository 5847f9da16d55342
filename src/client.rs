//! A typed HTTP client for sproutd, used by `sproutctl` and the tests.

use std::time::Duration;

use serde_json::Value;

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

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        self.send_with(method, path, body, None).await
    }

    async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let text = self.request_text(method, path, body, idempotency_key).await?;
        serde_json::from_str(&text)
            .map_err(|_| ClientError::Protocol(format!("not JSON: {}", text.chars().take(200).collect::<String>())))
    }

    /// The body of a successful answer as text; an error answer becomes
    /// `ClientError::Api` with the server's OpenAI-shaped message.
    async fn request_text(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
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
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable { url: self.base.clone(), reason: root_cause(&e) })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| ClientError::Protocol(root_cause(&e)))?;
        if status.is_success() {
            return Ok(text);
        }
        let value: Value = serde_json::from_str(&text).unwrap_or_default();
        let err = &value["error"];
        Err(ClientError::Api {
            status: status.as_u16(),
            code: err["code"].as_str().unwrap_or("").to_string(),
            message: err["message"].as_str().map(str::to_string).unwrap_or_else(|| text.chars().take(200).collect()),
        })
    }

    /// Queues a job; a repeated `idempotency_key` returns the earlier job.
    pub async fn submit_job(&self, body: &Value, idempotency_key: Option<&str>) -> Result<Value, ClientError> {
        self.send_with(reqwest::Method::POST, "/v1/jobs", Some(body), idempotency_key).await
    }

    /// A job; with `wait`, the server holds the answer until the job ends or `wait` seconds pass.
    pub async fn job(&self, id: &str, wait: Option<f64>) -> Result<Value, ClientError> {
        let path = match wait {
            Some(w) => format!("/v1/jobs/{id}?wait={w}"),
            None => format!("/v1/jobs/{id}"),
        };
        self.send(reqwest::Method::GET, &path, None).await
    }

    /// Waits until the job is finished, however long that takes.
    pub async fn wait_job(&self, id: &str) -> Result<Value, ClientError> {
        loop {
            let job = self.job(id, Some(60.0)).await?;
            if matches!(job["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                return Ok(job);
            }
        }
    }

    pub async fn jobs(&self, state: Option<&str>, limit: usize) -> Result<Value, ClientError> {
        let mut path = format!("/v1/jobs?limit={limit}");
        if let Some(s) = state {
            path.push_str(&format!("&state={s}"));
        }
        self.send(reqwest::Method::GET, &path, None).await
    }

    pub async fn cancel(&self, id: &str) -> Result<Value, ClientError> {
        self.send(reqwest::Method::DELETE, &format!("/v1/jobs/{id}"), None).await
    }

    /// The ledger as text (`format` "csv" or "json").
    pub async fn ledger(&self, format: &str, since: Option<f64>) -> Result<String, ClientError> {
        let mut path = format!("/v1/ledger?format={format}");
        if let Some(s) = since {
            path.push_str(&format!("&since={s}"));
        }
        self.request_text(reqwest::Method::GET, &path, None, None).await
    }

    pub async fn stats(&self, since: Option<f64>) -> Result<Value, ClientError> {
        let path = match since {
            Some(s) => format!("/v1/stats?since={s}"),
            None => "/v1/stats".to_string(),
        };
        self.send(reqwest::Method::GET, &path, None).await
    }

    pub async fn carbon(&self) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, "/v1/carbon", None).await
    }

    pub async fn eval_run(&self, body: &Value) -> Result<Value, ClientError> {
        self.send(reqwest::Method::POST, "/v1/eval/runs", Some(body)).await
    }

    pub async fn eval_status(&self) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, "/v1/eval/status", None).await
    }

    pub async fn eval_history(&self, limit: usize) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, &format!("/v1/eval/runs?limit={limit}"), None).await
    }

    /// `POST /v1/chat/completions`, not streamed.
    pub async fn chat(&self, body: &Value) -> Result<Value, ClientError> {
        self.send(reqwest::Method::POST, "/v1/chat/completions", Some(body)).await
    }

    /// `GET /v1/backends`, typed.
    pub async fn backends(&self) -> Result<crate::backends::BackendList, ClientError> {
        let v = self.send(reqwest::Method::GET, "/v1/backends", None).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(format!("GET /v1/backends: {e}")))
    }

    pub async fn plan(&self) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, "/v1/plan", None).await
    }
}
