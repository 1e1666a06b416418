//! Translated resources ready to send: every resource packed once into an
//! `Any`, named, and given a content-hash version, plus a cache that lets
//! proxies of the same "shape" share one translation per snapshot.
//!
//! Versions must not change when the content does not (else every snapshot
//! pushes everything to everyone), but prost encodes `map` fields in
//! `HashMap` order, which differs between two equal messages. So the hash is
//! taken over a canonical walk of the message (fields by number, map
//! entries sorted, `Any` payloads decoded and walked too) using the Envoy
//! descriptor set that `mesh-api` embeds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hasher;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use mesh_api::xds::{ResourceType, pack_any};
use prost::Message;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use tokio::sync::OnceCell;

use super::Generator;
use crate::proxy::{ProxyInfo, ProxyRole};
use crate::snapshot::{Change, Snapshot};
use crate::xds::shape::ShapeKey;
use crate::xds::{Part, ProxyResources, Rebuild, regenerate};

/// Why a proxy's resources could not be produced.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TranslateError {
    /// The generator panicked or its task was cancelled; the proxy keeps
    /// the resources it has.
    #[error("translation for proxy {proxy} at snapshot {version} failed: {reason}")]
    Failed {
        /// Node id of the proxy.
        proxy: String,
        /// Snapshot version.
        version: u64,
        /// What the task reported.
        reason: String,
    },
}

/// One packed resource.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// Resource name (cluster name, listener name, ...).
    pub name: String,
    /// Content hash, hex.
    pub version: String,
    hash: u64,
    /// The resource packed in an `Any`, encoded as a `resources` entry of
    /// a DiscoveryResponse (field tag and length in front), shared by every
    /// response that carries it.
    pub framed: Bytes,
    /// Where the `Any` itself starts in `framed`.
    any_at: usize,
}

impl Item {
    /// The encoded `Any`.
    pub fn encoded_any(&self) -> Bytes {
        self.framed.slice(self.any_at..)
    }

    /// The one shared copy of an item with this name and content: proxies
    /// of different shapes (namespaces, mostly) get identical clusters and
    /// endpoints, which are then held once.
    fn interned(self) -> Arc<Item> {
        static ITEMS: LazyLock<Mutex<Interner>> = LazyLock::new(Mutex::default);
        let mut interner = ITEMS.lock().unwrap_or_else(|e| e.into_inner());
        interner.intern(self)
    }

    fn framed_from(mut self, any: &Any) -> Self {
        let len = any.encoded_len();
        let mut buf = Vec::with_capacity(len + 8);
        // Field 2 of DiscoveryResponse, length-delimited.
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut buf);
        prost::encoding::encode_varint(len as u64, &mut buf);
        self.any_at = buf.len();
        let _ = any.encode(&mut buf);
        self.framed = Bytes::from(buf);
        self
    }
}

/// Live items by content hash (which covers the type) and name.
#[derive(Default)]
struct Interner {
    items: HashMap<(u64, String), Weak<Item>>,
    inserts: usize,
}

impl Interner {
    fn intern(&mut self, item: Item) -> Arc<Item> {
        let key = (item.hash, item.name.clone());
        if let Some(found) = self.items.get(&key).and_then(Weak::upgrade) {
            return found;
        }
        let item = Arc::new(item);
        self.items.insert(key, Arc::downgrade(&item));
        self.inserts += 1;
        // Forget dropped items now and then, in proportion to the work.
        if self.inserts >= self.items.len().max(4096) {
            self.items.retain(|_, w| w.strong_count() > 0);
            self.inserts = 0;
        }
        item
    }
}

/// Every resource of one type, in translation order.
#[derive(Debug, Clone, Default)]
pub(crate) struct TypeResources {
    /// Content hash of the full set, hex.
    pub version: String,
    pub items: Vec<Arc<Item>>,
    index: HashMap<String, usize>,
}

impl TypeResources {
    fn new(items: Vec<Arc<Item>>) -> Self {
        let index = items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.name.clone(), i))
            .collect();
        let version = version_of(items.iter().map(AsRef::as_ref));
        Self {
            version,
            items,
            index,
        }
    }

    /// The resource with this name, if it exists.
    pub fn get(&self, name: &str) -> Option<&Item> {
        self.index
            .get(name)
            .and_then(|&i| self.items.get(i))
            .map(AsRef::as_ref)
    }
}

