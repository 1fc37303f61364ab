//! How an envelope is authenticated: its author's BIP340 signature over the envelope alone, or
//! over the root of a Merkle tree of up to [`MAX_BATCH_LEAVES`] envelopes the author made at
//! once, with the path from the envelope to that root (ADR 0016).
//!
//! Either form is evidence a third party can check with the author's key alone. A node that
//! sends many envelopes at once (many sessions in flight) signs once per batch, and a receiver
//! that gets several envelopes of one batch checks that signature once (it remembers the roots
//! it verified).

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use secp256k1::{Keypair, XOnlyPublicKey, schnorr};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ProtoError;
use crate::hash::{Tag, tagged};
use crate::types::byte_array;

/// The deepest Merkle path an envelope's authentication may carry.
pub const MAX_AUTH_DEPTH: usize = 6;

/// The most envelopes one batch signature covers (`2^MAX_AUTH_DEPTH`).
pub const MAX_BATCH_LEAVES: usize = 1 << MAX_AUTH_DEPTH;

/// The most bytes a batch path adds to an envelope over a direct signature.
pub const MAX_AUTH_PATH_BYTES: usize = MAX_AUTH_DEPTH * 32;

/// Batch roots verified in this process and remembered, oldest dropped first.
const VERIFIED_ROOTS: usize = 4096;

/// An envelope's authentication as it travels and is stored.
///
/// Empty `path`: `signature` is the author's BIP340 signature over the envelope's signing hash.
/// Otherwise it signs `TH("musig2-p2p/batch-root", root)`, where `root` is what folding the
/// signing hash up `path` gives: at depth `d` the node is
/// `TH("musig2-p2p/batch-node", left || right)`, and bit `d` of `index` says whether the
/// running hash is the right (1) or the left (0) child. The signature comes last on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Auth {
    path: Vec<[u8; 32]>,
    index: u8,
    #[serde(with = "byte_array")]
    signature: [u8; 64],
}

impl Auth {
    /// A signature over the envelope alone.
    pub fn direct(signature: [u8; 64]) -> Auth {
        Auth {
            path: Vec::new(),
            index: 0,
            signature,
        }
    }

    /// A batch signature with the path from the envelope to the signed root (unchecked: a
    /// receiver checks it in [`crate::SignedEnvelope::verify`]).
    pub fn batch(path: Vec<[u8; 32]>, index: u8, signature: [u8; 64]) -> Auth {
        Auth {
            path,
            index,
            signature,
        }
    }

    /// Whether this is a signature over the envelope alone.
    pub fn is_direct(&self) -> bool {
        self.path.is_empty()
    }

    /// The BIP340 signature (over the envelope, or over its batch's root).
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The sibling hashes from the envelope up to the root (empty when direct).
    pub fn path(&self) -> &[[u8; 32]] {
        &self.path
    }

    /// The envelope's position in its batch.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Structural rules, checked when decoding: at most [`MAX_AUTH_DEPTH`] levels, and an
    /// index that fits the path (so every position has exactly one encoding).
    pub(crate) fn check_shape(&self) -> Result<(), ProtoError> {
        if self.path.len() > MAX_AUTH_DEPTH {
            return Err(ProtoError::LimitExceeded {
                what: "batch authentication path",
                actual: self.path.len(),
                max: MAX_AUTH_DEPTH,
            });
        }
        if usize::from(self.index) >> self.path.len() != 0 {
            return Err(ProtoError::OutOfRange {
                field: "batch index",
                reason: "must be below 2^(path length)",
            });
        }
        Ok(())
    }

    /// The 32 bytes the signature signs, for an envelope whose signing hash is `leaf`.
    fn signed_message(&self, leaf: [u8; 32]) -> [u8; 32] {
        if self.is_direct() {
            return leaf;
        }
        let mut node = leaf;
        for (depth, sibling) in self.path.iter().enumerate() {
            node = if (self.index >> depth) & 1 == 1 {
                inner(sibling, &node)
            } else {
                inner(&node, sibling)
            };
        }
        tagged(Tag::BatchRoot, &node)
    }

