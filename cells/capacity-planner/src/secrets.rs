//! Secrets come from the environment or from a private file, never from
//! the command line (where every user of the machine sees them in `ps`);
//! data directories are private to their owner.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} may be read or written by other users (mode {mode:03o}): chmod 600 {path}")]
    Exposed { path: String, mode: u32 },
    #[error("{path} is empty")]
    Empty { path: String },
    #[error("{path} holds more than one line; a secret file holds the secret alone")]
    Lines { path: String },
    #[error("making {path} private: {source}")]
    Private {
        path: String,
        source: std::io::Error,
    },
}

/// Read a secret from `path`: the file's text, trimmed. Refused when the
/// file is open to its group or to other users (it must be 0600 or 0400).
pub fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    let name = path.display().to_string();
    let read_err = |source| SecretError::Read {
        path: name.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed { path: name, mode });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let s = text.trim();
    if s.is_empty() {
        return Err(SecretError::Empty { path: name });
    }
    if s.contains(['\n', '\r']) {
        return Err(SecretError::Lines { path: name });
    }
    Ok(s.to_string())
}

/// The secret in `file` if given, else in the environment variable `env`
/// (unset or empty: `None`).
pub fn secret_from(file: Option<&Path>, env: &str) -> Result<Option<String>, SecretError> {
    if let Some(f) = file {
        return read_secret_file(f).map(Some);
    }
    Ok(std::env::var(env)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty()))
}

/// Create `dir` (and its parents) if needed, and make it 0700.
pub fn private_dir(dir: &Path) -> Result<(), SecretError> {
    let err = |source| SecretError::Private {
        path: dir.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    // An existing directory (an earlier release made it 0755) is tightened.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Make an existing file 0600 (a database or key written before files
/// were private); a missing file is fine.
pub fn private_file(file: &Path) -> Result<(), SecretError> {
    match std::fs::metadata(file) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| SecretError::Private {
                    path: file.display().to_string(),
                    source,
                },
            )
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_must_be_private_and_hold_one_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret-token-value\n").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = read_secret_file(&f).expect_err("0644 is refused");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_secret_file(&f).expect("read"), "s3cret-token-value");
        std::fs::write(&f, "a\nb\n").expect("write");
        assert!(read_secret_file(&f).is_err());
        std::fs::write(&f, "  \n").expect("write");
        assert!(read_secret_file(&f).is_err());
        assert!(read_secret_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn data_dirs_and_files_are_made_private() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().join("a/b");
        private_dir(&d).expect("create");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&d).expect("tighten");
        assert_eq!(mode(&d), 0o700);
        let f = d.join("db");
        std::fs::write(&f, "x").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        private_file(&f).expect("tighten");
        assert_eq!(mode(&f), 0o600);
        private_file(&d.join("none")).expect("missing is fine");
    }
}
