//! How OpenFGA resolves cycles: which recursive relations it searches as a
//! plain reachability problem (where meeting a node again adds nothing) and
//! which flag a cycle (an undecided branch that an exclusion or intersection
//! turns into `false`), and which relations a user type can reach at all.
//!
//! OpenFGA decides this from a weighted graph of the model: a relation gets
//! the recursive fast path for a user type when it recurses through itself
//! only (one self-referencing branch, not part of a larger cycle), reaches
//! the user type, and everything else in it resolves in one tuple read on the
//! same object (direct types, wildcards, relations that are themselves
//! direct). When the weighted graph cannot be built for the model (an
//! intersection or exclusion on a cycle, an intersection whose branches share
//! no user type, a relation that reaches no user type), no relation gets the
//! fast path. Users that are usersets (`group:x#member`) never get it.
//!
//! Pure: computed once per model (see [`AuthorizationModel::recursion`]).

use crate::model::{AuthorizationModel, RelationReference, Userset};
use std::collections::{BTreeSet, HashMap};

/// Relation index in the analysis.
type Rel = usize;

/// A model's relation graph and what OpenFGA derives from it.
#[derive(Debug, Default)]
pub struct Analysis {
    /// type -> relation -> index (looked up by `&str`, without allocating:
    /// Check asks on every step).
    index: HashMap<String, HashMap<String, Rel>>,
    /// (type, relation) per index.
    names: Vec<(String, String)>,
    /// Relations each relation depends on (usersets it allows, computed
    /// relations, tuple-to-userset targets).
    succ: Vec<Vec<Rel>>,
    /// Relations reachable from each one (through one or more edges), as
    /// bit sets (a model may have thousands of relations).
    reach: Vec<Bits>,
    /// User types (plain or wildcard) each relation can reach.
    terminals: Vec<BTreeSet<String>>,
    /// Whether OpenFGA can build its weighted graph for this model.
    weighted: bool,
}

/// A set of relation indexes.
#[derive(Debug, Default, Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    /// Add `i`; whether it was new.
    fn insert(&mut self, i: Rel) -> bool {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        match self.0.get_mut(w) {
            Some(word) if *word & b == 0 => {
                *word |= b;
                true
            }
            _ => false,
        }
    }
    fn contains(&self, i: Rel) -> bool {
        self.0
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }
}