/// Hex content hash of a sequence of resources (names and contents).
pub(crate) fn version_of<'a>(items: impl Iterator<Item = &'a Item>) -> String {
    let mut h = Fnv::default();
    for it in items {
        h.write_str_field(&it.name);
        h.write_u64(it.hash);
    }
    format!("{:016x}", h.finish())
}

/// One shape's resources for one snapshot.
#[derive(Debug, Default)]
pub(crate) struct Translated {
    by_type: BTreeMap<ResourceType, Arc<TypeResources>>,
    empty: TypeResources,
    /// Positions of the items that differ from an older translation, per
    /// type, remembered because every proxy of the shape asks the same.
    /// The `Weak` keeps the older allocation's address from being reused.
    diffs: Mutex<Vec<Diff>>,
}

/// Changed item positions of one type relative to an older translation.
type Diff = (Weak<Translated>, ResourceType, Arc<[usize]>);

impl Translated {
    /// Packs and hashes generated resources.
    pub fn new(res: ProxyResources) -> Self {
        Self::with_types(BTreeMap::new(), res, &ResourceType::ALL)
    }

    /// `prev` with the `types` replaced by those in `res` (the other types
    /// are shared with `prev`, not copied).
    pub fn rebuilt(prev: &Translated, res: ProxyResources, types: &[ResourceType]) -> Self {
        Self::with_types(prev.by_type.clone(), res, types)
    }

    /// `prev` with the `ty` resources in `res` replacing those of the same
    /// name (in place, keeping the order); everything else is shared.
    pub fn patched(prev: &Translated, ty: ResourceType, res: ProxyResources) -> Self {
        let fresh = Self::with_types(BTreeMap::new(), res, &[ty]);
        let replacements: HashMap<&str, &Arc<Item>> = fresh
            .get(ty)
            .items
            .iter()
            .map(|i| (i.name.as_str(), i))
            .collect();
        let items: Vec<Arc<Item>> = prev
            .get(ty)
            .items
            .iter()
            .map(|old| {
                replacements
                    .get(old.name.as_str())
                    .map_or(old, |new| *new)
                    .clone()
            })
            .collect();
        let mut by_type = prev.by_type.clone();
        by_type.insert(ty, Arc::new(TypeResources::new(items)));
        Self {
            by_type,
            empty: TypeResources::new(Vec::new()),
            diffs: Mutex::default(),
        }
    }

    fn with_types(
        mut by_type: BTreeMap<ResourceType, Arc<TypeResources>>,
        res: ProxyResources,
        types: &[ResourceType],
    ) -> Self {
        let pool = mesh_api::xds::json::pool().ok();
        let pack = |name: String, any: Any| {
            let hash = canonical_hash(pool, &any);
            Item {
                name,
                version: format!("{hash:016x}"),
                hash,
                any_at: 0,
                framed: Bytes::new(),
            }
            .framed_from(&any)
            .interned()
        };
        let ProxyResources {
            mut clusters,
            mut endpoints,
            mut listeners,
            mut routes,
            mut secrets,
        } = res;
        for &ty in types {
            let items: Vec<Arc<Item>> = match ty {
                ResourceType::Cluster => std::mem::take(&mut clusters)
                    .into_iter()
                    .map(|c| pack(c.name.clone(), pack_any(c)))
                    .collect(),
                ResourceType::Endpoint => std::mem::take(&mut endpoints)
                    .into_iter()
                    .map(|c| pack(c.cluster_name.clone(), pack_any(c)))
                    .collect(),
                ResourceType::Listener => std::mem::take(&mut listeners)
                    .into_iter()
                    .map(|l| pack(l.name.clone(), pack_any(l)))
                    .collect(),
                ResourceType::Route => std::mem::take(&mut routes)
                    .into_iter()
                    .map(|r| pack(r.name.clone(), pack_any(r)))
                    .collect(),
                ResourceType::Secret => std::mem::take(&mut secrets)
                    .into_iter()
                    .map(|s| pack(s.name.clone(), pack_any(s)))
                    .collect(),
            };
            by_type.insert(ty, Arc::new(TypeResources::new(items)));
        }
        Self {
            by_type,
            empty: TypeResources::new(Vec::new()),
            diffs: Mutex::default(),
        }
    }

    /// Names of the `ty` resources, in order.
    pub fn names(&self, ty: ResourceType) -> impl Iterator<Item = &str> {
        self.get(ty).items.iter().map(|i| i.name.as_str())
    }

