//! How the processes the Conductor starts for users are confined: command
//! steps and command targets (a developer's or an operator's scripts) and
//! local cell processes (pushed artifacts).
//!
//! - A clean environment: only what the caller passes (the documented
//!   `CELL_*`, `ARTIFACT_*`, ... variables and what the pipeline declares),
//!   plus `PATH`, `HOME` and `TMPDIR`. Nothing of the Conductor's own.
//! - A working directory outside the data directory: a fresh, empty one per
//!   step (removed after it), and a directory of its own per cell, all under
//!   the run directory (`--run-dir`).
//! - When the Conductor runs as root: another user (`--run-as` for steps,
//!   `--cells-run-as` for cells; never root), no supplementary groups, and
//!   `PR_SET_NO_NEW_PRIVS` (a set-user-ID program does not give root back).
//!   The data directory is root's and mode 0700, so they read nothing of it.
//! - File descriptors other than stdio (and a cell's worker socket) are
//!   closed on exec.
//!
//! Run directory layout (modes when root; the owner is root unless said):
//! `RUN/` 0711; `RUN/steps/` 0711, `RUN/steps/<n>/` the step user's, 0700;
//! `RUN/cells/` 0711, `RUN/cells/<cell>/` the cells user's, 0700 (its `data/`
//! holds the artifact's state); `RUN/bin/<name>/<version>/<name>`: a copy of
//! the pushed artifact, group the cells user's group, 0550 (dirs 0710), so
//! cells run it and steps cannot read it.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::process::Command;

/// `PATH` of every confined process unless the pipeline declares another.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The fd a cell worker finds its bound worker socket on (`CELL_WORKER_FD`).
pub const WORKER_FD: RawFd = 3;

/// A user to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// As given (a name, or `UID[:GID]`).
    pub name: String,
}

/// Is this process root (effective uid 0)?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: as above.
    unsafe { libc::geteuid() }
}

/// Resolve `USER` (a name from the user database) or `UID[:GID]` (numeric;
/// the group defaults to the uid). Root (uid 0) is refused.
pub fn resolve_user(spec: &str) -> Result<RunAs, String> {
    let spec = spec.trim();
    let numeric = |s: &str| s.parse::<u32>().ok();
    let (uid, gid) = if let Some((u, g)) = spec.split_once(':') {
        match (numeric(u), numeric(g)) {
            (Some(u), Some(g)) => (u, g),
            _ => return Err(format!("{spec:?}: write UID:GID with numbers")),
        }
    } else if let Some(u) = numeric(spec) {
        (u, u)
    } else {
        lookup_user(spec)?
    };
    if uid == 0 || gid == 0 {
        return Err(format!(
            "{spec:?} is root: steps and cells must run as an unprivileged user"
        ));
    }
    if uid == u32::MAX || gid == u32::MAX {
        return Err(format!("{spec:?}: not a usable id"));
    }
    Ok(RunAs {
        uid,
        gid,
        name: spec.to_string(),
    })
}

fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    if name.is_empty() || name.len() > 64 || name.contains('\0') {
        return Err(format!("{name:?} is not a user name"));
    }
    let c = CString::new(name).map_err(|_| format!("{name:?} is not a user name"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `pwd` and `buf` outlive the call; getpwnam_r writes only into
    // them and sets `result` to null or to `pwd`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return Err(format!(
                "no user {name:?} on this machine (give a user name or UID:GID)"
            ));
        }
        Ok((pwd.pw_uid, pwd.pw_gid))
    }
}

/// Where confined processes run, and as whom.
#[derive(Debug, Clone)]
pub struct Sandbox {
    run_dir: PathBuf,
    /// Users to switch to; `None` when the Conductor is not root (everything
    /// then runs as its own user).
    steps_user: Option<RunAs>,
    cells_user: Option<RunAs>,
}

static NEXT_STEP: AtomicU64 = AtomicU64::new(0);

/// A step's fresh working directory, removed when dropped.
pub struct Workdir(PathBuf);

impl Workdir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        // remove_dir_all does not follow symbolic links the step may have left.
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove a step's working directory");
        }
    }
}

