//! Runs one hook command: `sh -c COMMAND` with the `BATON_*` environment, a timeout, and
//! the tail of its output kept for the log.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::machine::{Hook, HookOutcome};

/// Bytes of a hook's stdout / stderr kept for the log.
const TAIL_BYTES: usize = 2048;

/// How long to keep reading a hook's output after it exited: a process it started in the
/// background may hold the pipe open for ever.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// Reads `r` to its end, keeping the last [`TAIL_BYTES`].
async fn tail<R: AsyncRead + Unpin>(mut r: R) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > TAIL_BYTES {
                    kept.drain(..kept.len() - TAIL_BYTES);
                }
            }
        }
    }
}

/// The collected tail of a reader task, or nothing if it does not end within the grace.
async fn collect(task: Option<JoinHandle<Vec<u8>>>) -> String {
    let Some(mut task) = task else {
        return String::new();
    };
    match tokio::time::timeout(OUTPUT_GRACE, &mut task).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).trim().to_string(),
        _ => {
            task.abort();
            String::new()
        }
    }
}

/// Kills the hook's whole process group: `sh -c` may have started children that would
/// otherwise go on acting after the agent moved on.
async fn kill_group(pgid: u32) {
    // The shell's builtin `kill`: `sh` is needed for hooks anyway, `/bin/kill` may be absent.
    let status = Command::new("sh")
        .arg("-c")
        .arg("kill -s KILL -- \"-$1\"")
        .arg("sh")
        .arg(pgid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(e) = status {
        warn!(pgid, "could not kill the hook's process group: {e}");
    }
}

/// Runs `command` with `sh -c` for `hook`, waits at most `timeout`, logs how it ended and
/// returns that.
pub async fn run_hook(command: &str, hook: &Hook, timeout: Duration) -> HookOutcome {
    run_hook_until(command, hook, timeout, std::future::pending()).await
}

/// [`run_hook`], also ended (its whole process group killed) when `cancel` resolves first.
pub async fn run_hook_until(
    command: &str,
    hook: &Hook,
    timeout: Duration,
    cancel: impl std::future::Future<Output = ()>,
) -> HookOutcome {
    let event = hook.kind.as_str();
    let reason = hook.reason.map_or("", |r| r.as_str());
    info!(event, reason, token = hook.token, command, "running hook");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .envs(hook.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can kill everything it started, and a
        // Ctrl-C meant for the agent does not cut a demote hook short.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            error!(event, command, "hook could not be started: {e}");
            return HookOutcome::SpawnFailed(e.to_string());
        }
    };
    let out = child.stdout.take().map(|o| tokio::spawn(tail(o)));
    let err = child.stderr.take().map(|e| tokio::spawn(tail(e)));
    let waited = tokio::select! {
        w = tokio::time::timeout(timeout, child.wait()) => Some(w),
        () = cancel => None,
    };
    let Some(waited) = waited else {
        if let Some(pid) = child.id() {
            kill_group(pid).await;
        }
        let _ = child.kill().await;
        info!(event, token = hook.token, "hook cancelled and killed");
        return HookOutcome::Cancelled;
    };
    let outcome = match waited {
        Ok(Ok(status)) if status.success() => HookOutcome::Succeeded,
        Ok(Ok(status)) => HookOutcome::Failed {
            code: status.code(),
            stderr_tail: String::new(),
        },
        Ok(Err(e)) => HookOutcome::Failed {
            code: None,
            stderr_tail: format!("waiting for the hook failed: {e}"),
        },
        Err(_) => {
            if let Some(pid) = child.id() {
                kill_group(pid).await;
            }
            let _ = child.kill().await;
            HookOutcome::TimedOut
        }
    };
    let stdout = collect(out).await;
    let stderr = collect(err).await;
    match outcome {
        HookOutcome::Succeeded => {
            info!(event, token = hook.token, stdout = %stdout, "hook succeeded");
            HookOutcome::Succeeded
        }
        HookOutcome::Failed { code, stderr_tail } => {
            let stderr_tail = if stderr_tail.is_empty() {
                stderr
            } else {
                stderr_tail
            };
            error!(event, token = hook.token, command, ?code, stderr = %stderr_tail, "hook failed");
            HookOutcome::Failed { code, stderr_tail }
        }
        HookOutcome::TimedOut => {
            error!(
                event,
                token = hook.token,
                command,
                timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                stderr = %stderr,
                "hook TIMED OUT and was killed"
            );
            HookOutcome::TimedOut
        }
        other => other,
    }
}