/// A (type, relation) reference inside a rewrite.
enum Edge<'m> {
    Direct(&'m RelationReference),
    Computed(&'m str),
    Ttu {
        tupleset: &'m str,
        computed: &'m str,
    },
}

impl Analysis {
    pub fn new(model: &AuthorizationModel) -> Analysis {
        let mut a = Analysis::default();
        for td in &model.type_definitions {
            for rel in td.relations.keys() {
                let i = a.names.len();
                a.index
                    .entry(td.type_name.clone())
                    .or_default()
                    .insert(rel.clone(), i);
                a.names.push((td.type_name.clone(), rel.clone()));
            }
        }
        let n = a.names.len();
        a.succ = vec![Vec::new(); n];
        for i in 0..n {
            let (t, r) = a.names[i].clone();
            if let Some(rw) = model.rewrite(&t, &r) {
                let mut out = Vec::new();
                edges(model, &t, &r, rw, &mut |e| {
                    out.extend(a.targets(model, &t, &e))
                });
                out.sort_unstable();
                out.dedup();
                a.succ[i] = out;
            }
        }
        a.reach = (0..n)
            .map(|i| {
                let mut seen = Bits::new(n);
                let mut stack: Vec<Rel> = a.succ[i].clone();
                while let Some(j) = stack.pop() {
                    if seen.insert(j) {
                        stack.extend(a.succ[j].iter().copied());
                    }
                }
                seen
            })
            .collect();
        a.terminals = vec![BTreeSet::new(); n];
        loop {
            let mut changed = false;
            for i in 0..n {
                let (t, r) = a.names[i].clone();
                let Some(rw) = model.rewrite(&t, &r) else {
                    continue;
                };
                let got = a.terms(model, &t, &r, rw);
                if got.len() > a.terminals[i].len() {
                    a.terminals[i] = got;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        a.weighted = a.weighted_graph_builds(model);
        a
    }

    fn idx(&self, t: &str, r: &str) -> Option<Rel> {
        self.index.get(t)?.get(r).copied()
    }

    /// The relations an edge leads to.
    fn targets(&self, model: &AuthorizationModel, t: &str, e: &Edge<'_>) -> Vec<Rel> {
        match e {
            Edge::Direct(d) => d
                .relation
                .as_deref()
                .and_then(|r| self.idx(&d.type_name, r))
                .into_iter()
                .collect(),
            Edge::Computed(r) => self.idx(t, r).into_iter().collect(),
            Edge::Ttu { tupleset, computed } => tupleset_types(model, t, tupleset)
                .filter_map(|x| self.idx(x, computed))
                .collect(),
        }
    }

    /// The user types a rewrite can reach, from the current estimate.
    fn terms(
        &self,
        model: &AuthorizationModel,
        t: &str,
        r: &str,
        rw: &Userset,
    ) -> BTreeSet<String> {
        let of = |i: Option<Rel>| i.map(|i| self.terminals[i].clone()).unwrap_or_default();
        match rw {
            Userset::This(_) => {
                let mut s = BTreeSet::new();
                for d in direct(model, t, r) {
                    match &d.relation {
                        None => {
                            s.insert(d.type_name.clone());
                        }
                        Some(ur) => s.extend(of(self.idx(&d.type_name, ur))),
                    }
                }
                s
            }
            Userset::Computed(or) => of(self.idx(t, &or.relation)),
            Userset::TupleToUserset(ttu) => tupleset_types(model, t, &ttu.tupleset.relation)
                .flat_map(|x| of(self.idx(x, &ttu.computed_userset.relation)))
                .collect(),
            Userset::Union(u) => u
                .child
                .iter()
                .flat_map(|c| self.terms(model, t, r, c))
                .collect(),
            Userset::Intersection(u) => {
                let mut it = u.child.iter().map(|c| self.terms(model, t, r, c));
                let first = it.next().unwrap_or_default();
                it.fold(first, |acc, s| acc.intersection(&s).cloned().collect())
            }
            Userset::Difference(d) => self.terms(model, t, r, &d.base),
        }
    }

    /// OpenFGA builds no weighted graph (so uses no fast path at all) when a
    /// relation reaches no user type, an intersection's branches share none,
    /// or an intersection or exclusion lies on a cycle.
    fn weighted_graph_builds(&self, model: &AuthorizationModel) -> bool {
        for (i, (t, r)) in self.names.iter().enumerate() {
            let Some(rw) = model.rewrite(t, r) else {
                return false;
            };
            if self.terminals[i].is_empty() || !self.operators_ok(model, i, t, r, rw) {
                return false;
            }
        }
        true
    }

    fn operators_ok(
        &self,
        model: &AuthorizationModel,
        i: Rel,
        t: &str,
        r: &str,
        rw: &Userset,
    ) -> bool {
        match rw {
            Userset::Union(u) => u.child.iter().all(|c| self.operators_ok(model, i, t, r, c)),
            Userset::Intersection(_) | Userset::Difference(_) => {
                if matches!(rw, Userset::Intersection(_)) && self.terms(model, t, r, rw).is_empty()
                {
                    return false;
                }
                let mut on_cycle = false;
                edges(model, t, r, rw, &mut |e| {
                    on_cycle |= self
                        .targets(model, t, &e)
                        .into_iter()
                        .any(|j| j == i || self.reach[j].contains(i));
                });
                let children: Vec<&Userset> = match rw {
                    Userset::Intersection(u) => u.child.iter().collect(),
                    Userset::Difference(d) => vec![&d.base, &d.subtract],
                    _ => vec![],
                };
                !on_cycle
                    && children
                        .iter()
                        .all(|c| self.operators_ok(model, i, t, r, c))
            }
            _ => true,
        }
    }

    /// Can a user of `user_type` (a plain type) take part in `t#r` at all?
    /// Like OpenFGA's path check: when it cannot, the answer is false
    /// without looking at tuples (and without flagging a cycle).
    pub fn type_reaches(&self, t: &str, r: &str, user_type: &str) -> bool {
        self.idx(t, r)
            .is_none_or(|i| self.terminals[i].contains(user_type))
    }

    /// Can the userset `ut#ur` take part in `t#r` at all?
    pub fn userset_reaches(&self, t: &str, r: &str, ut: &str, ur: &str) -> bool {
        match (self.idx(t, r), self.idx(ut, ur)) {
            (Some(i), Some(j)) => i == j || self.reach[i].contains(j),
            _ => true,
        }
    }

    /// Does OpenFGA resolve `t#r` for users of `user_type` as a reachability
    /// search (a node met again is simply false) rather than flagging a cycle?
    pub fn reachability_search(
        &self,
        model: &AuthorizationModel,
        t: &str,
        r: &str,
        user_type: &str,
    ) -> bool {
        let Some(i) = self.idx(t, r) else {
            return false;
        };
        let Some(rw) = model.rewrite(t, r) else {
            return false;
        };
        if !self.weighted || !self.terminals[i].contains(user_type) {
            return false;
        }
        // Part of a larger cycle (through another relation): a tuple cycle.
        if self.succ[i]
            .iter()
            .any(|&j| j != i && self.reach[j].contains(i))
        {
            return false;
        }
        let mut selfs = 0;
        edges(model, t, r, rw, &mut |e| match e {
            Edge::Direct(d) if d.type_name == t && d.relation.as_deref() == Some(r) => selfs += 1,
            Edge::Ttu { tupleset, computed }
                if computed == r && tupleset_types(model, t, tupleset).any(|x| x == t) =>
            {
                selfs += 1
            }
            _ => {}
        });
        if selfs != 1 {
            return false;
        }
        let w = Weigher {
            a: self,
            model,
            user_type,
        };
        w.recursive_branch_ok(t, r, rw)
    }
}

/// Weights of branches for one user type: 0 (cannot reach it), 1 (one read
/// on the same object), 2 (more: another object, or a recursion).
struct Weigher<'a> {
    a: &'a Analysis,
    model: &'a AuthorizationModel,
    user_type: &'a str,
}

impl Weigher<'_> {
    fn reaches(&self, t: &str, r: &str) -> bool {
        self.a
            .idx(t, r)
            .is_some_and(|i| self.a.terminals[i].contains(self.user_type))
    }

    fn weight(&self, t: &str, r: &str, rw: &Userset, depth: u32) -> u8 {
        if depth > 64 {
            return 2;
        }
        match rw {
            Userset::This(_) => direct(self.model, t, r)
                .iter()
                .map(|d| self.direct_weight(d))
                .max()
                .unwrap_or(0),
            Userset::Computed(or) => {
                let Some(j) = self.a.idx(t, &or.relation) else {
                    return 0;
                };
                if !self.reaches(t, &or.relation) {
                    return 0;
                }
                if self.a.reach[j].contains(j) {
                    return 2;
                }
                match self.model.rewrite(t, &or.relation) {
                    Some(rw2) => self.weight(t, &or.relation, rw2, depth + 1),
                    None => 0,
                }
            }
            Userset::TupleToUserset(ttu) => {
                if tupleset_types(self.model, t, &ttu.tupleset.relation)
                    .any(|x| self.reaches(x, &ttu.computed_userset.relation))
                {
                    2
                } else {
                    0
                }
            }
            Userset::Union(u) => u
                .child
                .iter()
                .map(|c| self.weight(t, r, c, depth + 1))
                .max()
                .unwrap_or(0),
            Userset::Intersection(u) => {
                let ws: Vec<u8> = u
                    .child
                    .iter()
                    .map(|c| self.weight(t, r, c, depth + 1))
                    .collect();
                if ws.contains(&0) {
                    0
                } else {
                    ws.into_iter().max().unwrap_or(0)
                }
            }
            Userset::Difference(d) => match self.weight(t, r, &d.base, depth + 1) {
                0 => 0,
                b => b.max(self.weight(t, r, &d.subtract, depth + 1)),
            },
        }
    }

    fn direct_weight(&self, d: &RelationReference) -> u8 {
        match &d.relation {
            None if d.type_name == self.user_type => 1,
            None => 0,
            Some(ur) if self.reaches(&d.type_name, ur) => 2,
            Some(_) => 0,
        }
    }

    /// The branch holding the self reference may go through unions only;
    /// every other branch must weigh at most 1.
    fn recursive_branch_ok(&self, t: &str, r: &str, rw: &Userset) -> bool {
        match rw {
            Userset::This(_) => direct(self.model, t, r).iter().all(|d| {
                (d.type_name == t && d.relation.as_deref() == Some(r)) || self.direct_weight(d) <= 1
            }),
            Userset::TupleToUserset(ttu) if ttu.computed_userset.relation == r => {
                tupleset_types(self.model, t, &ttu.tupleset.relation)
                    .all(|x| x == t || !self.reaches(x, r))
            }
            Userset::Union(u) => u.child.iter().all(|c| {
                if holds_self(self.model, t, r, c) {
                    self.recursive_branch_ok(t, r, c)
                } else {
                    self.weight(t, r, c, 0) <= 1
                }
            }),
            _ => false,
        }
    }
}

/// Does this branch hold the relation's reference to itself?
fn holds_self(model: &AuthorizationModel, t: &str, r: &str, rw: &Userset) -> bool {
    let mut found = false;
    edges(model, t, r, rw, &mut |e| match e {
        Edge::Direct(d) => found |= d.type_name == t && d.relation.as_deref() == Some(r),
        Edge::Ttu { tupleset, computed } => {
            found |= computed == r && tupleset_types(model, t, tupleset).any(|x| x == t)
        }
        Edge::Computed(_) => {}
    });
    found
}

fn direct<'m>(model: &'m AuthorizationModel, t: &str, r: &str) -> &'m [RelationReference] {
    model.type_def(t).map(|d| d.direct_types(r)).unwrap_or(&[])
}