impl Sandbox {
    /// Prepare the run directory (created if needed; it must not be inside
    /// `data_dir`). Users are only switched to when root; when not root,
    /// giving one is an error.
    pub fn new(
        run_dir: &Path,
        data_dir: &Path,
        steps_user: Option<RunAs>,
        cells_user: Option<RunAs>,
    ) -> Result<Sandbox, String> {
        if !is_root() && (steps_user.is_some() || cells_user.is_some()) {
            return Err(
                "only root can run steps and cells as another user (--run-as, --cells-run-as)"
                    .into(),
            );
        }
        mkdir(run_dir, 0o711, None).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        let run_dir = run_dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", run_dir.display()))?;
        if run_dir.starts_with(data_dir) || data_dir.starts_with(&run_dir) {
            return Err(format!(
                "the run directory {} and the data directory {} must not contain each other",
                run_dir.display(),
                data_dir.display()
            ));
        }
        let s = Sandbox {
            run_dir,
            steps_user,
            cells_user,
        };
        let bin_group = s.cells_user.as_ref().map(|u| (0, u.gid));
        for (sub, mode, owner) in [
            ("steps", 0o711, None),
            ("cells", 0o711, None),
            ("bin", 0o710, bin_group),
        ] {
            let d = s.run_dir.join(sub);
            mkdir(&d, mode, owner).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        for u in [&s.steps_user, &s.cells_user].into_iter().flatten() {
            reachable(&s.run_dir, u)?;
        }
        // Working directories of steps cut short by a crash (steps die with
        // the Conductor and run again, in fresh ones).
        if let Ok(entries) = std::fs::read_dir(s.run_dir.join("steps")) {
            for e in entries.flatten() {
                drop(Workdir(e.path()));
            }
        }
        Ok(s)
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn steps_user(&self) -> Option<&RunAs> {
        self.steps_user.as_ref()
    }

    pub fn cells_user(&self) -> Option<&RunAs> {
        self.cells_user.as_ref()
    }

    /// The effective uid cell processes run as.
    pub fn cells_uid(&self) -> u32 {
        self.cells_user.as_ref().map_or_else(euid, |u| u.uid)
    }

    /// A fresh, empty working directory for one step, owned by the step user.
    pub fn step_workdir(&self) -> io::Result<Workdir> {
        let n = NEXT_STEP.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}-{:08x}", std::process::id(), rand::random::<u32>());
        let dir = self.run_dir.join("steps").join(name);
        std::fs::create_dir(&dir)?;
        let w = Workdir(dir);
        set_mode_owner(
            w.path(),
            0o700,
            self.steps_user.as_ref().map(|u| (u.uid, u.gid)),
        )?;
        Ok(w)
    }

    /// Confine a command step (or a command target's command): clean
    /// environment, the fresh working directory, the step user, and death
    /// with the Conductor (a step re-runs after a restart, same key).
    pub fn confine_step(&self, cmd: &mut Command, workdir: &Path, env: &BTreeMap<String, String>) {
        base_env(cmd, workdir, env);
        cmd.current_dir(workdir);
        if let Some(u) = &self.steps_user {
            cmd.uid(u.uid).gid(u.gid);
        }
        // SAFETY: the closure calls only async-signal-safe functions (prctl,
        // syscall) and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                no_new_privs()?;
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                cloexec_from(3);
                Ok(())
            });
        }
    }

    /// A cell's own directory (its working directory and `HOME`; `data/`
    /// inside it is the artifact's data directory), owned by the cells user.
    pub fn cell_dir(&self, cell: &str) -> io::Result<PathBuf> {
        if !cells_inventory::valid_id(cell) {
            return Err(io::Error::other(format!("invalid cell id {cell:?}")));
        }
        let dir = self.run_dir.join("cells").join(cell);
        let owner = self.cells_user.as_ref().map(|u| (u.uid, u.gid));
        match std::fs::symlink_metadata(&dir) {
            // Created by us before; what is inside is the cell's business.
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::create_dir(&dir) {
                // A concurrent caller made it meanwhile.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
                Ok(()) => {}
            },
            Err(e) => return Err(e),
        }
        // Every caller finishes what is still root's: a concurrent caller
        // that made the directory may not have handed it over yet, and a
        // Conductor killed in between leaves it half made (a process
        // started in it then could not enter it). What the cells user
        // already owns is left as it is.
        let data = dir.join("data");
        match std::fs::create_dir(&data) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
        for d in [&data, &dir] {
            let m = std::fs::symlink_metadata(d)?;
            let unfinished = match owner {
                Some((uid, _)) => m.uid() != uid,
                None => m.mode() & 0o777 != 0o700,
            };
            if m.is_dir() && unfinished {
                set_mode_owner(d, 0o700, owner)?;
            }
        }
        Ok(dir)
    }

    /// Move a cell's data directory kept by an earlier release inside the
    /// data directory (`from`) to the cell's own directory, once.
    pub fn adopt_cell_data(&self, cell: &str, from: &Path) -> io::Result<bool> {
        let dir = self.run_dir.join("cells").join(cell);
        if !from.is_dir() || dir.exists() {
            return Ok(false);
        }
        std::fs::create_dir(&dir)?;
        std::fs::rename(from, dir.join("data")).map_err(|e| {
            io::Error::other(format!(
                "cannot move {} to {}: {e}; move it by hand",
                from.display(),
                dir.join("data").display()
            ))
        })?;
        let owner = self.cells_user.as_ref().map(|u| (u.uid, u.gid));
        chown_tree(&dir.join("data"), owner)?;
        set_mode_owner(&dir, 0o700, owner)?;
        Ok(true)
    }

    /// The runnable copy of a pushed artifact (made on first use): cells can
    /// run it, steps cannot read it.
    pub fn install(&self, src: &Path, name: &str, version: &str) -> io::Result<PathBuf> {
        let group = self.cells_user.as_ref().map(|u| (0, u.gid));
        let mut dir = self.run_dir.join("bin");
        for part in [name, version] {
            dir.push(part);
            mkdir(&dir, 0o710, group)?;
        }
        let dest = dir.join(name);
        if dest.is_file() {
            return Ok(dest);
        }
        let tmp = dir.join(format!(
            ".{name}.{}.{:08x}.partial",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::copy(src, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        set_mode_owner(&tmp, if group.is_some() { 0o550 } else { 0o500 }, group)?;
        std::fs::rename(&tmp, &dest)?;
        Ok(dest)
    }

    /// Confine a cell process: clean environment, the cell's directory, the
    /// cells user, its own session (a Ctrl-C of the Conductor does not reach
    /// it; it outlives the Conductor), and the bound worker socket `listener`
    /// on fd [`WORKER_FD`].
    pub fn confine_cell(
        &self,
        cmd: &mut Command,
        dir: &Path,
        env: &BTreeMap<String, String>,
        listener: Option<RawFd>,
    ) {
        base_env(cmd, dir, env);
        cmd.current_dir(dir);
        if let Some(u) = &self.cells_user {
            cmd.uid(u.uid).gid(u.gid);
        }
        // SAFETY: only async-signal-safe calls (setsid, prctl, dup2, fcntl,
        // syscall); `listener` is a plain integer copied into the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                no_new_privs()?;
                if let Some(fd) = listener {
                    if fd == WORKER_FD {
                        // dup2 onto itself keeps close-on-exec: clear it.
                        if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    } else if libc::dup2(fd, WORKER_FD) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    cloexec_from(WORKER_FD + 1);
                } else {
                    cloexec_from(3);
                }
                Ok(())
            });
        }
    }
}

