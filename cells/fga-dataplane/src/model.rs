//! Authorization models in OpenFGA's JSON shape (schema 1.1), and their
//! validation.

use crate::recursion::Analysis;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// `{"object": "", "relation": "viewer"}` as used inside rewrites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectRelation {
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub relation: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleToUserset {
    pub tupleset: ObjectRelation,
    #[serde(rename = "computedUserset")]
    pub computed_userset: ObjectRelation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usersets {
    pub child: Vec<Userset>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub base: Box<Userset>,
    pub subtract: Box<Userset>,
}

/// A relation's rewrite rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Userset {
    /// Directly assigned (tuples of this object#relation).
    #[serde(rename = "this")]
    This(serde_json::Map<String, serde_json::Value>),
    #[serde(rename = "computedUserset")]
    Computed(ObjectRelation),
    #[serde(rename = "tupleToUserset")]
    TupleToUserset(TupleToUserset),
    #[serde(rename = "union")]
    Union(Usersets),
    #[serde(rename = "intersection")]
    Intersection(Usersets),
    #[serde(rename = "difference")]
    Difference(Difference),
}

impl Userset {
    pub fn this() -> Userset {
        Userset::This(serde_json::Map::new())
    }
    pub fn computed(rel: &str) -> Userset {
        Userset::Computed(ObjectRelation {
            object: String::new(),
            relation: rel.to_string(),
        })
    }
}

/// A type a relation may be directly assigned: `user`, `user:*`, `group#member`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationReference {
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wildcard: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub condition: String,
}

impl RelationReference {
    pub fn is_wildcard(&self) -> bool {
        self.wildcard.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RelationMetadata {
    #[serde(default, deserialize_with = "nullable")]
    pub directly_related_user_types: Vec<RelationReference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Metadata {
    #[serde(default, deserialize_with = "nullable")]
    pub relations: BTreeMap<String, RelationMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeDefinition {
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub relations: BTreeMap<String, Userset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

impl TypeDefinition {
    /// The types a relation of this type may be directly assigned.
    pub fn direct_types(&self, relation: &str) -> &[RelationReference] {
        self.metadata
            .as_ref()
            .and_then(|m| m.relations.get(relation))
            .map(|r| r.directly_related_user_types.as_slice())
            .unwrap_or(&[])
    }
}

/// An authorization model (what `WriteAuthorizationModel` takes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationModel {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub schema_version: String,
    pub type_definitions: Vec<TypeDefinition>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "nullable"
    )]
    pub conditions: BTreeMap<String, serde_json::Value>,
    /// How OpenFGA resolves this model's cycles, worked out on first use.
    #[serde(skip)]
    pub analysis: LazyAnalysis,
}

/// A model's [`Analysis`], computed once (models never change once parsed).
#[derive(Default, Clone)]
pub struct LazyAnalysis(std::sync::OnceLock<std::sync::Arc<Analysis>>);

impl PartialEq for LazyAnalysis {
    /// Derived data: never part of a model's identity.
    fn eq(&self, _: &LazyAnalysis) -> bool {
        true
    }
}

impl Eq for LazyAnalysis {}

impl std::fmt::Debug for LazyAnalysis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LazyAnalysis")
    }
}

/// `null` reads as the default (SDKs send it for empty maps and lists).
fn nullable<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Why a model is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

fn err(msg: impl Into<String>) -> ModelError {
    ModelError(msg.into())
}

/// Names of types, relations: what OpenFGA accepts.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 254
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !s.starts_with('-')
}

impl AuthorizationModel {
    pub fn type_def(&self, t: &str) -> Option<&TypeDefinition> {
        self.type_definitions.iter().find(|d| d.type_name == t)
    }

    pub fn rewrite(&self, t: &str, rel: &str) -> Option<&Userset> {
        self.type_def(t)?.relations.get(rel)
    }

    /// How OpenFGA resolves this model's cycles (computed on first use).
    pub fn recursion(&self) -> &Analysis {
        self.analysis
            .0
            .get_or_init(|| std::sync::Arc::new(Analysis::new(self)))
    }

