//! In-memory caches in front of the store.
//!
//! - [`TupleCache`]: every tuple of an object (`object -> relation ->
//!   users`), read-through, shared by the readers of a process; an object is
//!   cached whole, so a relation it lacks is a hit too. Correct only while
//!   the process is the database's only writer: a write bumps the generation
//!   and drops the objects it touched; a read fills the cache only if no
//!   write happened while it queried, so a stale object is never cached.
//!   Its size is counted in tuples.
//! - [`ModelCache`]: parsed authorization models by id (models never change,
//!   so this is always safe), and, for a single-writer process, which stores
//!   exist and each store's latest model.

use crate::engine::{TupleKey, Users};
use crate::model::AuthorizationModel;
use hashbrown::{Equivalent, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `(a, b)`, borrowed: looks up an owned `(String, String)` key without
/// allocating (hashes exactly like it).
#[derive(Hash)]
struct KeyRef<'a>(&'a str, &'a str);

impl Equivalent<(String, String)> for KeyRef<'_> {
    fn equivalent(&self, k: &(String, String)) -> bool {
        self.0 == k.0 && self.1 == k.1
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// All tuples of one object: per relation, its users, sorted byte-wise.
#[derive(Debug, Default)]
pub struct ObjectTuples {
    rels: Vec<(String, Users)>,
}

impl ObjectTuples {
    /// From `(relation, user)` rows in any order.
    pub fn from_rows(mut rows: Vec<(String, String)>) -> ObjectTuples {
        rows.sort_unstable();
        let mut rels: Vec<(String, Vec<String>)> = Vec::new();
        for (r, u) in rows {
            match rels.last_mut() {
                Some((last, users)) if *last == r => users.push(u),
                _ => rels.push((r, vec![u])),
            }
        }
        ObjectTuples {
            rels: rels.into_iter().map(|(r, u)| (r, Arc::new(u))).collect(),
        }
    }

    fn find(&self, relation: &str) -> Option<&Users> {
        self.rels
            .iter()
            .find(|(r, _)| r == relation)
            .map(|(_, u)| u)
    }

    /// The users of `relation` (empty when none).
    pub fn users(&self, relation: &str) -> Users {
        self.find(relation).cloned().unwrap_or_default()
    }

    /// Is there a tuple `relation@user`?
    pub fn contains(&self, relation: &str, user: &str) -> bool {
        self.find(relation)
            .is_some_and(|u| u.binary_search_by(|x| x.as_str().cmp(user)).is_ok())
    }

    /// How many tuples (the cache's unit of size).
    pub fn len(&self) -> usize {
        self.rels.iter().map(|(_, u)| u.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.rels.is_empty()
    }
}

pub struct TupleCache {
    stores: RwLock<HashMap<String, HashMap<String, Arc<ObjectTuples>>>>,
    tuples: AtomicU64,
    generation: AtomicU64,
    cap: u64,
}

/// What an object costs in the cache: its tuples, and one for the entry.
fn cost(o: &ObjectTuples) -> u64 {
    o.len() as u64 + 1
}

impl TupleCache {
    /// A cache of about `cap` tuples (when full, about a quarter of the
    /// objects are evicted).
    pub fn new(cap: usize) -> TupleCache {
        TupleCache {
            stores: RwLock::new(HashMap::new()),
            tuples: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            cap: cap.max(1) as u64,
        }
    }

    /// The generation to pass to [`TupleCache::put`] after a query.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn get(&self, store: &str, object: &str) -> Option<Arc<ObjectTuples>> {
        read(&self.stores).get(store)?.get(object).cloned()
    }

    /// Is there room for `tuples` more without evicting?
    pub fn has_room(&self, tuples: usize) -> bool {
        self.tuples.load(Ordering::Relaxed) + tuples as u64 <= self.cap
    }

    /// Remember objects read at `generation`, unless a write happened since.
    /// Returns whether they were kept.
    pub fn put_many(
        &self,
        generation: u64,
        store: &str,
        objects: impl IntoIterator<Item = (String, Arc<ObjectTuples>)>,
    ) -> bool {
        let mut m = write(&self.stores);
        if self.generation.load(Ordering::SeqCst) != generation {
            return false;
        }
        for (object, tuples) in objects {
            if self.tuples.load(Ordering::Relaxed) + cost(&tuples) > self.cap {
                let mut kept = 0u64;
                for per in m.values_mut() {
                    let mut i = 0u32;
                    per.retain(|_, o| {
                        i = i.wrapping_add(1);
                        let keep = !i.is_multiple_of(4);
                        if keep {
                            kept += cost(o);
                        }
                        keep
                    });
                }
                self.tuples.store(kept, Ordering::Relaxed);
            }
            let add = cost(&tuples);
            let per = m.entry_ref(store).or_default();
            let old = per.insert(object, tuples);
            self.tuples.fetch_add(add, Ordering::Relaxed);
            if let Some(old) = old {
                self.tuples.fetch_sub(cost(&old), Ordering::Relaxed);
            }
        }
        true
    }

    pub fn put(&self, generation: u64, store: &str, object: &str, tuples: Arc<ObjectTuples>) {
        self.put_many(generation, store, [(object.to_string(), tuples)]);
    }

    /// A write to these tuples committed: drop their objects, and refuse
    /// fills of reads that started before.
    pub fn invalidate<'a>(&self, store: &str, keys: impl Iterator<Item = &'a TupleKey>) {
        let mut m = write(&self.stores);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(per) = m.get_mut(store) {
            for t in keys {
                if let Some(old) = per.remove(t.object.as_str()) {
                    self.tuples.fetch_sub(cost(&old), Ordering::Relaxed);
                }
            }
        }
    }

    /// Forget one store entirely (it was deleted).
    pub fn drop_store(&self, store: &str) {
        let mut m = write(&self.stores);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(per) = m.remove(store) {
            let n: u64 = per.values().map(|o| cost(o)).sum();
            self.tuples.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Tuples held (plus one per object).
    pub fn size(&self) -> u64 {
        self.tuples.load(Ordering::Relaxed)
    }
}

/// Models and store metadata. `single_writer` enables the parts that another
/// process could change behind our back (store existence, latest model).
pub struct ModelCache {
    single_writer: bool,
    models: RwLock<HashMap<(String, String), Arc<AuthorizationModel>>>,
    latest: RwLock<HashMap<String, Arc<AuthorizationModel>>>,
    live_stores: RwLock<hashbrown::HashSet<String>>,
}

impl ModelCache {
    pub fn new(single_writer: bool) -> ModelCache {
        ModelCache {
            single_writer,
            models: RwLock::new(HashMap::new()),
            latest: RwLock::new(HashMap::new()),
            live_stores: RwLock::new(hashbrown::HashSet::new()),
        }
    }

    pub fn model(&self, store: &str, id: &str) -> Option<Arc<AuthorizationModel>> {
        read(&self.models).get(&KeyRef(store, id)).cloned()
    }

    pub fn put_model(&self, store: &str, m: Arc<AuthorizationModel>) {
        let mut w = write(&self.models);
        if w.len() >= 10_000 {
            w.clear();
        }
        w.insert((store.to_string(), m.id.clone()), m);
    }

    pub fn latest(&self, store: &str) -> Option<Arc<AuthorizationModel>> {
        if !self.single_writer {
            return None;
        }
        read(&self.latest).get(store).cloned()
    }

    /// Record `m` as the store's latest model. `written` says it was just
    /// written by this process (so it is newer than anything cached).
    pub fn put_latest(&self, store: &str, m: Arc<AuthorizationModel>) {
        if self.single_writer {
            write(&self.latest).insert(store.to_string(), m);
        }
    }

    pub fn store_live(&self, store: &str) -> bool {
        self.single_writer && read(&self.live_stores).contains(store)
    }

    pub fn put_store_live(&self, store: &str) {
        if self.single_writer {
            write(&self.live_stores).insert(store.to_string());
        }
    }

    pub fn forget_store(&self, store: &str) {
        write(&self.live_stores).remove(store);
        write(&self.latest).remove(store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(rows: &[(&str, &str)]) -> Arc<ObjectTuples> {
        Arc::new(ObjectTuples::from_rows(
            rows.iter()
                .map(|(r, u)| (r.to_string(), u.to_string()))
                .collect(),
        ))
    }

    #[test]
    fn object_tuples_group_and_sort() {
        let o = obj(&[
            ("viewer", "user:b"),
            ("owner", "user:z"),
            ("viewer", "user:a"),
        ]);
        assert_eq!(o.users("viewer").as_slice(), ["user:a", "user:b"]);
        assert!(o.contains("viewer", "user:b") && !o.contains("viewer", "user:z"));
        assert!(o.users("editor").is_empty());
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn stale_fills_are_refused_and_writes_drop_objects() {
        let c = TupleCache::new(100);
        let g = c.generation();
        // A write commits while a read is in flight: its result is not kept.
        c.invalidate("s", [TupleKey::new("doc:1", "viewer", "user:a")].iter());
        c.put(g, "s", "doc:1", obj(&[]));
        assert!(c.get("s", "doc:1").is_none());
        let g = c.generation();
        c.put(g, "s", "doc:1", obj(&[("viewer", "user:a")]));
        assert!(c
            .get("s", "doc:1")
            .is_some_and(|o| o.contains("viewer", "user:a")));
        assert!(c.get("other", "doc:1").is_none());
        assert_eq!(c.size(), 2);
        c.invalidate("s", [TupleKey::new("doc:1", "editor", "user:b")].iter());
        assert!(c.get("s", "doc:1").is_none());
        assert_eq!(c.size(), 0);
    }

    #[test]
    fn a_full_cache_evicts_part_and_keeps_counting() {
        let c = TupleCache::new(16);
        for i in 0..40 {
            let g = c.generation();
            c.put(g, "s", &format!("doc:{i}"), obj(&[("viewer", "user:a")]));
            assert!(c.size() <= 16, "{}", c.size());
        }
        assert!(c.get("s", "doc:39").is_some());
        c.drop_store("s");
        assert_eq!(c.size(), 0);
    }

    #[test]
    fn shared_databases_cache_only_models() {
        let mut m = crate::dsl::parse("model\n  schema 1.1\ntype user\n").expect("dsl");
        m.id = "M1".into();
        let m = Arc::new(m);
        let shared = ModelCache::new(false);
        shared.put_model("s", m.clone());
        shared.put_latest("s", m.clone());
        shared.put_store_live("s");
        assert!(shared.model("s", "M1").is_some());
        assert!(shared.latest("s").is_none());
        assert!(!shared.store_live("s"));
        let own = ModelCache::new(true);
        own.put_latest("s", m);
        own.put_store_live("s");
        assert!(own.latest("s").is_some() && own.store_live("s"));
        own.forget_store("s");
        assert!(own.latest("s").is_none() && !own.store_live("s"));
    }
}