    /// Positions of the `ty` items that are new or differ from `old`'s.
    fn changed_since(self: &Arc<Self>, old: &Arc<Translated>, ty: ResourceType) -> Arc<[usize]> {
        let mut diffs = self.diffs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, d)) = diffs
            .iter()
            .find(|(w, t, _)| *t == ty && std::ptr::eq(w.as_ptr(), Arc::as_ptr(old)))
        {
            return d.clone();
        }
        let (new_set, old_set) = (self.get(ty), old.get(ty));
        let changed: Arc<[usize]> = new_set
            .items
            .iter()
            .enumerate()
            .filter(|(_, it)| old_set.get(&it.name).is_none_or(|o| o.hash != it.hash))
            .map(|(i, _)| i)
            .collect();
        // Proxies move from the previous translation or two; a handful of
        // entries covers them.
        if diffs.len() >= 8 {
            diffs.remove(0);
        }
        diffs.push((Arc::downgrade(old), ty, changed.clone()));
        changed
    }

    /// The resources of one type.
    pub fn get(&self, ty: ResourceType) -> &TypeResources {
        self.by_type.get(&ty).map_or(&self.empty, AsRef::as_ref)
    }
}

// === canonical hashing ===

/// FNV-1a, 64 bit: stable across processes and Rust releases, unlike
/// `DefaultHasher`, so a restarted control plane computes the same versions.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Fnv {
    fn write_str_field(&mut self, s: &str) {
        self.write_u64(s.len() as u64);
        self.write(s.as_bytes());
    }
}

/// Hash of a packed resource that ignores map ordering. Falls back to the
/// encoded bytes when the type is not in the descriptor set.
fn canonical_hash(pool: Option<&DescriptorPool>, any: &Any) -> u64 {
    let mut h = Fnv::default();
    let hashed = pool.is_some_and(|p| hash_any(&mut h, p, &any.type_url, &any.value).is_some());
    if !hashed {
        h = Fnv::default();
        h.write_str_field(&any.type_url);
        h.write(&any.value);
    }
    h.finish()
}

fn hash_any(h: &mut Fnv, pool: &DescriptorPool, type_url: &str, value: &[u8]) -> Option<()> {
    let desc = pool.get_message_by_name(type_url.rsplit('/').next()?)?;
    hash_wire(h, pool, &desc, value)
}

/// Hashes an encoded message by walking its wire format with the
/// descriptor, without decoding it into a dynamic message: fields in the
/// order prost writes them (by number), except that the entries of each map
/// field are hashed separately and combined in sorted order, and `Any`
/// payloads are walked with their own type. `None` on malformed input.
fn hash_wire(
    h: &mut Fnv,
    pool: &DescriptorPool,
    desc: &MessageDescriptor,
    mut buf: &[u8],
) -> Option<()> {
    use prost::encoding::decode_varint;
    let is_any = desc.full_name() == "google.protobuf.Any";
    let mut any_url: Option<&[u8]> = None;
    let mut maps: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    while !buf.is_empty() {
        let key = decode_varint(&mut buf).ok()?;
        let number = u32::try_from(key >> 3).ok()?;
        match key & 7 {
            0 => {
                let v = decode_varint(&mut buf).ok()?;
                h.write_u32(number);
                h.write_u64(v);
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                let (bytes, rest) = buf.split_at_checked(n)?;
                buf = rest;
                h.write_u32(number);
                h.write(bytes);
            }
            2 => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let (data, rest) = buf.split_at_checked(len)?;
                buf = rest;
                if is_any {
                    match number {
                        1 => any_url = Some(data),
                        2 => {
                            let url = std::str::from_utf8(any_url?).ok()?;
                            h.write_u32(number);
                            hash_any(h, pool, url, data)?;
                        }
                        _ => {}
                    }
                    continue;
                }
                let field = desc.get_field(number);
                let message = field.as_ref().and_then(|f| match f.kind() {
                    prost_reflect::Kind::Message(m) => Some(m),
                    _ => None,
                });
                match (field.as_ref(), message) {
                    (Some(f), Some(entry)) if f.is_map() => {
                        let mut eh = Fnv::default();
                        hash_wire(&mut eh, pool, &entry, data)?;
                        maps.entry(number).or_default().push(eh.finish());
                    }
                    (_, Some(m)) => {
                        h.write_u32(number);
                        h.write_u64(len as u64);
                        hash_wire(h, pool, &m, data)?;
                    }
                    _ => {
                        h.write_u32(number);
                        h.write_u64(len as u64);
                        h.write(data);
                    }
                }
            }
            _ => return None,
        }
    }
    for (number, mut entries) in maps {
        entries.sort_unstable();
        h.write_u32(number);
        h.write_u64(entries.len() as u64);
        for e in entries {
            h.write_u64(e);
        }
    }
    Some(())
}

