//! Child-process helpers: commands with a timeout that kill their whole
//! process group, confined by a [`sandbox::Sandbox`]; children that die with
//! the Conductor.

#![allow(unsafe_code)]

pub mod sandbox;

use sandbox::Sandbox;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Most output kept from one command (the tail is kept).
pub const MAX_OUTPUT: usize = 64 * 1024;

/// Make the child get SIGKILL when the Conductor dies (even by kill -9): for
/// helpers that are part of the control plane (the capacity planner). Cell
/// processes do not: they keep serving, and a restarted Conductor adopts them.
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

/// Run `script` with `sh -c`, confined by `sandbox` (only `env` in its
/// environment, a fresh working directory, the step user), with a
/// timeout. Output (stdout, then stderr) is capped to its tail. Whatever the
/// script leaves running in its process group is killed when it ends.
pub async fn run_shell(
    script: &str,
    env: &BTreeMap<String, String>,
    timeout: Duration,
    sandbox: &Sandbox,
) -> CommandResult {
    let workdir = match sandbox.step_workdir() {
        Ok(w) => w,
        Err(e) => {
            return CommandResult {
                ok: false,
                status: format!("cannot make the step's working directory: {e}"),
                output: String::new(),
            }
        }
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script);
    sandbox.confine_step(&mut cmd, workdir.path(), env);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
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
    let result = tokio::time::timeout(timeout, collect).await;
    // Leftovers of the step (background jobs) go with it.
    if let Some(pid) = pid {
        kill_group(pid);
    }
    match result {
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
        Err(_) => CommandResult {
            ok: false,
            status: format!("timed out after {}s", timeout.as_secs()),
            output: String::new(),
        },
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

    /// A sandbox in a fresh directory other users can reach, stepping down
    /// to `nobody` when the tests run as root.
    pub(crate) fn sandbox() -> (tempfile::TempDir, Sandbox) {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().expect("tmp");
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
        let data = t.path().join("data");
        std::fs::create_dir(&data).expect("data");
        let user = sandbox::is_root().then(|| sandbox::resolve_user("nobody").expect("nobody"));
        let s = Sandbox::new(&t.path().join("run"), &data, user, None).expect("sandbox");
        (t, s)
    }

    #[tokio::test]
    async fn runs_and_times_out() {
        let (_t, sb) = sandbox();
        let env = BTreeMap::from([("X".to_string(), "42".to_string())]);
        let r = run_shell(
            "echo $X; echo err >&2; exit 3",
            &env,
            Duration::from_secs(5),
            &sb,
        )
        .await;
        assert!(!r.ok);
        assert_eq!(r.status, "exit status 3");
        assert!(r.output.contains("42") && r.output.contains("err"));
        let r = run_shell("sleep 30", &env, Duration::from_millis(200), &sb).await;
        assert!(!r.ok && r.status.contains("timed out"));
    }

    #[tokio::test]
    async fn a_step_sees_only_its_environment_in_a_fresh_directory() {
        let (t, sb) = sandbox();
        std::env::set_var("CONDUCTOR_SECRET_FOR_TEST", "s3cr3t");
        let env = BTreeMap::from([("CELL_ID".to_string(), "c1".to_string())]);
        let r = run_shell(
            "env | sort; echo uid=$(id -u); echo cwd=$(pwd); ls -A; touch mine && echo wrote",
            &env,
            Duration::from_secs(5),
            &sb,
        )
        .await;
        assert!(r.ok, "{} {}", r.status, r.output);
        let names: Vec<&str> = r
            .output
            .lines()
            .take_while(|l| !l.starts_with("uid="))
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        // sh adds PWD (and maybe SHLVL/_) itself; nothing else comes along.
        for n in &names {
            assert!(
                ["CELL_ID", "PATH", "HOME", "TMPDIR", "PWD", "SHLVL", "_", "OLDPWD"].contains(n),
                "unexpected variable {n} in\n{}",
                r.output
            );
        }
        assert!(!r.output.contains("s3cr3t"), "{}", r.output);
        let cwd = r
            .output
            .lines()
            .find_map(|l| l.strip_prefix("cwd="))
            .expect("cwd");
        assert!(
            cwd.starts_with(&sb.run_dir().join("steps").display().to_string()),
            "{cwd}"
        );
        assert!(r.output.contains("wrote"), "{}", r.output);
        if sandbox::is_root() {
            assert!(r.output.contains("uid=65534"), "{}", r.output);
        }
        // The working directory is gone afterwards.
        assert_eq!(
            std::fs::read_dir(sb.run_dir().join("steps"))
                .expect("steps")
                .count(),
            0
        );
        drop(t);
    }
}
