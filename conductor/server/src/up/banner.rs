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
    /// Text or JSON; `follower`: this replica serves the API but another
    /// one leads (runs the engine and the cells) for now.
    pub(super) fn print(&self, json: bool, follower: bool) {
        if json {
            self.print_json(follower);
        } else {
            self.print_text(follower);
        }
    }

    fn print_text(&self, follower: bool) {
        println!(
            "Conductor is up at {}/  (data in {}, cells and steps run in {})",
            self.url,
            self.data_dir.display(),
            self.run_dir.display()
        );
        if follower {
            println!("  replica: following the leader (it runs trains and cells; this replica forwards to it and takes over if it stops)");
        }
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
    fn print_json(&self, follower: bool) {
        let v = serde_json::json!({
            "message": "Conductor is up",
            "role": if follower { "follower" } else { "leader" },
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