/// The types a tupleset relation may point at (plain types only).
fn tupleset_types<'m>(
    model: &'m AuthorizationModel,
    t: &str,
    tupleset: &str,
) -> impl Iterator<Item = &'m str> + 'm {
    direct(model, t, tupleset)
        .iter()
        .filter(|d| d.relation.is_none() && !d.is_wildcard())
        .map(|d| d.type_name.as_str())
}

/// Every edge of a rewrite (its direct types, computed relations and
/// tuple-to-usersets).
fn edges<'m>(
    model: &'m AuthorizationModel,
    t: &str,
    r: &str,
    rw: &'m Userset,
    f: &mut dyn FnMut(Edge<'m>),
) {
    match rw {
        Userset::This(_) => {
            for d in direct(model, t, r) {
                f(Edge::Direct(d));
            }
        }
        Userset::Computed(or) => f(Edge::Computed(&or.relation)),
        Userset::TupleToUserset(ttu) => f(Edge::Ttu {
            tupleset: &ttu.tupleset.relation,
            computed: &ttu.computed_userset.relation,
        }),
        Userset::Union(u) | Userset::Intersection(u) => {
            for c in &u.child {
                edges(model, t, r, c, f);
            }
        }
        Userset::Difference(d) => {
            edges(model, t, r, &d.base, f);
            edges(model, t, r, &d.subtract, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::dsl;

    /// Does OpenFGA search `group#member` for `user`s by reachability?
    fn searched(types: &str) -> bool {
        let m = dsl::parse(&format!(
            "model\n  schema 1.1\ntype user\ntype employee\n{types}"
        ))
        .expect("model");
        m.recursion()
            .reachability_search(&m, "group", "member", "user")
    }

    #[test]
    fn which_recursions_are_reachability_searches() {
        let group = |def: &str| format!("type group\n  relations\n{def}");
        assert!(searched(&group(
            "    define member: [user, group#member]\n"
        )));
        assert!(searched(&group(
            "    define owner: [user]\n    define member: [user, user:*, group#member] or owner\n"
        )));
        assert!(searched(&group(
            "    define parent: [group]\n    define member: [user, user:*] or member from parent\n"
        )));
        // Something else in it takes more than one read.
        assert!(!searched(&group(
            "    define owner: [user, group#member]\n    define member: [user, group#member] or owner\n"
        )));
        assert!(!searched(&format!(
            "type team\n  relations\n    define member: [user]\n{}",
            group("    define parent: [group, team]\n    define member: [user] or member from parent\n")
        )));
        // Recursing through two branches, or through an exclusion.
        assert!(!searched(&group(
            "    define parent: [group]\n    define member: [user, group#member] or member from parent\n"
        )));
        assert!(!searched(&group(
            "    define banned: [user]\n    define member: [user, group#member] but not banned\n"
        )));
        // An exclusion on a cycle anywhere in the model: no weighted graph.
        assert!(!searched(&format!(
            "{}type org\n  relations\n    define parent: [org]\n    define banned: [user]\n    define member: ([user] or member from parent) but not banned\n",
            group("    define member: [user, group#member]\n")
        )));
    }

    #[test]
    fn which_user_types_reach_a_relation() {
        let m = dsl::parse("model\n  schema 1.1\ntype user\ntype employee\ntype group\n  relations\n    define member: [user, group#member]\ntype doc\n  relations\n    define viewer: [group#member, employee:*]\n")
            .expect("model");
        let a = m.recursion();
        assert!(a.type_reaches("doc", "viewer", "user"));
        assert!(a.type_reaches("doc", "viewer", "employee"));
        assert!(!a.type_reaches("group", "member", "employee"));
        assert!(a.userset_reaches("doc", "viewer", "group", "member"));
        assert!(!a.userset_reaches("group", "member", "doc", "viewer"));
        assert!(!a.reachability_search(&m, "group", "member", "employee"));
    }
}
