//! ListObjects (a reverse expansion from the user, confirmed by Check) and
//! ListUsers (candidate users confirmed by Check in ListUsers mode).

use super::{object_type, parse_user, EvalError, Evaluator};
use crate::model::{AuthorizationModel, Userset};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeSet, HashSet};

impl Evaluator<'_> {
    /// Objects of `object_type` on which `user` has `relation`, sorted.
    ///
    /// Candidates come from a reverse expansion through the by-user index
    /// (tuples naming the user, then the usersets and parents those reach),
    /// pruned to the (type, relation) pairs the target can depend on; each
    /// candidate is then confirmed with Check, so intersections and
    /// exclusions stay exact. Expansion and confirmation alternate in rounds,
    /// so a user who reaches much of the store stops costing once `limit`
    /// objects are confirmed.
    pub async fn list_objects(
        &self,
        object_type: &str,
        relation: &str,
        user: &str,
        limit: usize,
    ) -> Result<Vec<String>, EvalError> {
        let mut rev = Reverse::start(self.model, object_type, relation, user);
        for (o, r) in self.reader.by_user(user).await? {
            rev.push(&o, &r);
        }
        if let Some((t, id, None)) = parse_user(user) {
            if id != "*" {
                for (o, r) in self.reader.by_user(&format!("{t}:*")).await? {
                    rev.push(&o, &r);
                }
            }
        }
        let mut out = Vec::new();
        loop {
            let want = (limit - out.len()).max(64);
            let exhausted = self.reverse_step(&mut rev, want).await?;
            let mut fresh = std::mem::take(&mut rev.fresh).into_iter();
            let mut futs = FuturesUnordered::new();
            loop {
                while futs.len() < 32 {
                    let Some(o) = fresh.next() else { break };
                    let ev = self.clone();
                    let (rel, u) = (relation.to_string(), user.to_string());
                    futs.push(async move {
                        let r = ev.check(&o, &rel, &u).await;
                        (o, r)
                    });
                }
                let Some((o, r)) = futs.next().await else {
                    break;
                };
                if r? {
                    out.push(o);
                    if out.len() >= limit {
                        out.sort();
                        return Ok(out);
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        out.sort();
        Ok(out)
    }

    /// Expand until `want` new candidates are found (in `rev.fresh`) or
    /// nothing is left; returns whether nothing is left.
    async fn reverse_step(&self, rev: &mut Reverse, want: usize) -> Result<bool, EvalError> {
        while rev.fresh.len() < want {
            let Some(us) = rev.todo.pop() else {
                return Ok(true);
            };
            if rev.seen.len() > 1_000_000 || !rev.seen.insert(us.clone()) {
                continue;
            }
            let Some((obj, rel)) = us.split_once('#') else {
                continue;
            };
            let ty = object_type(obj);
            if ty == rev.target && rev.found.insert(obj.to_string()) {
                rev.fresh.push(obj.to_string());
            }
            // Members of `us` are members of the usersets that name it.
            for (o, r) in self.reader.by_user(&us).await? {
                rev.push(&o, &r);
            }
            let Some(td) = self.model.type_def(ty) else {
                continue;
            };
            // Relations of the same object defined through this one.
            for (r2, rw) in &td.relations {
                if r2 != rel && refers_to(rw, rel) {
                    rev.push(obj, r2);
                }
            }
            // Objects whose tupleset points at `obj` and compute `rel` there.
            let mut parents: Option<Vec<(String, String)>> = None;
            for td2 in &self.model.type_definitions {
                for (r3, rw) in &td2.relations {
                    if !rev.relevant.contains(&(td2.type_name.clone(), r3.clone())) {
                        continue;
                    }
                    for ts in tuplesets_computing(rw, rel) {
                        if parents.is_none() {
                            parents = Some(self.reader.by_user(obj).await?);
                        }
                        for (o2, r2) in parents.iter().flatten() {
                            if *r2 == ts && object_type(o2) == td2.type_name {
                                rev.push(o2, r3);
                            }
                        }
                    }
                }
            }
        }
        Ok(false)
    }

    /// Users of the filter type (and relation) with `relation` on `object`.
    pub async fn list_users(
        &self,
        object: &str,
        relation: &str,
        filter_type: &str,
        filter_relation: Option<&str>,
    ) -> Result<Vec<String>, EvalError> {
        let mut cands: BTreeSet<String> = BTreeSet::new();
        match filter_relation {
            None => {
                for u in self.reader.users_of_type(filter_type).await? {
                    if let Some((t, id, None)) = parse_user(&u) {
                        cands.insert(format!("{t}:{id}"));
                    }
                }
                // Objects of the type can be users too (e.g. `user:x` only as an object).
                for o in self.reader.objects_of_type(filter_type).await? {
                    cands.insert(o);
                }
            }
            Some(fr) => {
                for u in self.reader.users_of_type(filter_type).await? {
                    if let Some((t, id, _)) = parse_user(&u) {
                        if id != "*" {
                            cands.insert(format!("{t}:{id}#{fr}"));
                        }
                    }
                }
                for o in self.reader.objects_of_type(filter_type).await? {
                    cands.insert(format!("{o}#{fr}"));
                }
                // The object itself, when the filter names its own relation.
                if object_type(object) == filter_type {
                    cands.insert(format!("{object}#{fr}"));
                }
            }
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for u in cands {
            let ev = Evaluator {
                concrete_only: true,
                cycle_is_false: true,
                ..self.clone()
            };
            if seen.insert(u.clone()) && ev.check(object, relation, &u).await? {
                out.push(u);
            }
        }
        Ok(out)
    }
}

/// The state of a ListObjects reverse expansion.
struct Reverse {
    target: String,
    /// (type, relation) pairs the target relation can depend on; nothing
    /// else can lead to it, so nothing else is expanded.
    relevant: HashSet<(String, String)>,
    todo: Vec<String>,
    seen: HashSet<String>,
    found: HashSet<String>,
    /// Candidates found since the last round of checks.
    fresh: Vec<String>,
}

impl Reverse {
    fn start(model: &AuthorizationModel, target: &str, relation: &str, user: &str) -> Reverse {
        let mut r = Reverse {
            target: target.to_string(),
            relevant: dependencies(model, target, relation),
            todo: Vec::new(),
            seen: HashSet::new(),
            found: HashSet::new(),
            fresh: Vec::new(),
        };
        // A userset as the user (`group:x#member`) is a node itself.
        if let Some((t, id, Some(rel))) = parse_user(user) {
            r.push(&format!("{t}:{id}"), rel);
        }
        r
    }

    fn push(&mut self, object: &str, relation: &str) {
        if self
            .relevant
            .contains(&(object_type(object).to_string(), relation.to_string()))
        {
            self.todo.push(format!("{object}#{relation}"));
        }
    }
}

/// Every (type, relation) that `type#relation` can depend on, itself
/// included: the relations its rewrite computes, the usersets its direct
/// types allow, and what tuple-to-usersets compute on their parents.
fn dependencies(
    model: &AuthorizationModel,
    object_type: &str,
    relation: &str,
) -> HashSet<(String, String)> {
    fn walk(
        model: &AuthorizationModel,
        ty: &str,
        rel: &str,
        rw: &Userset,
        out: &mut Vec<(String, String)>,
    ) {
        let direct = |r: &str| {
            model
                .type_def(ty)
                .map(|d| d.direct_types(r).to_vec())
                .unwrap_or_default()
        };
        match rw {
            Userset::This(_) => {
                for d in direct(rel) {
                    if let Some(r) = d.relation {
                        out.push((d.type_name, r));
                    }
                }
            }
            Userset::Computed(or) => out.push((ty.to_string(), or.relation.clone())),
            Userset::TupleToUserset(t) => {
                for d in direct(&t.tupleset.relation) {
                    if d.relation.is_none() {
                        out.push((d.type_name, t.computed_userset.relation.clone()));
                    }
                }
            }
            Userset::Union(u) | Userset::Intersection(u) => {
                for c in &u.child {
                    walk(model, ty, rel, c, out);
                }
            }
            Userset::Difference(d) => {
                walk(model, ty, rel, &d.base, out);
                walk(model, ty, rel, &d.subtract, out);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut stack = vec![(object_type.to_string(), relation.to_string())];
    while let Some((t, r)) = stack.pop() {
        if !seen.insert((t.clone(), r.clone())) {
            continue;
        }
        if let Some(rw) = model.rewrite(&t, &r) {
            walk(model, &t, &r, rw, &mut stack);
        }
    }
    seen
}

/// Does `rw` use `relation` of the same object (a computed userset)?
fn refers_to(rw: &Userset, relation: &str) -> bool {
    match rw {
        Userset::Computed(or) => or.relation == relation,
        Userset::Union(u) | Userset::Intersection(u) => {
            u.child.iter().any(|c| refers_to(c, relation))
        }
        Userset::Difference(d) => refers_to(&d.base, relation) || refers_to(&d.subtract, relation),
        _ => false,
    }
}

/// The tupleset relations of the tuple-to-usersets in `rw` that compute `relation`.
fn tuplesets_computing(rw: &Userset, relation: &str) -> Vec<String> {
    match rw {
        Userset::TupleToUserset(t) if t.computed_userset.relation == relation => {
            vec![t.tupleset.relation.clone()]
        }
        Userset::Union(u) | Userset::Intersection(u) => u
            .child
            .iter()
            .flat_map(|c| tuplesets_computing(c, relation))
            .collect(),
        Userset::Difference(d) => {
            let mut v = tuplesets_computing(&d.base, relation);
            v.extend(tuplesets_computing(&d.subtract, relation));
            v
        }
        _ => vec![],
    }
}