/// Clear the environment; set `PATH`, `HOME` and `TMPDIR` (unless `env`
/// sets them) and `env`.
fn base_env(cmd: &mut Command, home: &Path, env: &BTreeMap<String, String>) {
    cmd.env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", home)
        .env("TMPDIR", home)
        .envs(env);
}

fn no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mark every fd from `first` on close-on-exec (the child inherits none of
/// the Conductor's files or sockets, whatever forgot the flag).
fn cloexec_from(first: RawFd) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOEXEC only sets flags; on kernels without
    // it the call fails and Rust's own descriptors are close-on-exec anyway.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// Create `dir` if missing (not through a symbolic link), then set its mode
/// and, when given, its owner.
pub fn mkdir(dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(io::Error::other("exists and is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::create_dir(dir) {
                // Made meanwhile by a concurrent caller: checked below.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                other => other?,
            }
            if !std::fs::symlink_metadata(dir)?.is_dir() {
                return Err(io::Error::other("exists and is not a directory"));
            }
        }
        Err(e) => return Err(e),
    }
    set_mode_owner(dir, mode, owner)
}

/// Set the mode and (when given) the owner of `path`, never following a
/// symbolic link.
pub fn set_mode_owner(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "{} is a symbolic link",
            path.display()
        )));
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let m = std::fs::symlink_metadata(path)?;
    if m.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), owner)?;
        }
    }
    Ok(())
}

