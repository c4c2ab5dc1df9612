//! The artifact store port: where pushed artifacts are kept. An upload is
//! streamed in and hashed on the way, and only a complete, synced upload
//! is published (atomically); an upload dropped before that leaves
//! nothing. [`LocalArtifactDir`] is the one-machine implementation (a
//! directory); an object store (S3, ECR) implements the same traits.

use crate::engine::BoxFut;
use sha2::{Digest, Sha256};
use std::io;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

pub trait ArtifactStore: Send + Sync + 'static {
    /// Begin an upload of `name` `version`.
    fn begin<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
    ) -> BoxFut<'a, io::Result<Box<dyn Upload>>>;
    /// Where a deploy finds a stored version (None: not stored).
    fn locate(&self, name: &str, version: &str) -> Option<PathBuf>;
    /// Remove a stored version (one published but never indexed).
    fn remove(&self, name: &str, version: &str) -> io::Result<()>;
    /// Every stored (name, version), sorted.
    fn list(&self) -> io::Result<Vec<(String, String)>>;
}

/// One upload in progress.
pub trait Upload: Send {
    /// Append a chunk (hashed as it is written).
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFut<'a, io::Result<()>>;
    /// Sync what was written; its SHA-256 (hex) and size.
    fn finish(&mut self) -> BoxFut<'_, io::Result<(String, u64)>>;
    /// Put the finished upload in place, atomically.
    fn publish(self: Box<Self>) -> io::Result<()>;
}

/// Pushed artifacts in a directory: `<root>/<name>/<version>/<name>`.
#[derive(Clone)]
pub struct LocalArtifactDir {
    pub root: PathBuf,
}

impl LocalArtifactDir {
    pub fn path(&self, name: &str, version: &str) -> PathBuf {
        self.root.join(name).join(version).join(name)
    }
}

struct LocalUpload {
    tmp: tempfile::NamedTempFile,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
    path: PathBuf,
}

impl ArtifactStore for LocalArtifactDir {
    fn begin<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
    ) -> BoxFut<'a, io::Result<Box<dyn Upload>>> {
        Box::pin(async move {
            let path = self.path(name, version);
            let dir = path
                .parent()
                .ok_or_else(|| io::Error::other("artifact path has no parent"))?
                .to_path_buf();
            tokio::fs::create_dir_all(&dir).await?;
            // Beside its final place (one rename away); removed when dropped.
            let tmp = tempfile::Builder::new()
                .prefix(".upload-")
                .tempfile_in(&dir)?;
            let file = tokio::fs::File::from_std(tmp.as_file().try_clone()?);
            let up: Box<dyn Upload> = Box::new(LocalUpload {
                tmp,
                file,
                hasher: Sha256::new(),
                size: 0,
                path,
            });
            Ok(up)
        })
    }

    fn locate(&self, name: &str, version: &str) -> Option<PathBuf> {
        let p = self.path(name, version);
        p.is_file().then_some(p)
    }

    fn remove(&self, name: &str, version: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(name, version))
    }

    fn list(&self) -> io::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let names = match std::fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for n in names {
            let n = n?;
            let name = n.file_name().to_string_lossy().into_owned();
            if !n.file_type()?.is_dir() {
                continue;
            }
            for v in std::fs::read_dir(n.path())? {
                let version = v?.file_name().to_string_lossy().into_owned();
                if self.locate(&name, &version).is_some() {
                    out.push((name.clone(), version));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

impl Upload for LocalUpload {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFut<'a, io::Result<()>> {
        Box::pin(async move {
            self.hasher.update(chunk);
            self.size += chunk.len() as u64;
            self.file.write_all(chunk).await
        })
    }

    fn finish(&mut self) -> BoxFut<'_, io::Result<(String, u64)>> {
        Box::pin(async move {
            self.file.flush().await?;
            self.file.sync_all().await?;
            let sha = hex::encode(self.hasher.clone().finalize());
            Ok((sha, self.size))
        })
    }

    fn publish(self: Box<Self>) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.tmp.path(), std::fs::Permissions::from_mode(0o755))?;
        self.tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_upload_is_hashed_and_only_a_published_one_is_stored() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LocalArtifactDir {
            root: dir.path().join("artifacts"),
        };
        // Dropped before it is published: nothing is left.
        let mut up = store.begin("svc", "1").await.expect("begin");
        up.write(b"half").await.expect("write");
        drop(up);
        assert_eq!(store.locate("svc", "1"), None);
        let leftovers = std::fs::read_dir(dir.path().join("artifacts/svc/1"))
            .expect("dir")
            .count();
        assert_eq!(leftovers, 0);

        let mut up = store.begin("svc", "1").await.expect("begin");
        up.write(b"hello ").await.expect("write");
        up.write(b"world").await.expect("write");
        let (sha, size) = up.finish().await.expect("finish");
        assert_eq!(size, 11);
        assert_eq!(sha, hex::encode(Sha256::digest(b"hello world")));
        up.publish().expect("publish");
        let at = store.locate("svc", "1").expect("stored");
        assert_eq!(std::fs::read(&at).expect("read"), b"hello world");
        assert_eq!(
            store.list().expect("list"),
            vec![("svc".to_string(), "1".to_string())]
        );
        store.remove("svc", "1").expect("remove");
        assert!(store.list().expect("list").is_empty());
    }
}
