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

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    SubmitPipeline,
    StartTrain,
    PushArtifact,
    Approve,
    CancelOrRollback,
    ManageCells,
    ManageTokens,
    ReadAudit,
}

impl Role {
    /// The role rules. Admin may do everything.
    pub fn may(self, a: Action) -> bool {
        use Action::*;
        match self {
            Role::Admin => true,
            Role::Developer => matches!(
                a,
                Read | SubmitPipeline | StartTrain | PushArtifact | CancelOrRollback
            ),
            Role::Ci => matches!(a, Read | StartTrain | PushArtifact | CancelOrRollback),
            Role::Approver => matches!(a, Read | Approve),
            Role::Sre => matches!(a, Read | ManageCells | CancelOrRollback),
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
