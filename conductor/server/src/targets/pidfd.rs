//! Processes by pid, safely: who a pid is (boot id and start time from
//! /proc, so a later process with the same pid is not mistaken for it), and
//! pidfds, which watch and signal a process that is not our child (a cell
//! worker adopted after a restart) without pid-reuse races.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use tokio::io::unix::AsyncFd;

/// What tells one process from another that later gets the same pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcId {
    /// `<boot id>:<start time in clock ticks since boot>`.
    pub started: String,
    /// Exited but not reaped yet.
    pub zombie: bool,
    /// Effective user id.
    pub euid: u32,
}

fn boot_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}

/// Read who `pid` is from /proc (None: no such process).
pub fn proc_id(pid: u32) -> Option<ProcId> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse(&stat, &status)
}

fn parse(stat: &str, status: &str) -> Option<ProcId> {
    // `pid (comm) state ...`: comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 of stat is the state, field 22 the start time.
    let state = *fields.first()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    let euid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(ProcId {
        started: format!("{}:{start}", boot_id()),
        zombie: matches!(state, "Z" | "X"),
        euid,
    })
}

/// A pidfd: refers to one process for its whole life, whoever's child it is.
pub struct Pidfd {
    fd: AsyncFd<OwnedFd>,
}

impl Pidfd {
    /// Open a pidfd for `pid`; then check [`proc_id`] to be sure it is the
    /// process you mean (the pidfd pins it from here on).
    pub fn open(pid: u32) -> io::Result<Pidfd> {
        let p = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
        // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open (and is
        // not reused) for as long as it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Pidfd { fd })
    }

    /// Wait until the process has exited.
    pub async fn exited(&self) {
        // A pidfd becomes readable when the process exits, and stays so.
        let _ = self.fd.readable().await;
    }

    /// Has the process exited?
    #[cfg(test)]
    pub fn has_exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & libc::POLLIN != 0
    }

    /// Send `signal` to the process (never to a later one with its pid).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // Already gone: nothing to signal.
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// SIGKILL the process and wait until it has exited (at most `within`).
    pub async fn kill(&self, within: std::time::Duration) -> bool {
        if self.signal(libc::SIGKILL).is_err() {
            return false;
        }
        tokio::time::timeout(within, self.exited()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1000 1 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let status = "Name:\tx\nUid:\t1000\t65534\t65534\t65534\n";
        let p = parse(stat, status).expect("parse");
        assert!(p.started.ends_with(":98765"), "{p:?}");
        assert_eq!(p.euid, 65534);
        assert!(!p.zombie);
        assert!(parse("garbage", status).is_none());
    }

    #[tokio::test]
    async fn watches_and_kills_a_process_that_is_not_a_child_of_the_waiter() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let before = proc_id(pid).expect("alive");
        let fd = Pidfd::open(pid).expect("pidfd");
        assert_eq!(proc_id(pid).expect("same").started, before.started);
        assert!(!fd.has_exited());
        // Reaping is the parent's business; the pidfd only sees the exit.
        let reaper = std::thread::spawn(move || child.wait());
        assert!(fd.kill(std::time::Duration::from_secs(10)).await);
        assert!(fd.has_exited());
        let _ = reaper.join();
    }
}