// === per-proxy view ===

/// What one proxy is served at one snapshot: one translation, or the
/// outbound and inbound parts it shares with other proxies.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// Snapshot the resources come from.
    pub snapshot_version: u64,
    parts: Vec<Arc<Translated>>,
}

impl View {
    /// Every resource of `ty`, part by part.
    pub fn items(&self, ty: ResourceType) -> impl Iterator<Item = &Item> {
        self.parts
            .iter()
            .flat_map(move |p| p.get(ty).items.iter().map(AsRef::as_ref))
    }

    /// The resource of `ty` named `name`.
    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&Item> {
        self.parts.iter().find_map(|p| p.get(ty).get(name))
    }

    /// The `ty` items that are new or differ from `old`'s, or `None` when
    /// the two views are not made of the same parts.
    pub fn changed_since(&self, old: &View, ty: ResourceType) -> Option<Vec<&Item>> {
        if old.parts.len() != self.parts.len() {
            return None;
        }
        let mut out = Vec::new();
        for (new, old) in self.parts.iter().zip(&old.parts) {
            if Arc::ptr_eq(new, old) {
                continue;
            }
            let items = &new.get(ty).items;
            out.extend(
                new.changed_since(old, ty)
                    .iter()
                    .filter_map(|&i| items.get(i))
                    .map(AsRef::as_ref),
            );
        }
        Some(out)
    }

    /// Content hash of every resource of `ty`.
    pub fn version(&self, ty: ResourceType) -> String {
        match self.parts.as_slice() {
            [only] => only.get(ty).version.clone(),
            _ => version_of(self.items(ty)),
        }
    }
}

// === shape cache ===

/// How the server translates.
#[derive(Clone)]
pub(crate) enum Translation {
    /// `crate::xds::generate_part`, outbound and inbound parts shared by
    /// proxies of the same shape.
    Split,
    /// A caller-supplied generator (tests), one translation per proxy
    /// identity.
    Custom(Generator),
}

type Slot = Arc<OnceCell<Arc<Translated>>>;

/// Translations of the newest snapshot seen, by shape (see
/// [`crate::xds::shape`]), and those of the snapshot before it: when the
/// newer one changes only endpoints or only VirtualServices, a shape's new
/// translation rebuilds just the affected types and shares the rest.
pub(crate) struct ShapeCache {
    // Held only to find or insert a slot, never across translation.
    inner: Mutex<CacheState>,
    /// Translations running at once: one per core. More only time-slice
    /// the same cores and keep more allocator arenas full of the large
    /// transient messages a translation builds.
    translating: tokio::sync::Semaphore,
}

impl Default for ShapeCache {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            inner: Mutex::default(),
            translating: tokio::sync::Semaphore::new(cores),
        }
    }
}

#[derive(Default)]
struct CacheState {
    version: u64,
    snapshot: Option<Arc<Snapshot>>,
    slots: HashMap<ShapeKey, Slot>,
    /// What changed since `previous` was translated.
    change: Option<Change>,
    previous: HashMap<ShapeKey, Arc<Translated>>,
}

/// Where a part's translation comes from.
struct Plan {
    slot: Option<Slot>,
    previous: Option<(Arc<Translated>, Change)>,
}

impl ShapeCache {
    /// The resources for `proxy` at `snapshot`, translating each part at
    /// most once per shape; concurrent callers of the same shape wait for
    /// one translation.
    pub async fn get(
        &self,
        snapshot: &Arc<Snapshot>,
        proxy: &ProxyInfo,
        translation: &Translation,
    ) -> Result<View, TranslateError> {
        let parts: &[Part] = match translation {
            Translation::Split if proxy.role == ProxyRole::Sidecar => {
                &[Part::Outbound, Part::Inbound]
            }
            _ => &[Part::All],
        };
        let mut out = Vec::with_capacity(parts.len());
        for &part in parts {
            out.push(self.part(snapshot, proxy, translation, part).await?);
        }
        Ok(View {
            snapshot_version: snapshot.version,
            parts: out,
        })
    }

