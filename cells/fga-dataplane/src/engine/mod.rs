//! Evaluation: Check, ListObjects, ListUsers over a [`TupleReader`].
//!
//! Check walks the relation's rewrite tree. The branches of a union,
//! intersection and exclusion run concurrently and short-circuit (a union
//! answers on the first `true`, an intersection on the first `false`).
//! Cycles on the current path evaluate to `false`; deeper than
//! [`MAX_DEPTH`] is an error, as in OpenFGA. Contextual tuples take part as
//! if they were written.

use crate::model::{AuthorizationModel, Userset};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::Arc;

mod lists;

/// Resolution depth limit (OpenFGA's default).
pub const MAX_DEPTH: u32 = 25;

/// A relationship tuple: `user` has `relation` on `object`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TupleKey {
    pub object: String,
    pub relation: String,
    pub user: String,
}

impl TupleKey {
    pub fn new(object: &str, relation: &str, user: &str) -> TupleKey {
        TupleKey {
            object: object.into(),
            relation: relation.into(),
            user: user.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("resolution too complex: depth limit of {MAX_DEPTH} exceeded")]
    TooComplex,
    #[error("storage error: {0}")]
    Storage(String),
}

/// Reads tuples through the indexes the store keeps. Implementations must
/// not scan a whole store for these calls.
/// The users of one `object#relation`, shared (readers may hand out a cached list).
pub type Users = Arc<Vec<String>>;

pub trait TupleReader: Send + Sync {
    /// The users of `object#relation` (index: store, object, relation).
    fn users_of(&self, object: &str, relation: &str) -> BoxFuture<'_, Result<Users, EvalError>>;
    /// Does the exact tuple exist? (index: store, object, relation, user).
    fn exists<'a>(
        &'a self,
        object: &'a str,
        relation: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<bool, EvalError>>;
    /// Objects of `object_type` that appear in any tuple (for ListObjects
    /// candidates; index: store, object type).
    fn objects_of_type<'a>(
        &'a self,
        object_type: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, EvalError>>;
    /// Users of type `user_type` that appear in any tuple (for ListUsers).
    fn users_of_type<'a>(
        &'a self,
        user_type: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, EvalError>>;
    /// The (object, relation) of every tuple whose user is exactly `user`
    /// (the reverse index: store, user, object type).
    fn by_user<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, EvalError>>;
}

/// Split `type:id` (or `type:id#relation`).
pub fn object_type(s: &str) -> &str {
    s.split_once(':').map_or("", |(t, _)| t)
}

/// A user string's parts: type, id, and optional relation.
pub fn parse_user(u: &str) -> Option<(&str, &str, Option<&str>)> {
    let (t, rest) = u.split_once(':')?;
    match rest.split_once('#') {
        Some((id, rel)) => Some((t, id, Some(rel))),
        None => Some((t, rest, None)),
    }
}

/// Tuples passed along with a request, layered over the store.
pub struct WithContext<'r> {
    pub inner: &'r dyn TupleReader,
    pub extra: Vec<TupleKey>,
}

