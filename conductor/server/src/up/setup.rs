//! What `conductor up` prepares before it serves: the data and run
//! directories, secrets, the admin token, the inventory, the planner.

use super::*;

pub(super) fn secret(data_dir: &Path, name: &str) -> Result<String> {
    let file = data_dir.join(name);
    if let Ok(s) = std::fs::read_to_string(&file) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let s = new_token();
    write_private(&file, &s).with_context(|| format!("writing {}", file.display()))?;
    Ok(s)
}

/// Start the capacity planner beside the Conductor: it scrapes the local
/// cells (through the routing table) into `DATA/planner/capacity.db` and
/// dies with the Conductor (it is control plane, not a cell). Its token is
/// made for this run and passed in its environment only (no file); its
/// environment holds nothing else of the Conductor's. Returns its URL and
/// token.
pub(super) async fn start_planner(
    data_dir: &Path,
    shapes_file: &Path,
    fga_admin_key: &str,
    interval_secs: f64,
) -> Result<Option<(String, String, tokio::process::Child)>> {
    let exe = std::env::current_exe().context("finding the conductor binary")?;
    let bin = exe.with_file_name("capacity-planner");
    if !bin.is_file() {
        tracing::warn!(path = %bin.display(), "no capacity-planner binary beside conductor; capacity commands are off");
        return Ok(None);
    }
    let token = new_token();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("planner.log"))
        .context("opening planner.log")?;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("--shapes")
        .arg(shapes_file)
        .args(["serve", "--listen", "127.0.0.1:0", "--interval-secs"])
        .arg(interval_secs.to_string())
        .arg("--data-dir")
        .arg(data_dir.join("planner"))
        .arg("--routes")
        .arg(data_dir.join("routes.json"))
        .env_clear()
        .env("PATH", sandbox::DEFAULT_PATH)
        .env("CAPACITY_TOKEN", &token)
        .env("FGA_ADMIN_KEY", fga_admin_key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    if let Ok(l) = std::env::var("RUST_LOG") {
        cmd.env("RUST_LOG", l);
    }
    crate::procs::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().context("starting capacity-planner")?;
    let out = child.stdout.take().context("planner stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(rest) = l.strip_prefix("capacity-planner listening on ") {
                return rest.split_whitespace().next().map(String::from);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .with_context(|| {
        format!(
            "capacity-planner did not start; see {}",
            data_dir.join("planner.log").display()
        )
    })?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Some((url, token, child)))
}

pub(super) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Read and validate the shapes.
pub fn load_shapes(shapes_file: &Path) -> Result<Vec<Shape>> {
    cells_inventory::parse_shapes(&shapes_file.display().to_string(), &read(shapes_file)?)
        .map_err(|d| anyhow::anyhow!("{d}"))
}

/// Read and validate the shapes and the seed cells.
pub fn load_inventory(
    shapes_file: &Path,
    cells_file: &Path,
) -> Result<Vec<cells_inventory::CellSpec>> {
    let shapes = load_shapes(shapes_file)?;
    cells_inventory::parse_cells(
        &cells_file.display().to_string(),
        &read(cells_file)?,
        &shapes,
    )
    .map_err(|d| anyhow::anyhow!("{d}"))
}

/// The admin token, created with the database: returned only when created
/// now (shown once), and written to `file` (mode 0600) when asked. Only its
/// hash is stored; its creation is audited in the same transaction.
pub(super) async fn admin_token(
    store: &Store,
    file: Option<&Path>,
    json: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<String>> {
    if store.count_tokens().await? > 0 {
        return Ok(None);
    }
    anyhow::ensure!(
        file.is_some() || !json,
        "the first start creates the admin token, which JSON output never shows: pass --write-admin-token FILE"
    );
    let token = new_token();
    // The file first: a token the database knows but nobody has is a lockout.
    if let Some(f) = file {
        write_private(f, &token)
            .with_context(|| format!("writing the admin token to {}", f.display()))?;
    }
    let audit = crate::store::AuditEntry::new(
        "conductor",
        "token.create",
        "admin",
        "role admin (the first token, shown once)",
    );
    store
        .create_token(
            "admin",
            "admin",
            &[],
            &hash_token(&token),
            None,
            now,
            &audit,
        )
        .await?;
    Ok(Some(token))
}

/// Write `text` to a file only its owner can read (never through a symbolic link).
pub(super) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Make the data directory private: the directory and every directory in it
/// 0700, every file in it 0600 (the database and SQLite's -wal/-shm files,
/// keys, the routing table, logs). Also tightens a directory written by an
/// earlier release.
pub fn secure_data_dir(dir: &Path) -> std::io::Result<()> {
    sandbox::mkdir(dir, 0o700, None)?;
    sandbox::mkdir(&dir.join("artifacts"), 0o700, None)?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            sandbox::set_mode_owner(&e.path(), 0o700, None)?;
        } else if t.is_file() {
            sandbox::set_mode_owner(&e.path(), 0o600, None)?;
        }
    }
    Ok(())
}

/// The artifact spec of every pipeline, by artifact name (to restart cells).
pub(super) async fn artifact_specs(store: &Store) -> Result<HashMap<String, Artifact>> {
    let mut m = HashMap::new();
    for row in store.list_pipelines().await? {
        if let Ok((p, _)) = pipeline::parse(&row.name, &row.yaml) {
            m.insert(p.artifact.name.clone(), p.artifact);
        }
    }
    Ok(m)
}

/// `DATA-run` beside the data directory.
pub(super) fn default_run_dir(data_dir: &Path) -> Result<PathBuf> {
    let name = data_dir
        .file_name()
        .context("the data directory has no name")?
        .to_string_lossy()
        .into_owned();
    Ok(data_dir.with_file_name(format!("{name}-run")))
}

/// Cells' data kept in `DATA/cells/<id>/data` by earlier releases moves to
/// the run directory, where the cells user can reach it.
pub(super) fn move_legacy_cell_data(data_dir: &Path, sb: &Sandbox) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("cells")) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let from = e.path().join("data");
        if cells_inventory::valid_id(&id)
            && sb
                .adopt_cell_data(&id, &from)
                .with_context(|| format!("moving cell {id}'s data"))?
        {
            tracing::info!(cell = %id, to = %sb.run_dir().display(), "moved the cell's data out of the data directory");
        }
    }
    Ok(())
}

/// Process-wide protections of the server: files it creates are private
/// (umask 077, children inherit it), and processes of the same user cannot
/// read its memory or /proc environment (`PR_SET_DUMPABLE` 0).
#[allow(unsafe_code)]
pub(super) fn protect_process() -> Result<()> {
    // SAFETY: umask and prctl take integers and have no memory effects.
    unsafe {
        libc::umask(0o077);
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_DUMPABLE)");
        }
    }
    Ok(())
}