    fn plan(&self, snapshot: &Arc<Snapshot>, key: &ShapeKey) -> Plan {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if snapshot.version > state.version {
            let previous: HashMap<ShapeKey, Arc<Translated>> = state
                .slots
                .drain()
                .filter_map(|(k, slot)| slot.get().cloned().map(|t| (k, t)))
                .collect();
            let change = state
                .snapshot
                .as_ref()
                .map(|old| snapshot.change_since(old));
            *state = CacheState {
                version: snapshot.version,
                snapshot: Some(snapshot.clone()),
                slots: HashMap::new(),
                change,
                previous,
            };
        }
        if snapshot.version != state.version {
            // A connection still working on an older snapshot: don't cache.
            return Plan {
                slot: None,
                previous: None,
            };
        }
        let previous = match &state.change {
            Some(change) if *change != Change::Full => {
                state.previous.get(key).map(|t| (t.clone(), change.clone()))
            }
            _ => None,
        };
        Plan {
            slot: Some(state.slots.entry(key.clone()).or_default().clone()),
            previous,
        }
    }

    async fn part(
        &self,
        snapshot: &Arc<Snapshot>,
        proxy: &ProxyInfo,
        translation: &Translation,
        part: Part,
    ) -> Result<Arc<Translated>, TranslateError> {
        let key = ShapeKey::of(snapshot, proxy, part);
        let plan = self.plan(snapshot, &key);
        let translate = || async {
            let _permit = self.translating.acquire().await.ok();
            let (snap, p, t) = (snapshot.clone(), proxy.clone(), translation.clone());
            let previous = plan.previous.clone();
            tokio::task::spawn_blocking(move || match (&t, previous) {
                (Translation::Split, Some((prev, change))) => {
                    rebuild(&snap, &p, part, &prev, change)
                }
                (Translation::Split, None) => {
                    Arc::new(Translated::new(crate::xds::generate_part(&snap, &p, part)))
                }
                (Translation::Custom(g), _) => Arc::new(Translated::new(g(&snap, &p))),
            })
            .await
            .map_err(|e| TranslateError::Failed {
                proxy: proxy.id.clone(),
                version: snapshot.version,
                reason: e.to_string(),
            })
        };
        match &plan.slot {
            Some(slot) => slot.get_or_try_init(translate).await.cloned(),
            None => translate().await,
        }
    }
}