impl TupleReader for WithContext<'_> {
    fn users_of(&self, object: &str, relation: &str) -> BoxFuture<'_, Result<Users, EvalError>> {
        let (o, r) = (object.to_string(), relation.to_string());
        Box::pin(async move {
            let v = self.inner.users_of(&o, &r).await?;
            let mut extra = self
                .extra
                .iter()
                .filter(|t| t.object == o && t.relation == r)
                .map(|t| t.user.clone())
                .peekable();
            if extra.peek().is_none() {
                return Ok(v);
            }
            let mut v = (*v).clone();
            v.extend(extra);
            Ok(Arc::new(v))
        })
    }
    fn exists<'a>(
        &'a self,
        object: &'a str,
        relation: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<bool, EvalError>> {
        Box::pin(async move {
            if self
                .extra
                .iter()
                .any(|t| t.object == object && t.relation == relation && t.user == user)
            {
                return Ok(true);
            }
            self.inner.exists(object, relation, user).await
        })
    }
    fn objects_of_type<'a>(&'a self, ty: &'a str) -> BoxFuture<'a, Result<Vec<String>, EvalError>> {
        Box::pin(async move {
            let mut v = self.inner.objects_of_type(ty).await?;
            v.extend(
                self.extra
                    .iter()
                    .filter(|t| object_type(&t.object) == ty)
                    .map(|t| t.object.clone()),
            );
            Ok(v)
        })
    }
    fn users_of_type<'a>(&'a self, ty: &'a str) -> BoxFuture<'a, Result<Vec<String>, EvalError>> {
        Box::pin(async move {
            let mut v = self.inner.users_of_type(ty).await?;
            v.extend(
                self.extra
                    .iter()
                    .filter(|t| object_type(&t.user) == ty)
                    .map(|t| t.user.clone()),
            );
            Ok(v)
        })
    }
    fn by_user<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, EvalError>> {
        Box::pin(async move {
            let mut v = self.inner.by_user(user).await?;
            v.extend(
                self.extra
                    .iter()
                    .filter(|t| t.user == user)
                    .map(|t| (t.object.clone(), t.relation.clone())),
            );
            Ok(v)
        })
    }
}

/// One evaluation against one model and reader.
#[derive(Clone)]
pub struct Evaluator<'a> {
    pub model: &'a AuthorizationModel,
    pub reader: &'a dyn TupleReader,
    /// ListUsers mode: on the positive side a concrete user counts only
    /// through tuples that name it, not through a wildcard tuple (the
    /// wildcard is reported as a user of its own).
    pub concrete_only: bool,
    /// ListUsers mode: OpenFGA's ListUsers expands relations without
    /// Check's cycle flag, so a cycle simply contributes nothing.
    pub cycle_is_false: bool,
}

impl<'a> Evaluator<'a> {
    pub fn new(model: &'a AuthorizationModel, reader: &'a dyn TupleReader) -> Evaluator<'a> {
        Evaluator {
            model,
            reader,
            concrete_only: false,
            cycle_is_false: false,
        }
    }
}

/// The (object, relation) pairs from the root of an evaluation to the
/// current node, as a shared list: extending it is one allocation, whatever
/// the depth, and branches share their common prefix.
#[derive(Clone, Default)]
struct Path(Option<Arc<PathNode>>);

struct PathNode {
    object: String,
    relation: String,
    parent: Path,
}

impl Path {
    fn contains(&self, object: &str, relation: &str) -> bool {
        let mut cur = &self.0;
        while let Some(n) = cur {
            if n.object == object && n.relation == relation {
                return true;
            }
            cur = &n.parent.0;
        }
        false
    }
    fn push(&self, object: String, relation: String) -> Path {
        Path(Some(Arc::new(PathNode {
            object,
            relation,
            parent: self.clone(),
        })))
    }
}

/// A sub-result: a cycle on the evaluation path is neither true nor false
/// until an operator decides (a union with another true branch is true;
/// otherwise the cycle makes the answer false, as in OpenFGA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    False,
    True,
    Cycle,
}

type TriResult = Result<Tri, EvalError>;

impl<'a> Evaluator<'a> {
    /// Does `user` have `relation` on `object`?
    pub async fn check(&self, object: &str, relation: &str, user: &str) -> Result<bool, EvalError> {
        let r = self
            .check_at(
                object.to_string(),
                relation.to_string(),
                user.to_string(),
                0,
                Path::default(),
            )
            .await?;
        Ok(r == Tri::True)
    }

