//! An in-memory tuple store with the same indexes as the database schema:
//! by (object, relation, user), by (object, relation), by object type and by
//! user type. Used by `fga-dataplane test` and as the reference in tests.

use crate::engine::{object_type, EvalError, TupleKey, TupleReader, Users};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

#[derive(Default, Debug, Clone)]
pub struct MemStore {
    exact: HashSet<TupleKey>,
    by_object: HashMap<(String, String), BTreeSet<String>>,
    objects_by_type: BTreeMap<String, BTreeSet<String>>,
    users_by_type: BTreeMap<String, BTreeSet<String>>,
    by_user: HashMap<String, BTreeSet<(String, String)>>,
}

impl MemStore {
    pub fn write(&mut self, t: TupleKey) -> bool {
        if !self.exact.insert(t.clone()) {
            return false;
        }
        self.by_object
            .entry((t.object.clone(), t.relation.clone()))
            .or_default()
            .insert(t.user.clone());
        self.objects_by_type
            .entry(object_type(&t.object).to_string())
            .or_default()
            .insert(t.object.clone());
        self.users_by_type
            .entry(object_type(&t.user).to_string())
            .or_default()
            .insert(t.user.clone());
        self.by_user
            .entry(t.user.clone())
            .or_default()
            .insert((t.object.clone(), t.relation.clone()));
        true
    }

    pub fn len(&self) -> usize {
        self.exact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }
}

impl TupleReader for MemStore {
    fn users_of(&self, object: &str, relation: &str) -> BoxFuture<'_, Result<Users, EvalError>> {
        let v: Vec<String> = self
            .by_object
            .get(&(object.to_string(), relation.to_string()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        Box::pin(async move { Ok(std::sync::Arc::new(v)) })
    }
    fn exists<'a>(
        &'a self,
        object: &'a str,
        relation: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<bool, EvalError>> {
        let hit = self.exact.contains(&TupleKey::new(object, relation, user));
        Box::pin(async move { Ok(hit) })
    }
    fn objects_of_type<'a>(&'a self, ty: &'a str) -> BoxFuture<'a, Result<Vec<String>, EvalError>> {
        let v = self
            .objects_by_type
            .get(ty)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        Box::pin(async move { Ok(v) })
    }
    fn users_of_type<'a>(&'a self, ty: &'a str) -> BoxFuture<'a, Result<Vec<String>, EvalError>> {
        let v = self
            .users_by_type
            .get(ty)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        Box::pin(async move { Ok(v) })
    }
    fn by_user<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, EvalError>> {
        let v = self
            .by_user
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        Box::pin(async move { Ok(v) })
    }
}