    /// Check the model the way OpenFGA's model validation does (the parts
    /// that matter for evaluation): schema 1.1, unique types, every relation
    /// and tupleset referenced exists, direct assignments declare their types,
    /// tuplesets are direct relations without usersets, and no relation is
    /// defined only in terms of itself.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.schema_version != "1.1" {
            return Err(err(format!(
                "schema version {:?} is not supported; use 1.1",
                self.schema_version
            )));
        }
        if !self.conditions.is_empty() {
            return Err(err("conditions are not supported yet"));
        }
        if self.type_definitions.is_empty() {
            return Err(err("the model has no types"));
        }
        let mut seen = BTreeSet::new();
        for td in &self.type_definitions {
            if !valid_name(&td.type_name) || td.type_name == "self" || td.type_name == "this" {
                return Err(err(format!("invalid type name {:?}", td.type_name)));
            }
            if !seen.insert(td.type_name.as_str()) {
                return Err(err(format!("type {:?} is defined twice", td.type_name)));
            }
        }
        for td in &self.type_definitions {
            for (rel, rw) in &td.relations {
                if !valid_name(rel) || rel == "self" || rel == "this" {
                    return Err(err(format!(
                        "invalid relation name {rel:?} on type {}",
                        td.type_name
                    )));
                }
                self.check_rewrite(td, rel, rw)?;
                let direct = td.direct_types(rel);
                if contains_this(rw) && direct.is_empty() {
                    return Err(err(format!(
                        "relation {}#{rel} is directly assignable but declares no types",
                        td.type_name
                    )));
                }
                if !contains_this(rw) && !direct.is_empty() {
                    return Err(err(format!(
                        "relation {}#{rel} declares assignable types but has no direct assignment",
                        td.type_name
                    )));
                }
                for r in direct {
                    if !r.condition.is_empty() {
                        return Err(err("conditions are not supported yet"));
                    }
                    let Some(target) = self.type_def(&r.type_name) else {
                        return Err(err(format!(
                            "relation {}#{rel} allows unknown type {:?}",
                            td.type_name, r.type_name
                        )));
                    };
                    if let Some(ur) = &r.relation {
                        if !target.relations.contains_key(ur) {
                            return Err(err(format!(
                                "relation {}#{rel} allows {}#{ur}, which does not exist",
                                td.type_name, r.type_name
                            )));
                        }
                        if r.is_wildcard() {
                            return Err(err(
                                "a type restriction cannot be both a wildcard and a userset",
                            ));
                        }
                    }
                }
            }
        }
        self.check_cycles()
    }

    fn check_rewrite(
        &self,
        td: &TypeDefinition,
        rel: &str,
        rw: &Userset,
    ) -> Result<(), ModelError> {
        let t = &td.type_name;
        match rw {
            Userset::This(_) => Ok(()),
            Userset::Computed(or) => {
                if !td.relations.contains_key(&or.relation) {
                    return Err(err(format!(
                        "relation {t}#{rel} refers to {:?}, which is not a relation of {t}",
                        or.relation
                    )));
                }
                Ok(())
            }
            Userset::TupleToUserset(ttu) => {
                let ts = &ttu.tupleset.relation;
                let Some(ts_rw) = td.relations.get(ts) else {
                    return Err(err(format!(
                        "relation {t}#{rel}: tupleset {ts:?} is not a relation of {t}"
                    )));
                };
                if !contains_this(ts_rw) {
                    return Err(err(format!(
                        "relation {t}#{rel}: tupleset {t}#{ts} must be directly assignable"
                    )));
                }
                let cu = &ttu.computed_userset.relation;
                let targets = td.direct_types(ts);
                if targets.iter().any(|r| r.relation.is_some()) {
                    return Err(err(format!(
                        "relation {t}#{rel}: tupleset {t}#{ts} may not allow usersets"
                    )));
                }
                if !targets.iter().any(|r| {
                    self.type_def(&r.type_name)
                        .is_some_and(|d| d.relations.contains_key(cu))
                }) {
                    return Err(err(format!(
                        "relation {t}#{rel}: no type of {t}#{ts} has a relation {cu:?}"
                    )));
                }
                Ok(())
            }
            Userset::Union(u) | Userset::Intersection(u) => {
                if u.child.is_empty() {
                    return Err(err(format!(
                        "relation {t}#{rel} has an empty set operation"
                    )));
                }
                u.child
                    .iter()
                    .try_for_each(|c| self.check_rewrite(td, rel, c))
            }
            Userset::Difference(d) => {
                self.check_rewrite(td, rel, &d.base)?;
                self.check_rewrite(td, rel, &d.subtract)
            }
        }
    }

    /// A relation whose every path leads back to itself without passing a
    /// direct assignment or a tupleset can never be satisfied: OpenFGA rejects it.
    fn check_cycles(&self) -> Result<(), ModelError> {
        for td in &self.type_definitions {
            for rel in td.relations.keys() {
                let mut visiting = BTreeSet::new();
                if !self.can_terminate(&td.type_name, rel, &mut visiting) {
                    return Err(err(format!(
                        "relation {}#{rel} is defined only in terms of itself",
                        td.type_name
                    )));
                }
            }
        }
        Ok(())
    }

    fn can_terminate(&self, t: &str, rel: &str, visiting: &mut BTreeSet<(String, String)>) -> bool {
        let key = (t.to_string(), rel.to_string());
        if visiting.contains(&key) {
            return false;
        }
        let Some(rw) = self.rewrite(t, rel) else {
            return false;
        };
        visiting.insert(key.clone());
        let ok = self.rw_terminates(t, rw, visiting);
        visiting.remove(&key);
        ok
    }

    fn rw_terminates(
        &self,
        t: &str,
        rw: &Userset,
        visiting: &mut BTreeSet<(String, String)>,
    ) -> bool {
        match rw {
            Userset::This(_) | Userset::TupleToUserset(_) => true,
            Userset::Computed(or) => self.can_terminate(t, &or.relation, visiting),
            Userset::Union(u) => u.child.iter().any(|c| self.rw_terminates(t, c, visiting)),
            Userset::Intersection(u) => u.child.iter().all(|c| self.rw_terminates(t, c, visiting)),
            Userset::Difference(d) => self.rw_terminates(t, &d.base, visiting),
        }
    }
}

fn contains_this(rw: &Userset) -> bool {
    match rw {
        Userset::This(_) => true,
        Userset::Union(u) | Userset::Intersection(u) => u.child.iter().any(contains_this),
        Userset::Difference(d) => contains_this(&d.base) || contains_this(&d.subtract),
        _ => false,
    }
}