    fn check_at(
        &self,
        object: String,
        relation: String,
        user: String,
        depth: u32,
        path: Path,
    ) -> BoxFuture<'_, TriResult> {
        Box::pin(async move {
            if depth >= MAX_DEPTH {
                return Err(EvalError::TooComplex);
            }
            // The user is this very userset.
            if let Some((t, id, Some(r))) = parse_user(&user) {
                if r == relation && object == format!("{t}:{id}") {
                    return Ok(Tri::True);
                }
            }
            let Some(rw) = self.model.rewrite(object_type(&object), &relation) else {
                return Ok(Tri::False);
            };
            let ty = object_type(&object);
            let analysis = self.model.recursion();
            if path.contains(&object, &relation) {
                // A relation OpenFGA resolves as a reachability search (it
                // recurses through itself only, and all else in it is one
                // read: `[user, group#member]`, `[user] or rel from parent`)
                // adds nothing when a node is met again. Any other cycle
                // leaves the answer undecided (false unless another branch
                // decides), as in OpenFGA.
                let plain = self.cycle_is_false
                    || match parse_user(&user) {
                        Some((ut, _, None)) => {
                            analysis.reachability_search(self.model, ty, &relation, ut)
                        }
                        _ => false,
                    };
                return Ok(if plain { Tri::False } else { Tri::Cycle });
            }
            // A user that cannot take part in the relation at all (by the
            // model's types) is not related, whatever the tuples say.
            let reachable = match parse_user(&user) {
                Some((ut, _, None)) => analysis.type_reaches(ty, &relation, ut),
                Some((ut, _, Some(ur))) => analysis.userset_reaches(ty, &relation, ut, ur),
                None => true,
            };
            if !reachable {
                return Ok(Tri::False);
            }
            let path = path.push(object.clone(), relation.clone());
            self.eval(&object, &relation, rw, &user, depth, &path).await
        })
    }

    fn eval<'s>(
        &'s self,
        object: &'s str,
        relation: &'s str,
        rw: &'s Userset,
        user: &'s str,
        depth: u32,
        path: &'s Path,
    ) -> BoxFuture<'s, TriResult> {
        Box::pin(async move {
            match rw {
                Userset::This(_) => self.direct(object, relation, user, depth, path).await,
                Userset::Computed(or) => {
                    self.check_at(
                        object.to_string(),
                        or.relation.clone(),
                        user.to_string(),
                        depth + 1,
                        path.clone(),
                    )
                    .await
                }
                Userset::TupleToUserset(ttu) => {
                    let parents = self.reader.users_of(object, &ttu.tupleset.relation).await?;
                    let cu = &ttu.computed_userset.relation;
                    // Only tuples the current model allows take part.
                    let allowed = self
                        .model
                        .type_def(object_type(object))
                        .map(|t| t.direct_types(&ttu.tupleset.relation))
                        .unwrap_or(&[]);
                    let futs = parents
                        .iter()
                        .filter(|p| {
                            parse_user(p).is_some_and(|(t, id, r)| {
                                r.is_none()
                                    && id != "*"
                                    && allowed.iter().any(|a| {
                                        a.type_name == t && a.relation.is_none() && !a.is_wildcard()
                                    })
                            }) && self.model.rewrite(object_type(p), cu).is_some()
                        })
                        .map(|p| {
                            self.check_at(
                                p.clone(),
                                cu.clone(),
                                user.to_string(),
                                depth + 1,
                                path.clone(),
                            )
                        })
                        .collect();
                    any(futs).await
                }
                Userset::Union(u) => {
                    any(u
                        .child
                        .iter()
                        .map(|c| self.eval(object, relation, c, user, depth, path))
                        .collect())
                    .await
                }
                Userset::Intersection(u) if self.concrete_only => {
                    // Named concretely by one branch, and included (wildcards
                    // count) by all of them.
                    let lenient = Evaluator {
                        concrete_only: false,
                        ..self.clone()
                    };
                    let every = all(u
                        .child
                        .iter()
                        .map(|c| lenient.eval(object, relation, c, user, depth, path))
                        .collect())
                    .await?;
                    if every != Tri::True {
                        return Ok(every);
                    }
                    any(u
                        .child
                        .iter()
                        .map(|c| self.eval(object, relation, c, user, depth, path))
                        .collect())
                    .await
                }
                Userset::Intersection(u) => {
                    all(u
                        .child
                        .iter()
                        .map(|c| self.eval(object, relation, c, user, depth, path))
                        .collect())
                    .await
                }
                Userset::Difference(d) => {
                    let base = self.eval(object, relation, &d.base, user, depth, path);
                    // What is subtracted always counts wildcards.
                    let lenient = Evaluator {
                        concrete_only: false,
                        ..self.clone()
                    };
                    let sub = async move {
                        lenient
                            .eval(object, relation, &d.subtract, user, depth, path)
                            .await
                    };
                    // Both at once; stop early when either decides.
                    let mut set: FuturesUnordered<BoxFuture<'_, (bool, TriResult)>> =
                        FuturesUnordered::new();
                    set.push(Box::pin(async move { (true, base.await) }));
                    set.push(Box::pin(async move { (false, sub.await) }));
                    let mut cycle = false;
                    while let Some((is_base, r)) = set.next().await {
                        match (is_base, r?) {
                            (true, Tri::False) | (false, Tri::True) => return Ok(Tri::False),
                            (_, Tri::Cycle) => cycle = true,
                            _ => {}
                        }
                    }
                    Ok(if cycle { Tri::Cycle } else { Tri::True })
                }
            }
        })
    }

    /// Direct assignment: the exact tuple, a wildcard tuple, or a userset tuple
    /// whose members include the user.
    async fn direct(
        &self,
        object: &str,
        relation: &str,
        user: &str,
        depth: u32,
        path: &Path,
    ) -> TriResult {
        let td = self.model.type_def(object_type(object));
        let allowed = td.map(|t| t.direct_types(relation)).unwrap_or(&[]);
        let Some((ut, uid, urel)) = parse_user(user) else {
            return Ok(Tri::False);
        };
        let exact_allowed = allowed.iter().any(|r| {
            r.type_name == ut && r.relation.as_deref() == urel && (r.is_wildcard() == (uid == "*"))
        });
        if exact_allowed && self.reader.exists(object, relation, user).await? {
            return Ok(Tri::True);
        }
        if !self.concrete_only
            && urel.is_none()
            && uid != "*"
            && allowed.iter().any(|r| r.type_name == ut && r.is_wildcard())
        {
            let wild = format!("{ut}:*");
            if self.reader.exists(object, relation, &wild).await? {
                return Ok(Tri::True);
            }
        }
        // Usersets assigned here: `group:x#member` tuples.
        let usersets: Vec<&crate::model::RelationReference> =
            allowed.iter().filter(|r| r.relation.is_some()).collect();
        if usersets.is_empty() {
            return Ok(Tri::False);
        }
        let users = self.reader.users_of(object, relation).await?;
        let futs = users
            .iter()
            .filter_map(|u| {
                let (t, id, r) = parse_user(u)?;
                let r = r?;
                if !usersets
                    .iter()
                    .any(|a| a.type_name == t && a.relation.as_deref() == Some(r))
                {
                    return None;
                }
                Some(self.check_at(
                    format!("{t}:{id}"),
                    r.to_string(),
                    user.to_string(),
                    depth + 1,
                    path.clone(),
                ))
            })
            .collect();
        any(futs).await
    }
}

/// Evaluate branches concurrently; the first branch equal to `decisive`
/// decides; otherwise a cycle in any branch leaves the result undecided,
/// else the result is `otherwise`. Errors surface only if nothing decided.
async fn combine(futs: Vec<BoxFuture<'_, TriResult>>, decisive: Tri, otherwise: Tri) -> TriResult {
    let mut set: FuturesUnordered<_> = futs.into_iter().collect();
    let (mut err, mut cycle) = (None, false);
    while let Some(r) = set.next().await {
        match r {
            Ok(t) if t == decisive => return Ok(t),
            Ok(Tri::Cycle) => cycle = true,
            Ok(_) => {}
            Err(e) => err = Some(e),
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(if cycle { Tri::Cycle } else { otherwise }),
    }
}

/// Union: true on the first true branch.
async fn any(futs: Vec<BoxFuture<'_, TriResult>>) -> TriResult {
    combine(futs, Tri::True, Tri::False).await
}

/// Intersection: false on the first false branch.
async fn all(futs: Vec<BoxFuture<'_, TriResult>>) -> TriResult {
    combine(futs, Tri::False, Tri::True).await
}
