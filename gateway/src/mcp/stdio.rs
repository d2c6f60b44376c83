//! A stdio MCP server: Palisade starts the process, speaks newline-delimited JSON-RPC on its
//! stdin/stdout, and restarts it whenever it dies, with backoff (0.2 s doubling to 5 s, reset
//! once a process has lived a minute). Requests made while it is down wait for the next process
//! (within the request timeout); requests in flight when it dies fail at once. The child gets
//! only `PATH` and its configured environment, and is killed when the server is dropped (reload).
//! Its `notifications/*/list_changed` lines, and every (re)start, mark the catalog stale.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

use super::changes::Changes;
use super::settings::{ServerKind, ServerSettings};
use super::upstream::{UpstreamError, initialize_params, result_of};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running process, as requests see it.
#[derive(Clone)]
struct Live {
    stdin: mpsc::Sender<String>,
    pending: Pending,
    pid: Option<u32>,
}

pub struct StdioServer {
    name: String,
    timeout: Duration,
    live: watch::Receiver<Option<Live>>,
    next_id: Arc<AtomicU64>,
    /// Dropping it stops the supervisor, which kills the child.
    _stop: watch::Sender<bool>,
}

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

impl StdioServer {
    pub fn start(
        settings: &ServerSettings,
        timeout: Duration,
        changes: Arc<Changes>,
    ) -> StdioServer {
        let (live_tx, live) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let next_id = Arc::new(AtomicU64::new(1));
        tokio::spawn(supervise(
            settings.clone(),
            timeout,
            live_tx,
            stop_rx,
            next_id.clone(),
            changes,
        ));
        StdioServer {
            name: settings.name.clone(),
            timeout,
            live,
            next_id,
            _stop: stop,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id of the running child, if one is up.
    pub fn pid(&self) -> Option<u32> {
        self.live.borrow().as_ref().and_then(|l| l.pid)
    }

    pub async fn request(&self, method: &str, params: Value) -> Result<Value, UpstreamError> {
        let timeout = UpstreamError::Timeout {
            server: self.name.clone(),
            after: self.timeout,
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut live_rx = self.live.clone();
        let live = tokio::time::timeout_at(deadline, live_rx.wait_for(Option::is_some))
            .await
            .map_err(|_| timeout.clone())?
            .map_err(|_| UpstreamError::Unavailable {
                server: self.name.clone(),
                message: "the server was stopped".into(),
            })?
            .clone()
            .ok_or_else(|| timeout.clone())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let answer = send(&live, id, method, params).await.map_err(|message| {
            UpstreamError::Unavailable {
                server: self.name.clone(),
                message,
            }
        })?;
        let msg = tokio::time::timeout_at(deadline, answer)
            .await
            .map_err(|_| {
                live.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                timeout
            })?
            .map_err(|_| UpstreamError::Unavailable {
                server: self.name.clone(),
                message: "the process exited before answering".into(),
            })?;
        result_of(&self.name, msg)
    }
}

async fn send(
    live: &Live,
    id: u64,
    method: &str,
    params: Value,
) -> Result<oneshot::Receiver<Value>, String> {
    let (tx, rx) = oneshot::channel();
    live.pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, tx);
    let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
    live.stdin
        .send(line)
        .await
        .map_err(|_| "the process is gone".to_string())?;
    Ok(rx)
}

fn spawn(settings: &ServerSettings) -> std::io::Result<Child> {
    let ServerKind::Stdio {
        command,
        args,
        env,
        cwd,
    } = &settings.kind
    else {
        return Err(std::io::Error::other("not a stdio server"));
    };
    let mut cmd = Command::new(command);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.spawn()
}

/// Keep one process running until stopped.
async fn supervise(
    settings: ServerSettings,
    timeout: Duration,
    live_tx: watch::Sender<Option<Live>>,
    mut stop: watch::Receiver<bool>,
    next_id: Arc<AtomicU64>,
    changes: Arc<Changes>,
) {
    let name = settings.name.clone();
    let mut backoff = BACKOFF_START;
    loop {
        let started = Instant::now();
        match run_once(&settings, timeout, &live_tx, &mut stop, &next_id, &changes).await {
            Ok(true) => return,
            Ok(false) => tracing::warn!(server = %name, "MCP stdio server exited; restarting"),
            Err(e) => tracing::warn!(server = %name, "MCP stdio server failed: {e}; restarting"),
        }
        live_tx.send_replace(None);
        if started.elapsed() > HEALTHY_AFTER {
            backoff = BACKOFF_START;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Run one process until it exits (`Ok(false)`) or the server is stopped (`Ok(true)`).
async fn run_once(
    settings: &ServerSettings,
    timeout: Duration,
    live_tx: &watch::Sender<Option<Live>>,
    stop: &mut watch::Receiver<bool>,
    next_id: &AtomicU64,
    changes: &Arc<Changes>,
) -> Result<bool, String> {
    let name = settings.name.clone();
    let mut child = spawn(settings).map_err(|e| format!("cannot start: {e}"))?;
    let pid = child.id();
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    if let Some(stderr) = child.stderr.take() {
        let name = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(server = %name, "stderr: {line}");
            }
        });
    }
    let (line_tx, mut line_rx) = mpsc::channel::<String>(256);
    let pending: Pending = Arc::default();
    // Writer: one line per message.
    let writer = tokio::spawn(async move {
        while let Some(mut line) = line_rx.recv().await {
            line.push('\n');
            if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    // Reader: responses to their waiters; server requests answered "not supported".
    let reader = {
        let pending = pending.clone();
        let line_tx = line_tx.clone();
        let name = name.clone();
        let changes = changes.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                    tracing::debug!(server = %name, "not JSON-RPC on stdout: {line}");
                    continue;
                };
                let has_method = msg.get("method").is_some();
                match (msg.get("id").cloned(), has_method) {
                    (Some(id), false) => {
                        let waiter = id.as_u64().and_then(|n| {
                            pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&n)
                        });
                        if let Some(w) = waiter {
                            let _ = w.send(msg);
                        }
                    }
                    (Some(id), true) => {
                        let refusal = json!({"jsonrpc": "2.0", "id": id, "error": {
                            "code": -32601, "message": "Palisade does not serve client requests"}});
                        let _ = line_tx.send(refusal.to_string()).await;
                    }
                    (None, _) => {
                        changes.notice(&msg);
                    }
                }
            }
        })
    };
    let live = Live {
        stdin: line_tx,
        pending: pending.clone(),
        pid,
    };
    // Handshake before anyone else may use the process.
    let id = next_id.fetch_add(1, Ordering::Relaxed);
    let handshake = async {
        let rx = send(&live, id, "initialize", initialize_params()).await?;
        let msg = rx
            .await
            .map_err(|_| "exited during initialize".to_string())?;
        result_of(&name, msg).map_err(|e| format!("initialize failed: {e}"))?;
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        live.stdin
            .send(note.to_string())
            .await
            .map_err(|_| "exited during initialize".to_string())
    };
    let ready = tokio::select! {
        r = tokio::time::timeout(timeout, handshake) => r.unwrap_or_else(|_| Err("initialize timed out".into())),
        _ = child.wait() => Err("exited during initialize".into()),
    };
    if let Err(e) = ready {
        reader.abort();
        writer.abort();
        let _ = child.kill().await;
        return Err(e);
    }
    tracing::info!(server = %name, pid = ?pid, "MCP stdio server started");
    live_tx.send_replace(Some(live));
    // A new process may offer other tools than the last.
    changes.all_changed();
    let stopped = tokio::select! {
        _ = child.wait() => false,
        _ = stop.changed() => true,
    };
    live_tx.send_replace(None);
    if stopped {
        let _ = child.kill().await;
    }
    reader.abort();
    writer.abort();
    // Whoever still waits gets an error now rather than at their timeout.
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
    Ok(stopped)
}
