//! The local deploy target: each cell runs as processes on loopback, under
//! the [`Supervisor`] (blue/green per artifact, health-checked).

use super::{DeployTarget, Supervisor, VersionChange};
use crate::engine::BoxFut;
use std::sync::Arc;

pub struct LocalTarget {
    pub supervisor: Arc<Supervisor>,
}

impl DeployTarget for LocalTarget {
    fn change_version<'a>(&'a self, c: VersionChange<'a>) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            self.supervisor
                .switch(c.cell, &c.train.artifact, c.to, c.timeout)
                .await
        })
    }

    fn runs_pushed_artifacts(&self) -> bool {
        true
    }
}
