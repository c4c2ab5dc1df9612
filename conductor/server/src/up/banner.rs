//! What `conductor up` prints on stdout once it serves: text, or one JSON
//! line (never the admin token).

use std::path::Path;

/// What `conductor up` prints once it serves (stdout).
pub(super) struct Banner<'a> {
    pub(super) url: String,
    pub(super) data_dir: &'a Path,
    pub(super) run_dir: &'a Path,
    pub(super) cells: usize,
    pub(super) added: usize,
    pub(super) planner: Option<&'a str>,
    /// The admin token, when created by this start.
    pub(super) token: Option<&'a str>,
    pub(super) token_file: Option<&'a Path>,
}

impl Banner<'_> {
    pub(super) fn print_text(&self) {
        println!(
            "Conductor is up at {}/  (data in {}, cells and steps run in {})",
            self.url,
            self.data_dir.display(),
            self.run_dir.display()
        );
        println!(
            "  cells: {} in the inventory ({} new)",
            self.cells, self.added
        );
        println!("  capacity planner: {}", self.planner.unwrap_or("off"));
        match (self.token, self.token_file) {
            (Some(_), Some(f)) => println!("  admin token: written to {} (mode 0600)", f.display()),
            (Some(t), None) => println!(
                "  admin token (shown once, only its hash is kept): {t}\n  export CONDUCTOR_URL={} CONDUCTOR_TOKEN={t}",
                self.url
            ),
            (None, _) => println!(
                "  admin token: shown when the database was created; `conductor token create` makes more"
            ),
        }
    }

    /// One JSON line, without the admin token.
    pub(super) fn print_json(&self) {
        let v = serde_json::json!({
            "message": "Conductor is up",
            "url": self.url,
            "data_dir": self.data_dir,
            "run_dir": self.run_dir,
            "cells": self.cells,
            "new_cells": self.added,
            "planner": self.planner,
            "admin_token_file": self.token.and(self.token_file),
        });
        println!("{v}");
    }
}