/// A shape's translation of a snapshot that differs from `prev`'s only by
/// `change`: inbound parts depend on nothing such a change touches; an
/// outbound part or a gateway rebuilds EDS, or listeners and routes.
fn rebuild(
    snapshot: &Snapshot,
    proxy: &ProxyInfo,
    part: Part,
    prev: &Arc<Translated>,
    change: Change,
) -> Arc<Translated> {
    if part == Part::Inbound {
        return prev.clone();
    }
    Arc::new(match change {
        Change::Endpoints(hosts) => {
            // Only the assignments of clusters of changed services
            // (`outbound|port|subset|host`); the others are kept as they are.
            let names: Vec<String> = prev
                .names(ResourceType::Endpoint)
                .filter(|n| n.rsplit('|').next().is_some_and(|h| hosts.contains(h)))
                .map(str::to_string)
                .collect();
            let res = regenerate(
                snapshot,
                proxy,
                part,
                Rebuild::Endpoints { clusters: &names },
            );
            Translated::patched(prev, ResourceType::Endpoint, res)
        }
        Change::Routing => {
            let names: BTreeSet<String> = prev
                .names(ResourceType::Cluster)
                .map(str::to_string)
                .collect();
            let res = regenerate(snapshot, proxy, part, Rebuild::Routing { clusters: &names });
            Translated::rebuilt(prev, res, &[ResourceType::Listener, ResourceType::Route])
        }
        Change::Full => Translated::new(crate::xds::generate_part(snapshot, proxy, part)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};

    fn cluster_with_metadata(keys: &[&str]) -> Cluster {
        let fields = keys
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    PbValue {
                        kind: Some(Kind::StringValue(format!("v-{k}"))),
                    },
                )
            })
            .collect();
        Cluster {
            name: "c".into(),
            metadata: Some(Metadata {
                filter_metadata: [("istio".to_string(), Struct { fields })].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn list_order_counts_but_map_order_does_not_inside_any() {
        use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
        let vhost = |name: &str| VirtualHost {
            name: name.into(),
            typed_per_filter_config: [
                (
                    "b".to_string(),
                    pack_any(cluster_with_metadata(&["x", "y", "z"])),
                ),
                (
                    "a".to_string(),
                    pack_any(cluster_with_metadata(&["z", "y", "x"])),
                ),
            ]
            .into(),
            ..Default::default()
        };
        let hash = |names: &[&str]| {
            let rc = RouteConfiguration {
                name: "80".into(),
                virtual_hosts: names.iter().map(|n| vhost(n)).collect(),
                ..Default::default()
            };
            canonical_hash(mesh_api::xds::json::pool().ok(), &pack_any(rc))
        };
        assert_eq!(
            hash(&["one", "two"]),
            hash(&["one", "two"]),
            "maps in any order"
        );
        assert_ne!(
            hash(&["one", "two"]),
            hash(&["two", "one"]),
            "route order matters"
        );
        assert_ne!(hash(&["one"]), hash(&["one", "two"]));
    }

    #[test]
    fn equal_content_has_equal_versions_whatever_the_map_order() {
        let keys: Vec<String> = (0..32).map(|i| format!("k{i}")).collect();
        let fwd: Vec<&str> = keys.iter().map(String::as_str).collect();
        let rev: Vec<&str> = fwd.iter().rev().copied().collect();
        let a = Translated::new(ProxyResources {
            clusters: vec![cluster_with_metadata(&fwd)],
            ..Default::default()
        });
        let b = Translated::new(ProxyResources {
            clusters: vec![cluster_with_metadata(&rev)],
            ..Default::default()
        });
        assert_eq!(
            a.get(ResourceType::Cluster).version,
            b.get(ResourceType::Cluster).version
        );
        let c = Translated::new(ProxyResources {
            clusters: vec![cluster_with_metadata(&fwd[1..])],
            ..Default::default()
        });
        assert_ne!(
            a.get(ResourceType::Cluster).version,
            c.get(ResourceType::Cluster).version
        );
    }

    /// What the server serves after an incremental rebuild must be what a
    /// full translation of the new snapshot gives, type by type.
    #[test]
    fn incremental_rebuilds_equal_full_translations() {
        const BASE: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {ports: [{name: http, port: 9080}], selector: {app: reviews}}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec: {ports: [{name: http, port: 9080}], selector: {app: ratings}}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-1, namespace: default, labels: {app: reviews, version: v1}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-1, namespace: default, labels: {app: ratings}}
status: {podIP: 10.0.0.3}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}
";
        let pod = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: reviews-2, namespace: default, labels: {app: reviews, version: v2}}\nstatus: {podIP: 10.0.0.2}\n";
        let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v2}}]}]}\n";
        let build = |version: u64, yaml: &str| {
            let loaded = mesh_api::load_str("t.yaml", yaml);
            Snapshot::build(
                version,
                &loaded,
                mesh_api::mesh_config::MeshConfig::default(),
            )
        };
        let proxy = ProxyInfo::sidecar("client", "default", "10.0.0.9".parse().unwrap(), &[]);
        let summary = |t: &Translated| -> Vec<(ResourceType, Vec<(String, u64)>)> {
            ResourceType::ALL
                .iter()
                .map(|&ty| {
                    let items = t.get(ty).items.iter();
                    (ty, items.map(|i| (i.name.clone(), i.hash)).collect())
                })
                .collect()
        };
        let old = build(1, BASE);
        let prev = Arc::new(Translated::new(crate::xds::generate_part(
            &old,
            &proxy,
            Part::Outbound,
        )));
        for (next, expect) in [
            (format!("{BASE}{pod}"), "endpoints"),
            (format!("{BASE}{vs}"), "routing"),
        ] {
            let new = build(2, &next);
            let change = new.change_since(&old);
            assert_ne!(change, Change::Full, "{expect}");
            let rebuilt = rebuild(&new, &proxy, Part::Outbound, &prev, change);
            let full = Translated::new(crate::xds::generate_part(&new, &proxy, Part::Outbound));
            assert_eq!(summary(&rebuilt), summary(&full), "{expect}");
            assert_ne!(
                summary(&rebuilt),
                summary(&prev),
                "{expect}: something changed"
            );
        }
    }
}
