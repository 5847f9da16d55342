//! Test helpers: a real `sproutd` process on loopback with its own config and
//! data dir, and the paths of the shared fixtures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SPROUTD: &str = env!("CARGO_BIN_EXE_sproutd");
pub const SPROUTCTL: &str = env!("CARGO_BIN_EXE_sproutctl");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default model, if fetched. With `SPROUT_REQUIRE_MODEL=1` (the README's
/// test command sets it) a missing model fails the test instead of skipping it.
pub fn model_path() -> Option<PathBuf> {
    let p = repo().join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("SPROUT_REQUIRE_MODEL").as_deref() == Ok("1") {
        panic!("{} is missing: run scripts/fetch-model.sh", p.display());
    }
    eprintln!("skipping: the default model is not fetched (scripts/fetch-model.sh)");
    None
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The shipped config with TOML `edits` applied as (old, new) replacements.
pub fn config_text(edits: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(repo().join("config.toml")).unwrap();
    for (old, new) in edits {
        assert!(text.contains(old), "config.toml has no {old:?}");
        text = text.replacen(old, new, 1);
    }
    text
}

/// `config` with a commented-out key of the shipped config.toml (e.g.
/// `# token_file = "..."`) set to a new file in `dir` holding `content`.
pub fn with_file_setting(config: &str, dir: &Path, key: &str, file: &str, content: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, content).unwrap();
    let commented = config
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("# {key} = ")))
        .unwrap_or_else(|| panic!("config.toml has no commented {key}"))
        .to_string();
    config.replacen(&commented, &format!("{key} = {:?}", path.display().to_string()), 1)
}

/// The echo test engine instead of the model.
pub fn echo_config(token_delay_ms: u64, max_seqs: usize, extra: &[(&str, &str)]) -> String {
    let mut edits: Vec<(&str, String)> = vec![
        ("kind = \"gguf\"", format!("kind = \"echo\"\necho_token_delay_ms = {token_delay_ms}")),
        ("name = \"qwen2.5-coder-0.5b-instruct\"", "name = \"echo\"".to_string()),
        ("\nmax_seqs = 4\n", format!("\nmax_seqs = {max_seqs}\n")),
    ];
    for (o, n) in extra {
        edits.push((o, n.to_string()));
    }
    let refs: Vec<(&str, &str)> = edits.iter().map(|(o, n)| (*o, n.as_str())).collect();
    config_text(&refs)
}

/// A real config pointing at the real model file.
pub fn model_config(model: &Path, extra: &[(&str, &str)]) -> String {
    let path_line = format!("path = {:?}", model.display().to_string());
    let mut edits: Vec<(&str, &str)> = vec![("path = \"models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf\"", &path_line)];
    edits.extend_from_slice(extra);
    config_text(&edits)
}

pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    config_path: PathBuf,
}

impl Daemon {
    /// Starts sproutd and waits until `/healthz` is 200.
    pub fn start(config: &str) -> Daemon {
        let mut d = Self::spawn(config, None);
        d.wait_ready(Duration::from_secs(180));
        d
    }

    /// Starts sproutd without waiting; `data_dir` reuses a previous store.
    pub fn spawn(config: &str, reuse: Option<(tempfile::TempDir, u16)>) -> Daemon {
        let (dir, port) = reuse.unwrap_or_else(|| (tempfile::tempdir().unwrap(), free_port()));
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let data_dir = dir.path().join("data");
        let child = Command::new(SPROUTD)
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("sproutd.log")).unwrap()))
            .spawn()
            .expect("spawn sproutd");
        Daemon { child, url: format!("http://127.0.0.1:{port}"), port, dir, data_dir, config_path }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sproutd.log")).unwrap_or_default()
    }

    pub fn wait_ready(&mut self, timeout: Duration) {
        let t0 = Instant::now();
        let http = reqwest::blocking::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/healthz", self.url)).send() {
                if r.status() == 200 {
                    return;
                }
            }
            // A daemon that exited will never be ready: say so now, not after the timeout.
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sproutd exited ({status}) before it was ready; log:\n{}", self.log());
            }
            assert!(t0.elapsed() < timeout, "sproutd not ready after {timeout:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, keeping the data dir and port for a restart.
    pub fn kill(mut self) -> (tempfile::TempDir, u16) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let port = self.port;
        // Move the tempdir out without running Drop's kill again.
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, port)
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "sproutd did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Blocking JSON HTTP: (status, body).
pub fn http(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap();
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text));
    (status, value)
}

/// Asserts the OpenAI error shape.
/// The `messages` of one user turn.
pub fn user(text: &str) -> Value {
    serde_json::json!([{"role": "user", "content": text}])
}

pub fn assert_error(status: u16, body: &Value, want_status: u16, want_param: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{body}");
    if let Some(p) = want_param {
        assert_eq!(e["param"], p, "{body}");
    }
}

/// Runs sproutctl; (exit code, stdout, stderr).
pub fn sproutctl(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(SPROUTCTL).env("SPROUT_URL", url).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads an SSE response into its `data:` payloads.
pub fn sse(url: &str, body: &str) -> Vec<String> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap();
    let resp = client.post(url).header("content-type", "application/json").body(body.to_string()).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = resp.text().unwrap();
    text.lines().filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:"))).map(str::to_string).collect()
}

/// A child process killed when dropped (a failing test leaves no daemon behind).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs sproutd with `config` on `ip` in `dir`, expects it to exit with an
/// error before serving, and returns what it printed on stderr.
pub fn sproutd_refuses_to_start(dir: &Path, config: &str, ip: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(SPROUTD)
        .arg("--config")
        .arg(&path)
        .args(["--listen", &format!("{ip}:{}", free_port()), "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "sproutd started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Lints a `/metrics` page with Prometheus' `promtool check metrics`
/// (scripts/fetch-promtool.sh; scripts/test.sh sets SPROUT_PROMTOOL): it
/// must pass with nothing to say. Skipped without SPROUT_PROMTOOL, unless
/// SPROUT_REQUIRE_MODEL=1.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    match std::env::var("SPROUT_PROMTOOL") {
        Ok(promtool) => {
            let mut child = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
        }
        Err(_) if std::env::var("SPROUT_REQUIRE_MODEL").as_deref() == Ok("1") => panic!("SPROUT_PROMTOOL is not set (scripts/fetch-promtool.sh)"),
        Err(_) => eprintln!("skipping promtool: SPROUT_PROMTOOL not set"),
    }
}
