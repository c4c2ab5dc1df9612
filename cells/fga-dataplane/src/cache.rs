//! In-memory caches in front of the store.
//!
//! - [`UsersCache`]: `object#relation -> users`, read-through, shared by the
//!   readers of a process. Correct only while the process is the database's
//!   only writer: a write bumps the generation and drops the keys it
//!   touched; a read fills the cache only if no write happened while it
//!   queried, so a stale list is never cached. Lookups do not allocate.
//! - [`ModelCache`]: parsed authorization models by id (models never change,
//!   so this is always safe), and, for a single-writer process, which stores
//!   exist and each store's latest model.

use crate::engine::{TupleKey, Users};
use crate::model::AuthorizationModel;
use hashbrown::{Equivalent, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `(object, relation)`, borrowed: looks up an owned key without allocating.
/// Hashes exactly like `(String, String)`.
#[derive(Hash)]
struct KeyRef<'a>(&'a str, &'a str);

impl Equivalent<(String, String)> for KeyRef<'_> {
    fn equivalent(&self, k: &(String, String)) -> bool {
        self.0 == k.0 && self.1 == k.1
    }
}

type PerStore = HashMap<(String, String), Users>;

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

pub struct UsersCache {
    stores: RwLock<HashMap<String, PerStore>>,
    entries: AtomicU64,
    generation: AtomicU64,
    cap: u64,
}

impl UsersCache {
    /// A cache of at most `cap` lists (when full, about a quarter is evicted).
    pub fn new(cap: usize) -> UsersCache {
        UsersCache {
            stores: RwLock::new(HashMap::new()),
            entries: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            cap: cap.max(1) as u64,
        }
    }

    /// The generation to pass to [`UsersCache::put`] after a query.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn get(&self, store: &str, object: &str, relation: &str) -> Option<Users> {
        read(&self.stores)
            .get(store)?
            .get(&KeyRef(object, relation))
            .cloned()
    }

    /// Remember a list read at `generation`, unless a write happened since.
    pub fn put(&self, generation: u64, store: &str, object: &str, relation: &str, users: Users) {
        let mut m = write(&self.stores);
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if self.entries.load(Ordering::Relaxed) >= self.cap {
            let mut kept = 0u64;
            for per in m.values_mut() {
                let mut i = 0u32;
                per.retain(|_, _| {
                    i = i.wrapping_add(1);
                    !i.is_multiple_of(4)
                });
                kept += per.len() as u64;
            }
            self.entries.store(kept, Ordering::Relaxed);
        }
        let per = m.entry_ref(store).or_default();
        if per
            .insert((object.to_string(), relation.to_string()), users)
            .is_none()
        {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A write to these keys committed: drop them, and refuse fills of reads
    /// that started before.
    pub fn invalidate<'a>(&self, store: &str, keys: impl Iterator<Item = &'a TupleKey>) {
        let mut m = write(&self.stores);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(per) = m.get_mut(store) {
            for t in keys {
                if per.remove(&KeyRef(&t.object, &t.relation)).is_some() {
                    self.entries.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Forget one store entirely (it was deleted).
    pub fn drop_store(&self, store: &str) {
        let mut m = write(&self.stores);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(per) = m.remove(store) {
            self.entries.fetch_sub(per.len() as u64, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn stale_fills_are_refused_and_writes_drop_keys() {
        let c = UsersCache::new(100);
        let g = c.generation();
        // A write commits while a read is in flight: its result is not kept.
        c.invalidate("s", [TupleKey::new("doc:1", "viewer", "user:a")].iter());
        c.put(g, "s", "doc:1", "viewer", Arc::new(vec![]));
        assert!(c.get("s", "doc:1", "viewer").is_none());
        let g = c.generation();
        c.put(g, "s", "doc:1", "viewer", Arc::new(vec!["user:a".into()]));
        assert_eq!(c.get("s", "doc:1", "viewer").map(|v| v.len()), Some(1));
        assert!(c.get("other", "doc:1", "viewer").is_none());
        c.invalidate("s", [TupleKey::new("doc:1", "viewer", "user:b")].iter());
        assert!(c.get("s", "doc:1", "viewer").is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_cache_evicts_part_and_keeps_counting() {
        let c = UsersCache::new(8);
        for i in 0..20 {
            let g = c.generation();
            c.put(g, "s", &format!("doc:{i}"), "viewer", Arc::new(vec![]));
            assert!(c.len() <= 8, "{}", c.len());
        }
        assert!(c.get("s", "doc:19", "viewer").is_some());
        c.drop_store("s");
        assert!(c.is_empty());
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
