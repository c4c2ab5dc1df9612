//! Child-process helpers: commands with a timeout that kill their whole
//! process group, and children that die with the Conductor.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Most output kept from one command (the tail is kept).
pub const MAX_OUTPUT: usize = 64 * 1024;

/// Make the child get SIGKILL when the Conductor dies (even by kill -9), so
/// that no cell process outlives its supervisor; the supervisor restarts
/// cells on its next start.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: sending a signal has no memory effects; a stale group id fails harmlessly.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Result of running a shell command.
pub struct CommandResult {
    pub ok: bool,
    pub status: String,
    pub output: String,
}

/// Run `script` with `sh -c`, the given environment, and a timeout. Output
/// (stdout and stderr interleaved as they are read) is capped to its tail.
pub async fn run_shell(
    script: &str,
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> CommandResult {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return CommandResult {
                ok: false,
                status: format!("could not start sh: {e}"),
                output: String::new(),
            }
        }
    };
    let pid = child.id();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let collect = async {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let ra = async {
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut a).await;
            }
        };
        let rb = async {
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_end(&mut b).await;
            }
        };
        tokio::join!(ra, rb);
        a.extend_from_slice(&b);
        let status = child.wait().await;
        (a, status)
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok((bytes, status)) => {
            let (ok, status) = match status {
                Ok(s) if s.success() => (true, "exit status 0".to_string()),
                Ok(s) => (
                    false,
                    s.code()
                        .map_or_else(|| format!("killed ({s})"), |c| format!("exit status {c}")),
                ),
                Err(e) => (false, format!("wait failed: {e}")),
            };
            CommandResult {
                ok,
                status,
                output: tail(&bytes),
            }
        }
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            CommandResult {
                ok: false,
                status: format!("timed out after {}s", timeout.as_secs()),
                output: String::new(),
            }
        }
    }
}

/// The last [`MAX_OUTPUT`] bytes, as text.
pub fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(MAX_OUTPUT);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_and_times_out() {
        let env = BTreeMap::from([("X".to_string(), "42".to_string())]);
        let r = run_shell(
            "echo $X; echo err >&2; exit 3",
            &env,
            Duration::from_secs(5),
        )
        .await;
        assert!(!r.ok);
        assert_eq!(r.status, "exit status 3");
        assert!(r.output.contains("42") && r.output.contains("err"));
        let r = run_shell("sleep 30", &env, Duration::from_millis(200)).await;
        assert!(!r.ok && r.status.contains("timed out"));
    }
}