/// Can `u` reach (search) `dir` through every directory above it?
fn reachable(dir: &Path, u: &RunAs) -> Result<(), String> {
    for d in dir.ancestors() {
        let m = std::fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let mode = m.permissions().mode();
        let ok = if m.uid() == u.uid {
            mode & 0o100 != 0
        } else if m.gid() == u.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(format!(
                "user {} cannot reach {} ({} is mode {:o}): pass --run-dir in a directory every user can reach, e.g. /var/lib/conductor-run",
                u.name,
                dir.display(),
                d.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_and_root_is_refused() {
        let n = resolve_user("nobody").expect("nobody exists");
        assert!(n.uid > 0 && n.gid > 0);
        assert_eq!(
            resolve_user("61184").expect("numeric"),
            RunAs {
                uid: 61184,
                gid: 61184,
                name: "61184".into()
            }
        );
        assert_eq!(resolve_user("70:71").expect("pair").gid, 71);
        for bad in ["root", "0", "0:5", "5:0", "no-such-user-here", "a:b", ""] {
            assert!(resolve_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_run_dir_must_be_outside_the_data_dir_and_reachable() {
        let t = tempfile::tempdir().expect("tmp");
        let data = t.path().join("data");
        std::fs::create_dir(&data).expect("data");
        let data = data.canonicalize().expect("canon");
        let e = Sandbox::new(&data.join("run"), &data, None, None).expect_err("inside");
        assert!(e.contains("must not contain"), "{e}");
        if is_root() {
            // Another user cannot reach into a 0700 directory.
            std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
            let u = resolve_user("nobody").expect("nobody");
            let e =
                Sandbox::new(&t.path().join("run"), &data, Some(u), None).expect_err("unreachable");
            assert!(e.contains("cannot reach"), "{e}");
        }
    }

    #[test]
    fn concurrent_installs_of_one_artifact_all_succeed() {
        let t = tempfile::tempdir().expect("tmp");
        let data = t.path().join("data");
        std::fs::create_dir(&data).expect("data");
        let src = t.path().join("artifact");
        std::fs::write(&src, "#!/bin/sh\necho hi\n").expect("src");
        let sb = Sandbox::new(
            &t.path().join("run"),
            &data.canonicalize().expect("c"),
            None,
            None,
        )
        .expect("sandbox");
        for v in 0..20 {
            let version = format!("1.0.{v}");
            let go = std::sync::Barrier::new(8);
            let paths: Vec<PathBuf> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            go.wait();
                            sb.install(&src, "svc", &version)
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("thread").expect("install"))
                    .collect()
            });
            assert!(paths.windows(2).all(|w| w[0] == w[1]));
            assert_eq!(
                std::fs::read(&paths[0]).expect("copy"),
                std::fs::read(&src).expect("src")
            );
        }
    }

    #[test]
    fn a_cells_data_kept_by_an_earlier_release_moves_out_of_the_data_dir() {
        let t = tempfile::tempdir().expect("tmp");
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
        let data = t.path().join("data");
        let old = data.join("cells/c1/data");
        std::fs::create_dir_all(&old).expect("old");
        std::fs::write(old.join("fga.db"), "tenants").expect("db");
        let data = data.canonicalize().expect("canon");
        let cells = is_root().then(|| resolve_user("61184").expect("numeric"));
        let sb = Sandbox::new(&t.path().join("run"), &data, None, cells).expect("sandbox");
        assert!(sb.adopt_cell_data("c1", &old).expect("move"));
        let moved = sb.run_dir().join("cells/c1/data/fga.db");
        assert_eq!(std::fs::read_to_string(&moved).expect("moved"), "tenants");
        assert!(!old.exists());
        if is_root() {
            assert_eq!(std::fs::metadata(&moved).expect("stat").uid(), 61184);
        }
        let dir = sb.cell_dir("c1").expect("cell dir");
        assert_eq!(
            std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o777,
            0o700
        );
        // A cell directory left half made (a crash, or a concurrent caller
        // not done yet) is finished by the next caller.
        let half = sb.run_dir().join("cells/c2");
        std::fs::create_dir(&half).expect("half made");
        std::fs::set_permissions(&half, std::fs::Permissions::from_mode(0o755)).expect("mode");
        let dir = sb.cell_dir("c2").expect("cell dir");
        for d in [dir.clone(), dir.join("data")] {
            let m = std::fs::metadata(&d).expect("stat");
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{}", d.display());
            if is_root() {
                assert_eq!(m.uid(), 61184, "{}", d.display());
            }
        }
        // Once only: nothing left to move, nothing overwritten.
        assert!(!sb.adopt_cell_data("c1", &old).expect("again"));
        assert!(sb.cell_dir("../x").is_err());
        // A step's directory left by a crash goes at the next start.
        let left = sb.step_workdir().expect("workdir");
        let path = left.path().to_path_buf();
        std::mem::forget(left);
        assert!(path.exists());
        let cells = is_root().then(|| resolve_user("61184").expect("numeric"));
        Sandbox::new(&t.path().join("run"), &data, None, cells).expect("again");
        assert!(!path.exists());
    }
}