    /// Whether this authenticates the envelope whose signing hash is `leaf` under `key`.
    /// A batch root verified before in this scope costs no signature check.
    pub(crate) fn verifies(&self, key: &XOnlyPublicKey, leaf: [u8; 32]) -> bool {
        if self.check_shape().is_err() {
            return false;
        }
        let message = self.signed_message(leaf);
        let signature = schnorr::Signature::from_byte_array(self.signature);
        if self.is_direct() {
            SIGNATURE_CHECKS.fetch_add(1, Ordering::Relaxed);
            return key.verify(&message, &signature).is_ok();
        }
        let id = root_id(SCOPE.with(Cell::get), key, &message, &self.signature);
        if verified_roots().contains(&id) {
            CACHED_ROOTS.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        SIGNATURE_CHECKS.fetch_add(1, Ordering::Relaxed);
        let ok = key.verify(&message, &signature).is_ok();
        if ok {
            verified_roots().insert(id);
        }
        ok
    }
}

static SIGNATURE_CHECKS: AtomicU64 = AtomicU64::new(0);
static CACHED_ROOTS: AtomicU64 = AtomicU64::new(0);
static SIGNATURES_MADE: AtomicU64 = AtomicU64::new(0);

/// BIP340 signing of an envelope, a batch root or an announcement, counted for
/// [`auth_counts`].
pub(crate) fn sign_counted(message: &[u8; 32], keypair: &Keypair, aux_rand: &[u8; 32]) -> [u8; 64] {
    SIGNATURES_MADE.fetch_add(1, Ordering::Relaxed);
    musig2_core::bip340_sign(message, keypair, aux_rand).to_byte_array()
}

/// What this process's authentication has cost since it started (signatures checked and made),
/// over every node in it: for benchmarks and metrics (a count does not depend on how busy the
/// machine is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthCounts {
    /// BIP340 signature checks of envelopes and announcements.
    pub signature_checks: u64,
    /// Batch roots found verified before (in the same scope): hashes only, no signature check.
    pub cached_roots: u64,
    /// BIP340 signatures made: envelopes and announcements signed alone, and batch roots.
    pub signatures_made: u64,
}

/// The counts so far (see [`AuthCounts`]).
pub fn auth_counts() -> AuthCounts {
    AuthCounts {
        signature_checks: SIGNATURE_CHECKS.load(Ordering::Relaxed),
        cached_roots: CACHED_ROOTS.load(Ordering::Relaxed),
        signatures_made: SIGNATURES_MADE.load(Ordering::Relaxed),
    }
}

fn inner(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(left);
    both[32..].copy_from_slice(right);
    tagged(Tag::BatchNode, &both)
}

/// What a verified root is remembered by: the scope it was verified in (see
/// [`with_verified_roots_scope`]), the key, the signed message and the signature.
fn root_id(scope: u64, key: &XOnlyPublicKey, message: &[u8; 32], signature: &[u8; 64]) -> [u8; 32] {
    let mut engine = Sha256::new();
    engine.update(scope.to_be_bytes());
    engine.update(key.to_byte_array());
    engine.update(message);
    engine.update(signature);
    engine.finalize().into()
}

struct VerifiedRoots {
    ids: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl VerifiedRoots {
    fn contains(&self, id: &[u8; 32]) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: [u8; 32]) {
        if !self.ids.insert(id) {
            return;
        }
        if self.order.len() >= VERIFIED_ROOTS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.order.push_back(id);
    }
}

/// One cache for the process, not one per thread: a node task moves between a multi-thread
/// runtime's workers, and the envelopes of one batch often reach it on different ones. A lock
/// costs nanoseconds; the check it saves, 23 µs.
static ROOTS: std::sync::LazyLock<Mutex<VerifiedRoots>> = std::sync::LazyLock::new(|| {
    Mutex::new(VerifiedRoots {
        ids: HashSet::new(),
        order: VecDeque::new(),
    })
});

fn verified_roots() -> std::sync::MutexGuard<'static, VerifiedRoots> {
    // Nothing panics while holding it; a poisoned cache is still a set of verified roots.
    ROOTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

