//! Cell routing: where the Conductor publishes which port (and workers)
//! serves each artifact of each cell. [`LocalRoutesFile`] is the
//! one-machine implementation (`routes.json` in the data directory, read
//! by a local proxy or by hand); a DNS-based one (Route 53) implements the
//! same trait.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A cell's routes: artifact -> `{version, port, ports, pid, workers}`.
pub type CellRoutes = BTreeMap<String, Value>;
/// Every cell's routes.
pub type RouteTable = BTreeMap<String, CellRoutes>;

pub trait CellRouting: Send + Sync + 'static {
    /// Route `cell`'s artifacts as `routes` (replacing what it had).
    fn publish(&self, cell: &str, routes: CellRoutes) -> Result<(), String>;
    /// Stop routing to `cell`.
    fn remove(&self, cell: &str) -> Result<(), String>;
    /// The routes as published.
    fn table(&self) -> RouteTable;
}

/// The routing table as a JSON file, replaced atomically on every change,
/// one writer at a time (each writing the table as it is then).
pub struct LocalRoutesFile {
    path: PathBuf,
    table: Mutex<RouteTable>,
}

impl LocalRoutesFile {
    /// The table at `path`, starting from what the file holds (so that a
    /// cell routed by an earlier run is removed once it runs nothing).
    pub fn new(path: PathBuf) -> LocalRoutesFile {
        let table = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        LocalRoutesFile {
            path,
            table: Mutex::new(table),
        }
    }

    fn change(&self, f: impl FnOnce(&mut RouteTable)) -> Result<(), String> {
        // The file is written under the table's lock: the last file written
        // holds the newest table.
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut t);
        let text = serde_json::to_string_pretty(&*t).map_err(|e| e.to_string())?;
        replace_file(&self.path, &text).map_err(|e| format!("writing {}: {e}", self.path.display()))
    }
}

impl CellRouting for LocalRoutesFile {
    fn publish(&self, cell: &str, routes: CellRoutes) -> Result<(), String> {
        self.change(|t| {
            t.insert(cell.to_string(), routes);
        })
    }

    fn remove(&self, cell: &str) -> Result<(), String> {
        self.change(|t| {
            t.remove(cell);
        })
    }

    fn table(&self) -> RouteTable {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Replace `path` with `text`, atomically (a temporary file renamed over
/// it). Callers serialize writers.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn read(path: &Path) -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
    }

    #[test]
    fn concurrent_publishers_all_succeed_and_the_file_holds_every_cell() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("routes.json");
        let routes = Arc::new(LocalRoutesFile::new(path.clone()));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let routes = routes.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .map(|j| {
                            let r = CellRoutes::from([("a".to_string(), json!({"n": j}))]);
                            routes.publish(&format!("c{i}"), r)
                        })
                        .filter(Result::is_err)
                        .count()
                })
            })
            .collect();
        let failed: usize = threads.into_iter().map(|t| t.join().expect("join")).sum();
        assert_eq!(failed, 0);
        let file = read(&path);
        for i in 0..8 {
            assert_eq!(file[format!("c{i}")]["a"]["n"], 99, "{file}");
        }
        assert_eq!(serde_json::to_value(routes.table()).expect("json"), file);
    }

    #[test]
    fn a_removed_cell_leaves_the_table() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("routes.json");
        let routes = LocalRoutesFile::new(path.clone());
        let r = CellRoutes::from([("a".to_string(), json!({"port": 1}))]);
        routes.publish("c1", r.clone()).expect("publish");
        routes.publish("c2", r).expect("publish");
        routes.remove("c1").expect("remove");
        assert_eq!(read(&path), json!({"c2": {"a": {"port": 1}}}));
        assert_eq!(routes.table().keys().collect::<Vec<_>>(), vec!["c2"]);
        // A new run starts from the file, so it can remove what is stale.
        let again = LocalRoutesFile::new(path.clone());
        assert_eq!(again.table(), routes.table());
        again.remove("c2").expect("remove");
        assert_eq!(read(&path), json!({}));
    }
}
