//! Secrets and private files: keys come from an environment variable or a
//! file that only its owner can read (never from the command line, where
//! `ps` shows them), and the data directory and database files are made
//! private to the service's user.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{what}: give it in {env} or with {flag}, not both")]
    Both {
        what: &'static str,
        env: &'static str,
        flag: &'static str,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "{path} can be read or changed by other users (mode {mode:o}): run `chmod 600 {path}`"
    )]
    NotPrivate { path: PathBuf, mode: u32 },
    #[error("{path} holds no key")]
    Empty { path: PathBuf },
    #[error("{path} is a shared directory (sticky bit, like /tmp): give the data plane a directory of its own")]
    SharedDir { path: PathBuf },
    #[error("cannot make {path} private: {source}")]
    Chmod {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Read a secret file: a regular file that no other user can read or
/// change (mode 0600 or stricter); its content trimmed.
pub fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    let md = fs::metadata(path).map_err(|source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !md.is_file() {
        return Err(SecretError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = md.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::NotPrivate {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(|source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim().to_string())
}

/// Where a secret comes from: an environment variable's value, a file.
pub struct Source<'a> {
    pub what: &'static str,
    pub env: &'static str,
    pub env_value: Option<String>,
    pub flag: &'static str,
    pub file: Option<&'a Path>,
}

impl Source<'_> {
    /// The raw secret text, if any; both sources at once are refused.
    fn text(&self) -> Result<Option<String>, SecretError> {
        let env = self
            .env_value
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        match (env, self.file) {
            (Some(_), Some(_)) => Err(SecretError::Both {
                what: self.what,
                env: self.env,
                flag: self.flag,
            }),
            (Some(v), None) => Ok(Some(v.to_string())),
            (None, Some(f)) => {
                let v = read_secret_file(f)?;
                if v.is_empty() {
                    return Err(SecretError::Empty {
                        path: f.to_path_buf(),
                    });
                }
                Ok(Some(v))
            }
            (None, None) => Ok(None),
        }
    }

    /// One secret (the whole text).
    pub fn one(&self) -> Result<Option<String>, SecretError> {
        self.text()
    }

    /// A list of secrets, separated by commas or new lines.
    pub fn list(&self) -> Result<Vec<String>, SecretError> {
        Ok(self
            .text()?
            .map(|t| {
                t.split([',', '\n'])
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Does a database URL carry a password (`user:password@` or `password=`)?
pub fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let userinfo_password = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let query_password = url
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("password=")));
    userinfo_password || query_password
}

/// Make `dir` (created if missing) private: mode 0700. A shared directory
/// (sticky bit, like /tmp) is refused rather than changed.
pub fn private_dir(dir: &Path) -> Result<(), SecretError> {
    let chmod = |source| SecretError::Chmod {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(chmod)?;
    }
    let md = fs::metadata(dir).map_err(chmod)?;
    if md.mode() & 0o1000 != 0 {
        return Err(SecretError::SharedDir {
            path: dir.to_path_buf(),
        });
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(chmod)
}

/// Make a SQLite database private: the database file (created empty, mode
/// 0600, if missing; SQLite creates its `-wal` and `-shm` files with the
/// database's mode) and any `-wal`, `-shm` or `-journal` file next to it.
pub fn private_sqlite(db: &Path) -> Result<(), SecretError> {
    let chmod = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SecretError::Chmod { path: p, source }
    };
    if !db.exists() {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)
            .map_err(chmod(db))?;
    }
    let name = db.as_os_str().to_owned();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = name.clone();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(chmod(&p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").mode() & 0o7777
    }

    #[test]
    fn secret_files_must_be_private() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("key");
        fs::write(&f, "k1, k2\nk3\n").expect("write");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).expect("chmod");
        let src = Source {
            what: "keys",
            env: "FGA_KEYS",
            env_value: None,
            flag: "--keys-file",
            file: Some(&f),
        };
        let e = src.list().expect_err("world-readable is refused");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(src.list().expect("keys"), ["k1", "k2", "k3"]);
        let both = Source {
            env_value: Some("x".into()),
            ..src
        };
        assert!(matches!(both.list(), Err(SecretError::Both { .. })));
        let env = Source {
            what: "key",
            env: "K",
            env_value: Some(" s3cret ".into()),
            flag: "--k",
            file: None,
        };
        assert_eq!(env.one().expect("env").as_deref(), Some("s3cret"));
    }

    #[test]
    fn passwords_in_urls_are_found() {
        assert!(url_has_password("postgres://u:pw@h/db"));
        assert!(url_has_password(
            "postgres://u@h/db?sslmode=off&password=pw"
        ));
        assert!(!url_has_password("postgres://u@h:5432/db"));
        assert!(!url_has_password("postgres://h/db"));
        assert!(!url_has_password("/var/lib/fga/fga.db"));
    }

    #[test]
    fn data_dirs_and_databases_are_private() {
        let d = tempfile::tempdir().expect("tmp");
        let dir = d.path().join("data");
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&dir).expect("private");
        assert_eq!(mode(&dir), 0o700);
        let fresh = d.path().join("a/b");
        private_dir(&fresh).expect("created");
        assert_eq!(mode(&fresh), 0o700);
        let db = dir.join("fga.db");
        private_sqlite(&db).expect("created");
        assert_eq!(mode(&db), 0o600);
        let wal = dir.join("fga.db-wal");
        fs::write(&wal, "").expect("wal");
        fs::set_permissions(&wal, fs::Permissions::from_mode(0o644)).expect("chmod");
        private_sqlite(&db).expect("tightened");
        assert_eq!(mode(&wal), 0o600);
        let shared = d.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(matches!(
            private_dir(&shared),
            Err(SecretError::SharedDir { .. })
        ));
    }
}
