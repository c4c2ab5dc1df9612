//! Identities, roles and bearer tokens.
//!
//! Tokens are random, shown once, and stored only as their SHA-256 hash.

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Developer,
    Approver,
    Sre,
    Ci,
    Admin,
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "developer" => Role::Developer,
            "approver" => Role::Approver,
            "sre" => Role::Sre,
            "ci" => Role::Ci,
            "admin" => Role::Admin,
            _ => {
                return Err(format!(
                    "unknown role {s:?} (developer, approver, sre, ci or admin)"
                ))
            }
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Developer => "developer",
            Role::Approver => "approver",
            Role::Sre => "sre",
            Role::Ci => "ci",
            Role::Admin => "admin",
        })
    }
}

/// What a caller may do. Every API route needs exactly one of these
/// (`api::ROUTES`); handlers may check more (an approver's group, a
/// self-approval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read trains, pipelines, cells, artifacts (not tokens or the audit log).
    Read,
    SubmitPipeline,
    StartTrain,
    PushArtifact,
    /// Approve or reject a train's gate or a pipeline revision.
    Approve,
    CancelOrRollback,
    /// Resize, add, drain and retire cells; apply capacity plans.
    ManageCells,
    /// Approve or reject a gated resize (approvers and SREs).
    DecideResize,
    ManageTokens,
    ReadAudit,
}

impl Role {
    /// The role rules: least privilege. Admin may do everything; CI may
    /// only start trains and push artifacts (and read, to wait for them).
    pub fn may(self, a: Action) -> bool {
        use Action::*;
        match self {
            Role::Admin => true,
            Role::Developer => matches!(
                a,
                Read | SubmitPipeline | StartTrain | PushArtifact | CancelOrRollback
            ),
            Role::Ci => matches!(a, Read | StartTrain | PushArtifact),
            Role::Approver => matches!(a, Read | Approve | DecideResize),
            Role::Sre => matches!(a, Read | ManageCells | DecideResize | CancelOrRollback),
        }
    }
}

/// The caller of an API request.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    pub groups: Vec<String>,
}

/// A new random token (`cdt_` + 64 hex digits).
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("cdt_{}", hex::encode(b))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_rules() {
        assert!(Role::Developer.may(Action::StartTrain));
        assert!(!Role::Developer.may(Action::Approve));
        assert!(Role::Approver.may(Action::Approve));
        assert!(!Role::Approver.may(Action::StartTrain));
        assert!(Role::Sre.may(Action::ManageCells));
        assert!(!Role::Ci.may(Action::SubmitPipeline));
        assert!(
            !Role::Ci.may(Action::CancelOrRollback),
            "CI cannot stop trains"
        );
        assert!(Role::Ci.may(Action::StartTrain) && Role::Ci.may(Action::PushArtifact));
        assert!(Role::Admin.may(Action::ManageTokens));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
    }
}