thread_local! {
    static SCOPE: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` with the process's cache of verified batch roots partitioned to `scope`: a root
/// verified under another scope is checked again. A node runs its task under a scope of its
/// own, so nodes sharing threads (several nodes in one process: tests, benches, a service
/// holding several keys) each check the signatures they receive, as separate processes would,
/// and what one node verified never vouches for a root another one receives. Scopes nest; the
/// previous one is restored when `f` returns or unwinds.
pub fn with_verified_roots_scope<R>(scope: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPE.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCOPE.with(|s| s.replace(scope)));
    f()
}

/// An envelope signed later: by [`seal_batch`] together with the author's other pending
/// envelopes, or on its own the first time its authentication is needed.
pub(crate) struct Pending {
    leaf: [u8; 32],
    keypair: Arc<Keypair>,
    batchable: bool,
    sealed: OnceLock<Auth>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("leaf", &self.leaf)
            .field("batchable", &self.batchable)
            .field("sealed", &self.sealed.get())
            .finish_non_exhaustive()
    }
}

impl Pending {
    pub(crate) fn new(leaf: [u8; 32], keypair: Arc<Keypair>, batchable: bool) -> Pending {
        Pending {
            leaf,
            keypair,
            batchable,
            sealed: OnceLock::new(),
        }
    }

    pub(crate) fn leaf(&self) -> [u8; 32] {
        self.leaf
    }

    /// The key it is (or will be) signed with.
    pub(crate) fn signing_key(&self) -> XOnlyPublicKey {
        self.keypair.x_only_public_key().0
    }

    pub(crate) fn sealed(&self) -> Option<&Auth> {
        self.sealed.get()
    }

    /// The authentication, signing the envelope alone if no batch sealed it yet.
    pub(crate) fn auth(&self) -> &Auth {
        self.sealed
            .get_or_init(|| Auth::direct(sign_counted(&self.leaf, &self.keypair, &rand::random())))
    }
}

/// How a signed object (an envelope or an announcement) holds its authentication: made, or
/// still to be made by a batch seal or on first use. Clones share a pending state, so every copy
/// ends up with the same authentication.
#[derive(Clone, Debug)]
pub(crate) enum AuthState {
    // Shared among clones (held as evidence, persisted, relayed): a batch path is up to six
    // hashes.
    Ready(Arc<Auth>),
    Pending(Arc<Pending>),
}

impl AuthState {
    pub(crate) fn ready(auth: Auth) -> AuthState {
        AuthState::Ready(Arc::new(auth))
    }

    pub(crate) fn pending(leaf: [u8; 32], keypair: Arc<Keypair>, batchable: bool) -> AuthState {
        AuthState::Pending(Arc::new(Pending::new(leaf, keypair, batchable)))
    }

    /// The authentication, signing alone first if still pending.
    pub(crate) fn auth(&self) -> &Auth {
        match self {
            AuthState::Ready(auth) => auth.as_ref(),
            AuthState::Pending(p) => p.auth(),
        }
    }

    /// The authentication if there is one yet.
    pub(crate) fn sealed(&self) -> Option<&Auth> {
        match self {
            AuthState::Ready(auth) => Some(auth.as_ref()),
            AuthState::Pending(p) => p.sealed(),
        }
    }

    /// The pending state still waiting for a signature, if any.
    pub(crate) fn unsealed(&self) -> Option<&Arc<Pending>> {
        match self {
            AuthState::Pending(p) if p.sealed().is_none() => Some(p),
            _ => None,
        }
    }

    /// The key a pending object is (or will be) signed with: made in this process.
    pub(crate) fn made_with(&self) -> Option<XOnlyPublicKey> {
        match self {
            AuthState::Pending(p) => Some(p.signing_key()),
            AuthState::Ready(_) => None,
        }
    }

    /// The signed leaf, when pending (it is recomputed from the content otherwise).
    pub(crate) fn pending_leaf(&self) -> Option<[u8; 32]> {
        match self {
            AuthState::Pending(p) => Some(p.leaf()),
            AuthState::Ready(_) => None,
        }
    }

    /// Two copies of one pending object are equal; a pending object not yet signed equals no
    /// signed one.
    pub(crate) fn same_as(&self, other: &AuthState) -> bool {
        match (self, other) {
            (AuthState::Pending(a), AuthState::Pending(b)) if Arc::ptr_eq(a, b) => true,
            _ => self.sealed() == other.sealed(),
        }
    }
}

/// Signed objects sealed together under one signature per author (ADR 0016, ADR 0017):
/// envelopes and announcements whose authentication is still pending
/// ([`crate::Envelope::sign_batchable`], [`crate::Announcement::sign_batchable`]). Objects
/// already signed are skipped.
#[derive(Default)]
pub struct Batch<'a> {
    pending: Vec<&'a Arc<Pending>>,
}

impl<'a> Batch<'a> {
    /// An empty batch.
    pub fn new() -> Batch<'a> {
        Batch::default()
    }

    /// Adds an envelope (nothing if it is already signed).
    pub fn add_envelope(&mut self, envelope: &'a crate::SignedEnvelope) -> &mut Self {
        if let Some(p) = envelope.auth_state().unsealed() {
            self.pending.push(p);
        }
        self
    }

    /// Adds an announcement (nothing if it is already signed).
    pub fn add_announcement(&mut self, announcement: &'a crate::SignedAnnouncement) -> &mut Self {
        if let Some(p) = announcement.auth_state().unsealed() {
            self.pending.push(p);
        }
        self
    }

    /// Whether nothing in it waits for a signature.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Signs everything added: one BIP340 signature per author and per [`MAX_BATCH_LEAVES`]
    /// objects, each carrying its path to the signed root; an object alone in its group, or
    /// not batchable, is signed alone.
    pub fn seal(self) -> Sealed {
        seal(&self.pending, None)
    }

    /// [`Batch::seal`] with fixed BIP340 auxiliary randomness (reproducible tests and examples;
    /// nodes use fresh randomness).
    pub fn seal_with_aux_rand(self, aux_rand: &[u8; 32]) -> Sealed {
        seal(&self.pending, Some(aux_rand))
    }
}

/// What one [`crate::SignedEnvelope::seal_batch`] signed in batches (envelopes signed alone are
/// not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sealed {
    /// Envelopes signed in batches of two or more.
    pub batched_envelopes: usize,
    /// The signatures over those batches.
    pub batch_signatures: usize,
}

/// Signs every still-unsigned envelope in `pending`: one signature per author and per
/// [`MAX_BATCH_LEAVES`] envelopes, each envelope getting its path to the signed root. An
/// envelope alone in its group, or not batchable, gets a direct signature. Copies of one
/// envelope (clones share their pending state) are signed once.
pub(crate) fn seal(pending: &[&Arc<Pending>], aux_rand: Option<&[u8; 32]>) -> Sealed {
    let mut sealed = Sealed::default();
    let mut seen: HashSet<*const Pending> = HashSet::with_capacity(pending.len());
    let mut groups: Vec<(Arc<Keypair>, Vec<&Arc<Pending>>)> = Vec::new();
    for p in pending {
        if p.sealed.get().is_some() || !seen.insert(Arc::as_ptr(p)) {
            continue;
        }
        if !p.batchable {
            p.auth();
            continue;
        }
        match groups
            .iter_mut()
            .find(|(k, _)| Arc::ptr_eq(k, &p.keypair) || **k == *p.keypair)
        {
            Some((_, members)) => members.push(p),
            None => groups.push((p.keypair.clone(), vec![p])),
        }
    }
    for (keypair, members) in groups {
        for chunk in members.chunks(MAX_BATCH_LEAVES) {
            if let [single] = chunk {
                single.auth();
                continue;
            }
            let leaves: Vec<[u8; 32]> = chunk.iter().map(|p| p.leaf).collect();
            let (root, paths) = tree(&leaves);
            let message = tagged(Tag::BatchRoot, &root);
            let aux = aux_rand.copied().unwrap_or_else(rand::random);
            let signature = sign_counted(&message, &keypair, &aux);
            for (i, (p, path)) in chunk.iter().zip(paths).enumerate() {
                // `i` < MAX_BATCH_LEAVES = 64 fits a u8.
                let index = u8::try_from(i).unwrap_or(u8::MAX);
                let _ = p.sealed.set(Auth::batch(path, index, signature));
            }
            sealed.batched_envelopes += chunk.len();
            sealed.batch_signatures += 1;
        }
    }
    sealed
}

/// The root of a tree over `leaves` (2 to [`MAX_BATCH_LEAVES`]; the last leaf repeated up to the
/// next power of two) and each leaf's path to it.
fn tree(leaves: &[[u8; 32]]) -> ([u8; 32], Vec<Vec<[u8; 32]>>) {
    let width = leaves.len().next_power_of_two();
    let mut level: Vec<[u8; 32]> = (0..width)
        .map(|i| leaves[i.min(leaves.len() - 1)])
        .collect();
    let depth = width.trailing_zeros() as usize;
    let mut paths: Vec<Vec<[u8; 32]>> = (0..leaves.len())
        .map(|_| Vec::with_capacity(depth))
        .collect();
    let mut positions: Vec<usize> = (0..leaves.len()).collect();
    while level.len() > 1 {
        for (path, pos) in paths.iter_mut().zip(positions.iter_mut()) {
            path.push(level[*pos ^ 1]);
            *pos >>= 1;
        }
        // The next level overwrites the front half of this one.
        let half = level.len() / 2;
        for i in 0..half {
            level[i] = inner(&level[2 * i], &level[2 * i + 1]);
        }
        level.truncate(half);
    }
    (level[0], paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(byte: u8) -> Keypair {
        Keypair::from_secret_bytes([byte; 32]).unwrap()
    }

    fn leaf(i: usize) -> [u8; 32] {
        tagged(Tag::Envelope, &i.to_le_bytes())
    }

    fn pendings(n: usize, keypair: &Arc<Keypair>) -> Vec<Arc<Pending>> {
        (0..n)
            .map(|i| Arc::new(Pending::new(leaf(i), keypair.clone(), true)))
            .collect()
    }

    #[test]
    fn every_leaf_of_every_batch_size_verifies_under_its_author_and_no_other_leaf_does() {
        let author = Arc::new(keypair(7));
        let key = author.x_only_public_key().0;
        let other = keypair(8).x_only_public_key().0;
        for n in [2, 3, 4, 5, 7, 8, 31, 64, 65, 130] {
            let batch = pendings(n, &author);
            seal(&batch.iter().collect::<Vec<_>>(), None);
            for (i, p) in batch.iter().enumerate() {
                let auth = p.sealed().expect("sealed");
                auth.check_shape().expect("shape");
                let in_full_chunk = n % MAX_BATCH_LEAVES != 1 || i + 1 < n;
                assert_eq!(auth.is_direct(), !in_full_chunk, "n {n} leaf {i}");
                assert!(auth.verifies(&key, leaf(i)), "n {n} leaf {i}");
                assert!(!auth.verifies(&other, leaf(i)));
                assert!(!auth.verifies(&key, leaf(i + 1000)));
            }
            // One signature per chunk of 64.
            let signatures: HashSet<[u8; 64]> = batch
                .iter()
                .map(|p| *p.sealed().unwrap().signature())
                .collect();
            assert_eq!(signatures.len(), n.div_ceil(MAX_BATCH_LEAVES), "n {n}");
        }
    }

    #[test]
    fn a_tampered_path_index_or_signature_does_not_verify_even_after_the_root_was_cached() {
        let author = Arc::new(keypair(9));
        let key = author.x_only_public_key().0;
        let batch = pendings(5, &author);
        seal(&batch.iter().collect::<Vec<_>>(), None);
        let good = batch[2].sealed().unwrap().clone();
        assert!(good.verifies(&key, leaf(2)));
        let mut path = good.clone();
        path.path[1][0] ^= 1;
        assert!(!path.verifies(&key, leaf(2)));
        let mut index = good.clone();
        index.index ^= 1;
        assert!(!index.verifies(&key, leaf(2)));
        let mut signature = good.clone();
        signature.signature[5] ^= 1;
        assert!(!signature.verifies(&key, leaf(2)));
        // Another leaf's path with this leaf does not verify.
        assert!(!batch[3].sealed().unwrap().verifies(&key, leaf(2)));
    }

    #[test]
    fn shapes_beyond_the_depth_or_with_an_index_past_the_path_are_refused() {
        assert!(
            Auth::batch(vec![[0; 32]; MAX_AUTH_DEPTH], 63, [0; 64])
                .check_shape()
                .is_ok()
        );
        assert!(matches!(
            Auth::batch(vec![[0; 32]; MAX_AUTH_DEPTH + 1], 0, [0; 64]).check_shape(),
            Err(ProtoError::LimitExceeded { .. })
        ));
        assert!(matches!(
            Auth::batch(vec![[0; 32]; 2], 4, [0; 64]).check_shape(),
            Err(ProtoError::OutOfRange { .. })
        ));
        assert!(matches!(
            Auth::batch(Vec::new(), 1, [0; 64]).check_shape(),
            Err(ProtoError::OutOfRange { .. })
        ));
    }

    #[test]
    fn unbatchable_and_lone_envelopes_are_signed_directly_and_copies_once() {
        let author = Arc::new(keypair(3));
        let key = author.x_only_public_key().0;
        let lone = Arc::new(Pending::new(leaf(1), author.clone(), true));
        let unbatchable = Arc::new(Pending::new(leaf(2), author.clone(), false));
        seal(&[&lone, &lone, &unbatchable], None);
        assert!(lone.sealed().unwrap().is_direct());
        assert!(unbatchable.sealed().unwrap().is_direct());
        assert!(lone.sealed().unwrap().verifies(&key, leaf(1)));
        assert!(unbatchable.sealed().unwrap().verifies(&key, leaf(2)));
        // Sealing again changes nothing.
        let before = lone.sealed().unwrap().clone();
        seal(&[&lone], None);
        assert_eq!(lone.sealed().unwrap(), &before);
        // Unsealed, it signs itself alone when first needed.
        let later = Pending::new(leaf(4), author, true);
        assert!(later.auth().is_direct());
        assert!(later.auth().verifies(&key, leaf(4)));
    }

    fn cached(scope: u64, key: &XOnlyPublicKey, auth: &Auth, leaf: [u8; 32]) -> bool {
        let id = root_id(scope, key, &auth.signed_message(leaf), &auth.signature);
        verified_roots().contains(&id)
    }

    /// The key and the two authentications of a sealed two-envelope batch by author `seed`.
    fn sealed_pair(seed: u8) -> (XOnlyPublicKey, Auth, Auth) {
        let author = Arc::new(keypair(seed));
        let batch = pendings(2, &author);
        seal(&batch.iter().collect::<Vec<_>>(), None);
        let sealed = |i: usize| batch[i].sealed().expect("sealed").clone();
        (author.x_only_public_key().0, sealed(0), sealed(1))
    }

    #[test]
    fn the_counts_tell_signature_checks_from_roots_served_by_the_cache() {
        // Other tests run alongside and add to the process-wide counts: hence at least.
        let made_before = auth_counts().signatures_made;
        let (key, auth, sibling) = sealed_pair(13);
        // Two envelopes sealed under one batch signature: it was made and counted.
        assert!(auth_counts().signatures_made > made_before);
        let scope = 0x5c09_e000_0000_0004;
        let before = auth_counts();
        assert!(with_verified_roots_scope(scope, || auth.verifies(&key, leaf(0))));
        let after_check = auth_counts();
        assert!(after_check.signature_checks > before.signature_checks);
        // The sibling's root is the same: a cache hit, counted as such.
        assert!(with_verified_roots_scope(scope, || sibling.verifies(&key, leaf(1))));
        assert!(auth_counts().cached_roots > after_check.cached_roots);
    }

    #[test]
    fn a_root_verified_on_one_thread_is_known_on_another_in_the_same_scope() {
        let (key, auth, sibling) = sealed_pair(12);
        let scope = 0x5c09_e000_0000_0003;
        let checked = std::thread::spawn(move || {
            with_verified_roots_scope(scope, || auth.verifies(&key, leaf(0)))
        });
        assert!(checked.join().expect("thread"));
        assert!(cached(scope, &key, &sibling, leaf(1)));
    }

    #[test]
    fn a_root_verified_in_one_scope_is_checked_again_in_another_and_scopes_restore() {
        let (key, auth, sibling) = sealed_pair(11);
        let (a, b) = (0x5c09_e000_0000_0001, 0x5c09_e000_0000_0002);
        assert!(with_verified_roots_scope(a, || auth.verifies(&key, leaf(0))));
        assert!(cached(a, &key, &auth, leaf(0)));
        assert!(
            !cached(b, &key, &auth, leaf(0)),
            "scope b has not verified it"
        );
        // Nested: b inside a, and a again once b's closure returns.
        with_verified_roots_scope(a, || {
            with_verified_roots_scope(b, || assert!(sibling.verifies(&key, leaf(1))));
            assert_eq!(SCOPE.with(Cell::get), a);
        });
        assert!(cached(b, &key, &auth, leaf(0)));
        // A scope is restored when its closure unwinds too.
        let before = SCOPE.with(Cell::get);
        let unwound = std::panic::catch_unwind(|| with_verified_roots_scope(b, || panic!("boom")));
        assert!(unwound.is_err());
        assert_eq!(SCOPE.with(Cell::get), before);
    }

    #[test]
    fn the_verified_root_cache_is_bounded() {
        let mut roots = VerifiedRoots {
            ids: HashSet::new(),
            order: VecDeque::new(),
        };
        for i in 0..(VERIFIED_ROOTS + 10) {
            roots.insert(leaf(i));
        }
        assert_eq!(roots.ids.len(), VERIFIED_ROOTS);
        assert_eq!(roots.order.len(), VERIFIED_ROOTS);
        assert!(!roots.contains(&leaf(0)));
        assert!(roots.contains(&leaf(VERIFIED_ROOTS + 9)));
    }
}
