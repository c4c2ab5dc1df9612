//! Ports of local cells.
//!
//! - Each artifact on a cell serves its own pair of loopback ports (`P` and
//!   `P + 1`, blue/green). The first artifact a cell runs gets the cell's own
//!   `port`; every other one a free pair from the artifact port range
//!   (`conductor up --artifact-ports`). Assignments are stored, so they stay
//!   the same across restarts.
//! - A worker's own port is bound by the Conductor and the bound socket is
//!   handed to the worker (fd 3, `CELL_WORKER_FD`): nothing can take the port
//!   between the moment it is chosen and the moment the worker serves it.

use crate::store::Store;
use cells_inventory::{CellSpec, TargetSpec};
use std::collections::BTreeSet;
use std::net::TcpListener;

/// The range extra artifacts' port pairs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// `LOW-HIGH`, at least one pair, not below 1024.
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: write LOW-HIGH, e.g. 28000-28999"))?;
        let p = |x: &str| {
            x.trim()
                .parse::<u16>()
                .map_err(|_| format!("{s:?}: {x:?} is not a port"))
        };
        let (first, last) = (p(a)?, p(b)?);
        if first < 1024 || last <= first {
            return Err(format!(
                "{s:?}: the range must hold at least two ports, all 1024 or above"
            ));
        }
        Ok(PortRange { first, last })
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            first: 28000,
            last: 28999,
        }
    }
}

/// A worker's own port, bound and listening on loopback: the kernel picks a
/// free port and the socket keeps it until the worker (which inherits it)
/// exits.
pub fn bind_worker_listener() -> Result<TcpListener, String> {
    TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("cannot bind a worker port: {e}"))
}

/// Is `port` free on loopback right now?
fn free_now(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The first of the two ports `artifact` serves on local `cell`: its stored
/// assignment, or a new one (the cell's own port when no artifact has it,
/// else a free pair of `range`).
pub async fn artifact_port(
    store: &Store,
    cell: &CellSpec,
    artifact: &str,
    range: PortRange,
) -> Result<u16, String> {
    let err = |e: crate::store::StoreError| format!("cannot read the cells' ports: {e}");
    if let Some(p) = store.cell_port(&cell.id, artifact).await.map_err(err)? {
        return Ok(p);
    }
    let base = cell
        .port
        .ok_or_else(|| format!("cell {} has no port", cell.id))?;
    let assigned = store.cell_ports().await.map_err(err)?;
    if !assigned.iter().any(|(_, _, p)| *p == base)
        && store
            .assign_cell_port(&cell.id, artifact, base)
            .await
            .map_err(err)?
    {
        return Ok(base);
    }
    // Ports no pair may overlap: every cell's pair and every assigned pair.
    let mut taken: BTreeSet<u16> = BTreeSet::new();
    for c in store.list_cells().await.map_err(err)? {
        if let (TargetSpec::Local, Some(p)) = (&c.spec.target, c.spec.port) {
            taken.extend([p, p.saturating_add(1)]);
        }
    }
    for (_, _, p) in &assigned {
        taken.extend([*p, p.saturating_add(1)]);
    }
    let mut p = range.first;
    while p < range.last {
        if !taken.contains(&p)
            && !taken.contains(&(p + 1))
            && free_now(p)
            && free_now(p + 1)
            && store
                .assign_cell_port(&cell.id, artifact, p)
                .await
                .map_err(err)?
        {
            tracing::info!(cell = %cell.id, artifact, port = p, "artifact ports assigned");
            return Ok(p);
        }
        p = p.saturating_add(2);
    }
    Err(format!(
        "no free pair of ports left in {}-{} for {artifact} on cell {} (conductor up --artifact-ports)",
        range.first, range.last, cell.id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn cell(id: &str, port: u16) -> CellSpec {
        CellSpec {
            id: id.into(),
            region: "us-east-1".into(),
            shape: "small".into(),
            labels: Default::default(),
            target: TargetSpec::Local,
            port: Some(port),
            tz: None,
        }
    }

    #[tokio::test]
    async fn each_artifact_gets_its_own_stable_pair() {
        let t = tempfile::tempdir().expect("tmp");
        let store = Store::open(&t.path().join("c.db")).await.expect("open");
        // Ports of this test's own: a free pair found by the kernel.
        let probe = TcpListener::bind(("127.0.0.1", 0)).expect("probe");
        let lo = probe.local_addr().expect("addr").port() & !1;
        drop(probe);
        let (a, b) = (
            cell("a", lo.wrapping_sub(200)),
            cell("b", lo.wrapping_sub(198)),
        );
        store
            .seed_cells(&[a.clone(), b.clone()], Utc::now())
            .await
            .expect("seed");
        let range = PortRange {
            first: lo.wrapping_sub(100),
            last: lo.wrapping_add(100),
        };
        let fga = artifact_port(&store, &a, "fga", range)
            .await
            .expect("first");
        assert_eq!(
            fga,
            a.port.expect("port"),
            "the first artifact keeps the cell's port"
        );
        let sample = artifact_port(&store, &a, "sample", range)
            .await
            .expect("second");
        assert!(sample >= range.first && sample < range.last, "{sample}");
        assert_ne!(sample, fga);
        let other = artifact_port(&store, &b, "sample", range).await.expect("b");
        assert_eq!(other, b.port.expect("port"));
        let third = artifact_port(&store, &b, "fga", range)
            .await
            .expect("b fga");
        assert!(
            third != sample && third != sample + 1 && third + 1 != sample,
            "{third} {sample}"
        );
        // Stable: asked again, the same answers.
        assert_eq!(
            artifact_port(&store, &a, "sample", range)
                .await
                .expect("again"),
            sample
        );
        assert_eq!(
            artifact_port(&store, &a, "fga", range)
                .await
                .expect("again"),
            fga
        );
        // A stamped cell may not take ports an artifact was given.
        let e = store
            .add_cell(
                &cell("c", sample.wrapping_add(1)),
                Utc::now(),
                &crate::store::AuditEntry::new("sre", "cell.add", "c", ""),
            )
            .await
            .expect_err("overlap");
        assert!(e.to_string().contains("sample of cell a"), "{e}");
    }

    #[test]
    fn a_worker_port_cannot_be_taken_before_the_worker_has_it() {
        let l = bind_worker_listener().expect("bind");
        let port = l.local_addr().expect("addr").port();
        // Another socket trying for the same port between the choice and the
        // worker's start (the race of a probe-and-close port) fails.
        assert!(TcpListener::bind(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(
            PortRange::parse("28000-28999"),
            Ok(PortRange {
                first: 28000,
                last: 28999
            })
        );
        for bad in ["", "28000", "9-20", "3000-3000", "a-b", "70000-70010"] {
            assert!(PortRange::parse(bad).is_err(), "{bad}");
        }
    }
}
