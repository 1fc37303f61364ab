//! The async runtime: a cheap [`Node`] handle and the task that owns the sessions.
//!
//! The task owns the transport's inbound side, the clock, the timers and every
//! [`SessionMachine`]; handles talk to it over a bounded command channel with one-shot replies.
//! Outbound frames are sent from spawned tasks (at most `max_inflight_sends` at once) with
//! retries, exponential backoff and jitter, so a slow peer never stalls the node.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use musig2_proto::{
    Announcement, FinalSignatures, Frame, Limits, MessageToSign, Policy, SessionId,
    SignedAnnouncement, SignedEnvelope, SignerIndex, SignerInfo, Timeouts, VerifiedAnnouncement,
    decode_frame, peek_envelope_header, peek_frame_session,
};
use musig2_transport::{PeerEvent, PeerId, RecordMeta, RecordValidator, Transport, TransportError};
use rand::{Rng, SeedableRng};
use secp256k1::{Keypair, PublicKey, schnorr};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::{Config, DhtAnnounce};
use crate::error::{CoordinatorError, PeerAction, Result};
use crate::event::Event;
use crate::machine::{Output, Phase, SessionHealth, SessionMachine};
use crate::offences::OffenceTable;
use crate::outbound::Outbound;
use crate::pending::{PendingBuffer, PendingLimits};
use crate::session_table::SessionTable;
use crate::set_aside::SetAside;
use crate::stats::DhtPut;
use crate::store::{MemoryStore, Record, SessionStore, StoreUsage, StoredSession};

/// A store shared between the node task and the blocking threads that commit to it.
type SharedStore = Arc<Mutex<Box<dyn SessionStore>>>;

/// Inbound frames taken at most into one group commit.
const MAX_GROUP_FRAMES: usize = 256;

/// Records no frame waits for are committed at the latest this long after the first of them
/// (or with the next commit frames wait for, or once there are `MAX_DEFERRED_RECORDS`).
const DEFERRED_COMMIT_MS: u64 = 20;
const MAX_DEFERRED_RECORDS: usize = 4096;

/// Prefix of the DHT key under which a session's announcement is stored.
pub const DHT_KEY_PREFIX: &[u8] = b"musig2-p2p/session/";

/// The DHT key of a session's announcement.
pub fn dht_key(session: &SessionId) -> Vec<u8> {
    let mut key = DHT_KEY_PREFIX.to_vec();
    key.extend_from_slice(session.as_bytes());
    key
}

/// A DHT record validator that accepts only a correctly signed, unexpired announcement stored
/// under its own session id. Give it to the transport (e.g. `Libp2pConfig::record_validator`)
/// so poisoned records are neither stored nor returned.
pub fn announcement_record_validator(limits: Limits) -> RecordValidator {
    RecordValidator::with_meta(move |key, value| {
        let id = key.strip_prefix(DHT_KEY_PREFIX)?;
        let id = <[u8; 32]>::try_from(id).map(SessionId::from_bytes).ok()?;
        let now = unix_now_ms();
        let verified = SignedAnnouncement::decode(value, &limits)
            .and_then(|a| a.verify_id(&id, now, &limits))
            .ok()?;
        let a = verified.announcement();
        // Each creator key gets a bounded share of the store, for no longer than its
        // announcement is valid.
        let creator = a.signers.get(a.creator.as_usize())?.key;
        Some(RecordMeta {
            owner: creator.serialize().to_vec(),
            valid_until: Some(std::time::UNIX_EPOCH + Duration::from_millis(a.expires_at_ms)),
        })
    })
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Wall-clock milliseconds that advance with tokio's clock, so a paused test clock moves
/// protocol time too.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base_ms: u64,
    start: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            base_ms: unix_now_ms(),
            start: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_ms.saturating_add(elapsed)
    }

    fn instant_at(&self, at_ms: u64) -> Instant {
        self.start + Duration::from_millis(at_ms.saturating_sub(self.base_ms))
    }
}

/// What a caller asks for when creating a session.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// The signer keys, in BIP327 key-aggregation order (sort with `musig2_core::key_sort` if
    /// the order should not matter). This node's key must be one of them.
    pub signers: Vec<PublicKey>,
    /// The peer each signer speaks from, where known (same length as `signers`, or empty).
    /// Listed peers receive the announcement directly; the rest discover it in the DHT.
    pub peers: Vec<Option<PeerId>>,
    /// The messages to sign, each with the tweaks of its key (1 to the configured
    /// `max_messages`; each message up to `max_message_bytes`). The session ends with one
    /// signature per message, in this order.
    pub messages: Vec<MessageToSign>,
    /// A digest of the document the messages come from (e.g. a PSBT), carried in the
    /// announcement so every signer can check it reviews the same one.
    pub document_digest: Option<[u8; 32]>,
    /// The session's rules; see [`Node::default_policy`].
    pub policy: Policy,
}

enum Command {
    Insert {
        announcement: Box<VerifiedAnnouncement>,
        created_here: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    Join {
        session: SessionId,
        reply: oneshot::Sender<Result<()>>,
    },
    Lookup {
        session: SessionId,
        reply: oneshot::Sender<Result<Option<VerifiedAnnouncement>>>,
    },
    /// Answered with the announcement as soon as this node holds the session.
    AwaitAnnouncement {
        session: SessionId,
        reply: oneshot::Sender<VerifiedAnnouncement>,
    },
    Wait {
        session: SessionId,
        reply: oneshot::Sender<Result<Vec<schnorr::Signature>>>,
    },
    Health {
        session: SessionId,
        reply: oneshot::Sender<Result<SessionHealth>>,
    },
    List {
        reply: oneshot::Sender<Vec<SessionHealth>>,
    },
    Blocked {
        reply: oneshot::Sender<Vec<(PeerId, Duration)>>,
    },
    Usage {
        reply: oneshot::Sender<NodeUsage>,
    },
    Cancel {
        session: SessionId,
        reply: oneshot::Sender<Result<()>>,
    },
    ConfirmFinalized {
        session: SessionId,
        receipt: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    Export {
        session: SessionId,
        reply: oneshot::Sender<Result<StoredSession>>,
    },
    Import {
        stored: Box<StoredSession>,
        reply: oneshot::Sender<Result<SessionId>>,
    },
    StoreUsage {
        reply: oneshot::Sender<Result<StoreUsage>>,
    },
    Prune {
        reply: oneshot::Sender<Result<usize>>,
    },
}

/// What a node holds right now, for monitoring and for checking that every bound holds (each
/// has a limit in [`Config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NodeUsage {
    /// Every session held (active, un-joined and finished).
    pub sessions: usize,
    /// Sessions joined or created here and not finished (≤ `max_concurrent_sessions`).
    pub active_sessions: usize,
    /// Sessions announced to us and not joined (≤ `max_unjoined_sessions`).
    pub unjoined_sessions: usize,
    /// Finished sessions kept for late queries (≤ `max_finished_sessions`, for at most `finished_session_retention`).
    pub finished_sessions: usize,
    /// Frames buffered for unknown sessions (≤ `max_pending_frames`).
    pub pending_frames: usize,
    /// Their bytes (≤ `max_pending_bytes`).
    pub pending_bytes: usize,
    /// Finished sessions forgotten and remembered by id until their announcement expires, so a
    /// replay does not bring one back (≤ `max_forgotten_sessions`).
    pub forgotten_sessions: usize,
    /// Announcements set aside over their budget (≤ `max_set_aside_announcements`, ADR 0025).
    pub set_aside_announcements: usize,
    /// Their bytes (≤ `max_set_aside_announcement_bytes`).
    pub set_aside_bytes: usize,
    /// Peers in the offence table (≤ `max_offence_entries`).
    pub offence_entries: usize,
    /// Peers with a live outbound queue (≤ `max_outbound_peers`).
    pub outbound_peers: usize,
    /// Peers blocked at the transport.
    pub blocked_peers: usize,
}

/// A handle to a signing node. Cheap to clone; every clone talks to the same node task.
#[derive(Clone)]
pub struct Node {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    transport: Arc<dyn Transport>,
    /// Shared with the announcements waiting for their batch signature.
    keypair: Arc<Keypair>,
    config: Arc<Config>,
    clock: Clock,
    stats: Arc<crate::stats::NodeStats>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.transport.local_peer_id())
            .field("public_key", &self.keypair.public_key())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a node signing with `keypair` over `transport`. Must be called inside a tokio
    /// runtime.
    pub fn spawn(transport: Arc<dyn Transport>, keypair: Keypair, config: Config) -> Node {
        Self::start(
            transport,
            keypair,
            config,
            Box::new(MemoryStore::new()),
            (Vec::new(), Vec::new()),
        )
    }

    /// Starts a node that keeps its sessions in `store` and resumes the ones it holds (see
    /// [`SessionMachine::restore`]): a finished session stays finished (and answers signers
    /// that missed its end); one with our partial signature re-sends exactly it; any other
    /// joined session moves to a new attempt with fresh nonces. Must be called inside a tokio
    /// runtime.
    ///
    /// Fails if the store cannot be read. Sessions that do not verify are skipped (logged).
    pub fn spawn_with_store(
        transport: Arc<dyn Transport>,
        keypair: Keypair,
        config: Config,
        store: impl SessionStore,
    ) -> Result<Node> {
        let stored = store.load_all()?;
        let forgotten = store.load_forgotten()?;
        Ok(Self::start(
            transport,
            keypair,
            config,
            Box::new(store),
            (stored, forgotten),
        ))
    }

    fn start(
        transport: Arc<dyn Transport>,
        keypair: Keypair,
        config: Config,
        store: Box<dyn SessionStore>,
        (stored, forgotten): (Vec<StoredSession>, Vec<(SessionId, u64)>),
    ) -> Node {
        let durable = store.is_durable();
        let store: SharedStore = Arc::new(Mutex::new(store));
        let config = Arc::new(config);
        let (commands, command_rx) = mpsc::channel(config.command_queue.max(1));
        let (events, _) = broadcast::channel(config.event_queue.max(1));
        let clock = Clock::new();
        let stats = Arc::new(crate::stats::NodeStats::default());
        let actor = Actor {
            stats: stats.clone(),
            transport: transport.clone(),
            keypair,
            local_peer: transport.local_peer_id(),
            config: config.clone(),
            clock,
            sessions: SessionTable::default(),
            finished: VecDeque::new(),
            finished_ids: HashSet::new(),
            forgotten: VecDeque::new(),
            forgotten_ids: HashSet::new(),
            unjoined: VecDeque::new(),
            pending: PendingBuffer::new(PendingLimits {
                frames_per_peer: config.max_buffered_messages_per_peer,
                bytes_per_peer: config.max_pending_bytes_per_peer,
                frames: config.max_pending_frames,
                bytes: config.max_pending_bytes,
                frame_bytes: config.max_pending_frame_bytes,
                lifetime_ms: millis(config.max_clock_skew),
            }),
            set_aside: SetAside::new(PendingLimits {
                frames_per_peer: config.max_set_aside_announcements_per_peer,
                bytes_per_peer: config.max_set_aside_announcement_bytes / 4,
                frames: config.max_set_aside_announcements,
                bytes: config.max_set_aside_announcement_bytes,
                frame_bytes: config.limits.max_frame_bytes,
                lifetime_ms: millis(config.max_clock_skew),
            }),
            set_aside_drain_at: None,
            waiters: HashMap::new(),
            announcement_waiters: HashMap::new(),
            events: events.clone(),
            outbound: Outbound::new(transport.clone(), config.clone(), stats.clone()),
            rng: rand::rngs::StdRng::from_os_rng(),
            key_agg_cache: HashMap::new(),
            offences: OffenceTable::new(
                config.max_offence_entries,
                millis(config.peer_block_duration),
            ),
            blocked: HashMap::new(),
            announcement_budget: AnnouncementBudget::new(&config, clock.now_ms()),
            store,
            durable,
            staged: Staged::default(),
            purge: Purge::default(),
            deferred: Vec::new(),
            deferred_since: None,
        };
        // Unfinished sessions created here whose DHT put may not have happened before the
        // restart: scheduled again (ADR 0013), so a signer that missed its direct copy can
        // still find them.
        let deferred_puts: Vec<(SessionId, SignedAnnouncement, u64)> = match config.dht_announce {
            DhtAnnounce::IfNotJoinedWithin(_) => stored
                .iter()
                .filter(|s| s.outcome.is_none())
                .filter_map(|s| {
                    let ann = s.announcement.announcement();
                    let ours = ann.signers.get(ann.creator.as_usize())?.key == keypair.public_key();
                    let all_listed = ann.signers.iter().all(|x| x.peer_id.is_some());
                    (ours && all_listed).then(|| {
                        let id = s.announcement.session_id();
                        (id, s.announcement.clone(), ann.expires_at_ms)
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut actor = actor;
        actor.resume(stored);
        actor.resume_forgotten(forgotten);
        let peer_events = transport.events();
        let span = tracing::info_span!("node", peer = %transport.local_peer_id());
        // Its own partition of the verified-root cache (ADR 0018): nodes that share threads
        // each check the signatures they receive, as separate processes do.
        static NEXT_SCOPE: AtomicU64 = AtomicU64::new(1);
        let scope = NEXT_SCOPE.fetch_add(1, Ordering::Relaxed);
        let mut run = Box::pin(actor.run(command_rx, peer_events));
        let scoped = std::future::poll_fn(move |cx| {
            musig2_proto::with_verified_roots_scope(scope, || run.as_mut().poll(cx))
        });
        tokio::spawn(scoped.instrument(span));
        let node = Node {
            commands,
            events,
            transport,
            keypair: Arc::new(keypair),
            config,
            clock,
            stats,
        };
        if let DhtAnnounce::IfNotJoinedWithin(after) = node.config.dht_announce {
            let now = node.clock.now_ms();
            for (id, signed, expires_at_ms) in deferred_puts {
                let ttl = Duration::from_millis(expires_at_ms.saturating_sub(now));
                if ttl.is_zero() {
                    continue;
                }
                let handle = node.clone();
                tokio::spawn(async move { handle.put_unless_joined(id, signed, ttl, after).await });
            }
        }
        node
    }

    /// Traffic counters since the node started: frames in and out, rejections by reason,
    /// blocks.
    pub fn stats(&self) -> crate::StatsSnapshot {
        self.stats.snapshot()
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.transport.local_peer_id()
    }

    /// This node's signing key.
    pub fn public_key(&self) -> PublicKey {
        self.keypair.public_key()
    }

    /// The transport this node runs on.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// Subscribes to events (bounded: a subscriber that falls behind sees `Lagged`).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The policy this node's configuration implies: mesh topology, nonce commitments on,
    /// hash-based election, the configured timeouts.
    pub fn default_policy(&self) -> Policy {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        Policy {
            timeouts: Timeouts {
                join_ms: ms(self.config.join_timeout),
                nonce_ms: ms(self.config.nonce_exchange_timeout),
                partial_sig_ms: ms(self.config.partial_sig_exchange_timeout),
                broadcast_ms: ms(self.config.broadcast_timeout),
                session_ms: ms(self.config.session_timeout),
            },
            ..Policy::default()
        }
    }

    /// Creates a session: builds and signs the announcement, sends it to the signers whose
    /// peers are listed, stores it in the DHT as [`Config::dht_announce`] says, and joins it.
    ///
    /// When the announcement goes to the DHT now (some signer's peer is unlisted, or
    /// [`DhtAnnounce::Always`]), the put retries until the routing table allows, up to the DHT
    /// timeout, and this returns once the DHT holds it; if the put fails, the session is
    /// cancelled and the error returned. An announcement too big for a DHT record (the
    /// transport's `RecordTooLarge`) is delivered directly only, which needs every signer's peer
    /// listed in `request.peers` (ADR 0012); otherwise the session is cancelled with that error.
    /// With every peer listed and [`DhtAnnounce::IfNotJoinedWithin`], this returns at once and
    /// the put, if still needed later, runs in the background.
    pub async fn create_session(&self, request: SessionRequest) -> Result<SessionId> {
        let now = self.clock.now_ms();
        let me = self.keypair.public_key();
        let creator = request
            .signers
            .iter()
            .position(|k| *k == me)
            .ok_or_else(|| CoordinatorError::InvalidRequest("our key is not a signer".into()))?;
        if !request.peers.is_empty() && request.peers.len() != request.signers.len() {
            return Err(CoordinatorError::InvalidRequest(
                "peers must be empty or one per signer".into(),
            ));
        }
        let mut signers: Vec<SignerInfo> = request
            .signers
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let peer = request.peers.get(i).copied().flatten();
                let peer = if i == creator {
                    Some(self.peer_id())
                } else {
                    peer
                };
                let peer_id = peer.and_then(|p| musig2_proto::PeerIdBytes::new(p.to_bytes()).ok());
                SignerInfo { key: *key, peer_id }
            })
            .collect();
        signers.shrink_to_fit();
        // The announcement lives through the join window and then the rounds.
        let t = request.policy.timeouts;
        let session_ms = t.join_ms.saturating_add(t.session_ms);
        let announcement = Announcement {
            signers,
            messages: request.messages,
            creator: SignerIndex::try_from(creator)?,
            policy: request.policy,
            salt: rand::random(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(session_ms),
            document_digest: request.document_digest,
        };
        // A signer whose peer is listed receives the announcement directly; one that is not
        // can only find it in the DHT.
        let all_listed = announcement.signers.iter().all(|s| s.peer_id.is_some());
        let deferred_put = match self.config.dht_announce {
            DhtAnnounce::IfNotJoinedWithin(after) if all_listed => Some(after),
            _ => None,
        };
        // Sent directly only (the DHT put, if ever, comes later): the node task may sign it in
        // one batch with what else it sends (ADR 0017). A put now needs its signature now.
        let verified = if deferred_put.is_some() {
            announcement.sign_batchable(self.keypair.clone(), now, &self.config.limits)?
        } else {
            announcement.sign_verified(&self.keypair, now, &self.config.limits)?
        };
        let signed = verified.signed().clone();
        let id = verified.session_id();
        let ttl = Duration::from_millis(session_ms);
        let insert = self.call(|reply| Command::Insert {
            announcement: Box::new(verified),
            created_here: true,
            reply,
        });
        if let Some(after) = deferred_put {
            insert.await??;
            let node = self.clone();
            tokio::spawn(async move { node.put_unless_joined(id, signed, ttl, after).await });
            let _ = self.events.send(Event::SessionAnnounced { session: id });
            return Ok(id);
        }
        // The DHT put and the direct announcement to listed peers run side by side; a session
        // that cannot be announced in the DHT is cancelled rather than left half-visible.
        let put = self.dht_put_with_retry(dht_key(&id), signed.to_frame_bytes(), ttl);
        let (put, insert) = tokio::join!(put, insert);
        insert??;
        match put {
            Ok(()) => self.stats.dht_put(DhtPut::Stored),
            // Too big for a DHT record (ADR 0012): when every signer's peer is listed, the
            // direct delivery is the announcement's only channel; otherwise some signer could
            // never find it, and the session is cancelled.
            Err(CoordinatorError::Transport(TransportError::RecordTooLarge { size, max }))
                if all_listed =>
            {
                tracing::debug!(session = %id, size, max, "announcement delivered directly only");
            }
            Err(e) => {
                let _ = self.cancel_session(id).await;
                return Err(e);
            }
        }
        let _ = self.events.send(Event::SessionAnnounced { session: id });
        Ok(id)
    }

    /// The deferred put of [`DhtAnnounce::IfNotJoinedWithin`]: after `after`, stores the
    /// announcement unless the session has ended or every signer has joined.
    async fn put_unless_joined(
        &self,
        id: SessionId,
        signed: SignedAnnouncement,
        ttl: Duration,
        after: Duration,
    ) {
        tokio::time::sleep(after).await;
        let needed = match self.health(id).await {
            Ok(h) => !h.phase.is_terminal() && !h.all_joined,
            // Finished and forgotten, cancelled, or the node stopped.
            Err(_) => false,
        };
        if !needed {
            return self.stats.dht_put(DhtPut::NotNeeded);
        }
        // Encoded only now: by then the node task has signed it (alone or in a batch).
        let value = signed.to_frame_bytes();
        match self.dht_put_with_retry(dht_key(&id), value, ttl).await {
            Ok(()) => self.stats.dht_put(DhtPut::Stored),
            // Too big for a record (ADR 0012): direct delivery is its only channel anyway.
            Err(CoordinatorError::Transport(TransportError::RecordTooLarge { .. })) => {
                self.stats.dht_put(DhtPut::NotNeeded);
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "deferred DHT put failed");
                self.stats.dht_put(DhtPut::Failed);
            }
        }
    }

    async fn dht_put_with_retry(&self, key: Vec<u8>, value: Vec<u8>, ttl: Duration) -> Result<()> {
        let mut backoff = DhtBackoff::new(&self.config);
        loop {
            let attempt = tokio::time::timeout(
                backoff.left(),
                self.transport.dht_put(key.clone(), value.clone(), ttl),
            )
            .await
            .map_err(|_| backoff.timed_out("DHT put"))?;
            match attempt {
                Ok(()) => return Ok(()),
                Err(e @ (TransportError::Closed | TransportError::RecordTooLarge { .. })) => {
                    return Err(e.into());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DHT put failed");
                    if !backoff.wait().await {
                        return Err(e.into());
                    }
                }
            }
        }
    }

    /// The announcement of a session this node holds (or holds set aside, ADR 0025), without
    /// asking the DHT: `None` if it has none, [`CoordinatorError::SessionFinished`] if it held
    /// the session until it finished and was forgotten (see `Config::max_forgotten_sessions`).
    pub async fn known_session(&self, session: SessionId) -> Result<Option<VerifiedAnnouncement>> {
        self.call(|reply| Command::Lookup { session, reply })
            .await?
    }

    /// Finds a session's announcement: from this node's memory if it was sent here, otherwise
    /// from the DHT. Verifies the creator's signature, the recomputed id, the expiry and that
    /// this node's key is a signer; poisoned DHT records are skipped.
    pub async fn discover_session(&self, session: SessionId) -> Result<VerifiedAnnouncement> {
        if let Some(known) = self.known_session(session).await? {
            return Ok(known);
        }
        let limits = self.config.limits;
        let clock = self.clock;
        let validator = RecordValidator::new(move |key, value| {
            key == dht_key(&session).as_slice()
                && SignedAnnouncement::decode(value, &limits)
                    .and_then(|a| a.verify_id(&session, clock.now_ms(), &limits))
                    .is_ok()
        });
        let value = match self.dht_get_with_retry(session, validator).await? {
            Found::Direct(known) => return Ok(*known),
            Found::Record(value) => value,
        };
        let verified = SignedAnnouncement::decode(&value, &limits)?.verify_id(
            &session,
            self.clock.now_ms(),
            &limits,
        )?;
        if verified.index_of(&self.keypair.public_key()).is_none() {
            return Err(CoordinatorError::NotASigner(session));
        }
        self.call(|reply| Command::Insert {
            announcement: Box::new(verified.clone()),
            created_here: false,
            reply,
        })
        .await??;
        Ok(verified)
    }

    /// Gets a session's record, or the announcement if its direct copy reaches this node in
    /// the meantime: while the DHT does not have it (the creator may not have stored it yet:
    /// [`DhtAnnounce::IfNotJoinedWithin`]), looks again, up to the DHT timeout.
    async fn dht_get_with_retry(
        &self,
        session: SessionId,
        validator: RecordValidator,
    ) -> Result<Found> {
        // The direct copy ends the lookup the moment it arrives, not at the next DHT answer.
        let (reply, mut arrived) = oneshot::channel();
        self.commands
            .send(Command::AwaitAnnouncement { session, reply })
            .await
            .map_err(|_| CoordinatorError::Shutdown)?;
        let direct =
            |known: std::result::Result<VerifiedAnnouncement, oneshot::error::RecvError>| {
                known
                    .map(|k| Found::Direct(Box::new(k)))
                    .map_err(|_| CoordinatorError::Shutdown)
            };
        let mut backoff = DhtBackoff::new(&self.config);
        loop {
            let got = tokio::select! {
                known = &mut arrived => return direct(known),
                got = tokio::time::timeout(
                    backoff.left(),
                    self.transport.dht_get(dht_key(&session), validator.clone()),
                ) => got.map_err(|_| backoff.timed_out("DHT get"))?,
            };
            match got {
                Err(TransportError::NotFound) => {
                    let again = tokio::select! {
                        known = &mut arrived => return direct(known),
                        again = backoff.wait() => again,
                    };
                    if !again {
                        return Err(TransportError::NotFound.into());
                    }
                }
                other => return Ok(Found::Record(other?)),
            }
        }
    }

    /// Joins a session (discovering it first if needed) and takes part in the signing rounds.
    pub async fn join_session(&self, session: SessionId) -> Result<()> {
        self.discover_session(session).await?;
        self.call(|reply| Command::Join { session, reply }).await?
    }

    /// Waits until the session ends: the verified final signatures (one per message), or why
    /// it aborted.
    pub async fn wait_for_signatures(&self, session: SessionId) -> Result<Vec<schnorr::Signature>> {
        self.call(|reply| Command::Wait { session, reply }).await?
    }

    /// Progress of one session.
    pub async fn health(&self, session: SessionId) -> Result<SessionHealth> {
        self.call(|reply| Command::Health { session, reply })
            .await?
    }

    /// Progress of every session this node knows.
    pub async fn sessions(&self) -> Result<Vec<SessionHealth>> {
        self.call(|reply| Command::List { reply }).await
    }

    /// Peers this node has blocked for misbehaving (see [`Config::max_peer_offences`]), with
    /// how long each stays blocked.
    pub async fn blocked_peers(&self) -> Result<Vec<(PeerId, Duration)>> {
        self.call(|reply| Command::Blocked { reply }).await
    }

    /// What the node holds right now (sessions by kind, buffers, tables).
    pub async fn usage(&self) -> Result<NodeUsage> {
        self.call(|reply| Command::Usage { reply }).await
    }

    /// Aborts a session, telling the other signers.
    pub async fn cancel_session(&self, session: SessionId) -> Result<()> {
        self.call(|reply| Command::Cancel { session, reply })
            .await?
    }

    /// Confirms that this node acted on a session's signature (after
    /// [`Event::FinalizeDue`]: e.g. it published the transaction), with an opaque receipt of at
    /// most 256 bytes (e.g. a txid). The other signers get a signed `BroadcastConfirmed`, which
    /// ends the broadcast failover. Refused when it is not (and was not) this node's turn.
    pub async fn confirm_finalized(&self, session: SessionId, receipt: Vec<u8>) -> Result<()> {
        self.call(|reply| Command::ConfirmFinalized {
            session,
            receipt,
            reply,
        })
        .await?
    }

    /// Everything the store holds about a session (announcement, every envelope verified or
    /// sent, outcome): the material of its transcript.
    pub async fn export_session(&self, session: SessionId) -> Result<StoredSession> {
        self.call(|reply| Command::Export { session, reply })
            .await?
    }

    /// The session's transcript (see [`crate::transcript`]): announcement, every envelope
    /// verified or sent, outcome, and this node's signer index as exporter.
    pub async fn export_transcript(&self, session: SessionId) -> Result<crate::Transcript> {
        let stored = self.export_session(session).await?;
        let exporter = stored
            .announcement
            .announcement()
            .signers
            .iter()
            .position(|s| s.key == self.keypair.public_key())
            .and_then(|i| SignerIndex::try_from(i).ok());
        Ok(crate::Transcript::from_stored(&stored, exporter))
    }

    /// Takes a transcript of a session that names this node's key into the store: a finished
    /// one for audit; an unfinished one resumes at a new attempt with fresh nonces (a
    /// transcript holds no nonce secret; see [`SessionMachine::restore`]). The transcript is
    /// verified first; a session already held is refused.
    pub async fn import_transcript(&self, transcript: crate::Transcript) -> Result<SessionId> {
        let limits = crate::TranscriptLimits {
            proto: self.config.limits,
            ..crate::TranscriptLimits::default()
        };
        transcript.verify(&limits)?;
        let me = self.keypair.public_key();
        let Some(my_index) = transcript
            .announcement
            .announcement()
            .signers
            .iter()
            .position(|s| s.key == me)
        else {
            return Err(CoordinatorError::NotASigner(transcript.session_id()));
        };
        let now = self.clock.now_ms();
        let mut stored = StoredSession::new(transcript.announcement.clone(), now);
        for env in &transcript.envelopes {
            stored.apply(&Record::Envelope(env.clone()));
        }
        // Our numbers continue after the highest of ours in the file.
        let highest_own = transcript
            .envelopes
            .iter()
            .filter(|e| e.envelope().signer().as_usize() == my_index)
            .map(|e| e.envelope().seq().get())
            .max()
            .unwrap_or(0);
        stored.next_seq = musig2_proto::SeqNo::new(highest_own.saturating_add(1))?;
        stored.attempt = transcript
            .envelopes
            .iter()
            .filter_map(|e| match e.envelope().body() {
                musig2_proto::Body::Restart { attempt }
                | musig2_proto::Body::NonceCommit { attempt, .. }
                | musig2_proto::Body::Nonce { attempt, .. }
                | musig2_proto::Body::PartialSig { attempt, .. } => Some(*attempt),
                _ => None,
            })
            .max()
            .unwrap_or(musig2_proto::Attempt::FIRST);
        stored.outcome = transcript.outcome.clone().map(|o| (o, now));
        self.call(|reply| Command::Import {
            stored: Box::new(stored),
            reply,
        })
        .await?
    }

    /// What the session store holds.
    pub async fn store_usage(&self) -> Result<StoreUsage> {
        self.call(|reply| Command::StoreUsage { reply }).await?
    }

    /// Forgets every finished session now (memory and store), whatever the retention; returns
    /// how many.
    pub async fn prune_finished(&self) -> Result<usize> {
        self.call(|reply| Command::Prune { reply }).await?
    }

    /// Stops the node task and shuts the transport down.
    ///
    /// Sessions in progress are cancelled first, and the signed abort is sent to the other
    /// signers (bounded by `message_send_timeout`), so they end at once without waiting for a
    /// deadline and without blaming anyone; the outcome is stored.
    pub async fn shutdown(&self) -> Result<()> {
        // The task may already be gone; shutting down twice is fine.
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
        self.transport.shutdown().await?;
        Ok(())
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| CoordinatorError::Shutdown)?;
        rx.await.map_err(|_| CoordinatorError::Shutdown)
    }
}

/// `delay` scaled by a random factor in [0.5, 1.5), so retries of many nodes spread out.
/// The retry schedule of a DHT operation: the whole operation within `dht_query_timeout`,
/// waits doubling (with jitter) from `retry_base_delay` up to `retry_max_delay`.
struct DhtBackoff {
    deadline: Instant,
    delay: Duration,
    max_delay: Duration,
    timeout: Duration,
}

impl DhtBackoff {
    fn new(config: &Config) -> Self {
        DhtBackoff {
            deadline: Instant::now() + config.dht_query_timeout,
            delay: config.retry_base_delay,
            max_delay: config.retry_max_delay,
            timeout: config.dht_query_timeout,
        }
    }

    /// Time left for the next try.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Waits before the next try; false, without waiting, if it would end past the deadline.
    async fn wait(&mut self) -> bool {
        if Instant::now() + self.delay >= self.deadline {
            return false;
        }
        tokio::time::sleep(jittered(self.delay)).await;
        self.delay = (self.delay * 2).min(self.max_delay);
        true
    }

    fn timed_out(&self, operation: &'static str) -> CoordinatorError {
        TransportError::Timeout {
            operation,
            after: self.timeout,
        }
        .into()
    }
}

pub(crate) fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.5..1.5))
}

struct Actor {
    transport: Arc<dyn Transport>,
    keypair: Keypair,
    local_peer: PeerId,
    config: Arc<Config>,
    clock: Clock,
    sessions: SessionTable,
    /// Finished sessions, oldest first; kept (bounded) so late waiters get the outcome.
    finished: VecDeque<(SessionId, u64)>,
    /// The ids in `finished`, to tell a finished session in O(1).
    finished_ids: HashSet<SessionId>,
    /// Finished sessions already forgotten, with their announcement's expiry, oldest first: a
    /// replayed announcement must not bring one back as a new session while it is still valid.
    forgotten: VecDeque<(SessionId, u64)>,
    forgotten_ids: HashSet<SessionId>,
    /// Sessions announced to us that we have not joined: (id, creator key, when it arrived),
    /// oldest first. A pool of their own, bounded overall and per creator.
    unjoined: VecDeque<(SessionId, Option<PublicKey>, u64)>,
    /// Raw frames for sessions we do not know yet.
    pending: PendingBuffer,
    /// Raw announcements that came over their budget, for a local lookup by id (ADR 0025).
    set_aside: SetAside,
    /// When the set-aside announcements are next offered to the budgets (ms): fixed when set,
    /// so a steady stream of other frames cannot keep postponing it.
    set_aside_drain_at: Option<u64>,
    waiters: HashMap<SessionId, Vec<oneshot::Sender<Result<Vec<schnorr::Signature>>>>>,
    /// Local callers looking a session up (`discover_session`), told when its announcement
    /// arrives directly. Only this node's API adds to it; abandoned entries are dropped.
    announcement_waiters: HashMap<SessionId, Vec<oneshot::Sender<VerifiedAnnouncement>>>,
    events: broadcast::Sender<Event>,
    outbound: Outbound,
    rng: rand::rngs::StdRng,
    /// Untweaked key-aggregation contexts of recent signer lists.
    key_agg_cache: HashMap<Vec<PublicKey>, musig2_core::KeyAggContext>,
    /// Offending frames per peer.
    offences: OffenceTable,
    /// Announcement bytes, per peer and overall.
    announcement_budget: AnnouncementBudget,
    /// Peers blocked at the transport, and until when (ms).
    blocked: HashMap<PeerId, u64>,
    stats: Arc<crate::stats::NodeStats>,
    store: SharedStore,
    /// Whether store commits wait for the disk (they then run on a blocking thread).
    durable: bool,
    /// What the steps since the last commit produced: sent only once their records are stored.
    staged: Staged,
    /// What the next commit forgets in the store.
    purge: Purge,
    /// Records no frame waits for, not yet committed, and since when (ms).
    deferred: Vec<Record>,
    deferred_since: Option<u64>,
}

/// Outputs of machine steps waiting for their records to be stored.
#[derive(Default)]
struct Staged {
    records: Vec<Record>,
    /// Records the staged frames do not depend on: committed with `records` when there are
    /// some, else after the frames are sent.
    later: Vec<Record>,
    /// (session, announcement, peers): announcements created here, each sent to the listed
    /// peers before anything else of its session.
    announcements: Vec<(SessionId, SignedAnnouncement, Vec<PeerId>)>,
    /// (session, peer, envelopes): one batch frame per entry (a batch holds one session).
    sends: Vec<(SessionId, PeerId, Vec<SignedEnvelope>)>,
    /// (session, peer, frame): final signatures, each in a frame of its own (ADR 0015).
    finals: Vec<(SessionId, PeerId, Bytes)>,
    events: Vec<Event>,
    /// Envelopes made ahead of the step that sends them: signed with this flush's, not sent.
    ahead: Vec<SignedEnvelope>,
    /// Callers to answer once the records are stored, with the session their command touched
    /// (told the commit's error instead if that session's records failed to commit).
    replies: Vec<(SessionId, oneshot::Sender<Result<()>>, Result<()>)>,
}

impl Staged {
    fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.later.is_empty()
            && self.announcements.is_empty()
            && self.sends.is_empty()
            && self.finals.is_empty()
            && self.events.is_empty()
            && self.ahead.is_empty()
            && self.replies.is_empty()
    }
}

/// Signs what this node wrote since the last flush, before it is stored or sent: every
/// batchable envelope and announcement, under one signature per batch (ADR 0016, 0017), however
/// many peers each goes to (ADR 0018): a receiver that gets several of them checks one
/// signature, and the author makes one.
fn seal_staged(staged: &Staged) -> musig2_proto::Sealed {
    let stored = staged
        .records
        .iter()
        .chain(&staged.later)
        .filter_map(|r| match r {
            Record::Envelope(e) => Some(e),
            _ => None,
        });
    let sent = staged.sends.iter().flat_map(|(_, _, envs)| envs);
    let mut batch = musig2_proto::Batch::new();
    for (_, announcement, _) in &staged.announcements {
        batch.add_announcement(announcement);
    }
    let pending = stored.chain(sent).chain(&staged.ahead);
    for e in pending.filter(|e| e.sealed_auth().is_none()) {
        batch.add_envelope(e);
    }
    batch.seal()
}

/// Where [`Node::discover_session`] found an announcement while it waited for the DHT.
enum Found {
    /// Its direct copy arrived (already verified and held by the node task).
    Direct(Box<VerifiedAnnouncement>),
    /// The DHT's record (not verified yet).
    Record(Vec<u8>),
}

/// How an aborted session answers a caller: why, whom it blamed and whose word that is.
fn aborted_error(m: &SessionMachine) -> CoordinatorError {
    let session = m.session_id();
    match m.abort_outcome() {
        Some((reason, blamed, origin)) => CoordinatorError::Aborted {
            session,
            reason,
            blamed: blamed.to_vec(),
            origin,
        },
        None => CoordinatorError::SessionFinished(session),
    }
}

/// The key of the signer that created (and signed) an announcement.
fn creator_key(announcement: &VerifiedAnnouncement) -> Option<PublicKey> {
    let a = announcement.announcement();
    a.signers.get(a.creator.as_usize()).map(|s| s.key)
}

/// A token bucket of bytes refilling at `rate` per second and holding one second's worth.
#[derive(Debug, Clone, Copy)]
struct ByteBucket {
    tokens: u64,
    at_ms: u64,
}

impl ByteBucket {
    fn full(rate: u64, now: u64) -> Self {
        ByteBucket {
            tokens: rate,
            at_ms: now,
        }
    }

    fn refill(&mut self, rate: u64, now: u64) {
        let elapsed = now.saturating_sub(self.at_ms);
        let add = rate.saturating_mul(elapsed) / 1000;
        if add > 0 {
            self.tokens = self.tokens.saturating_add(add).min(rate);
            self.at_ms = now;
        }
    }

    fn is_full(&self, rate: u64, now: u64) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= rate
    }
}

/// Announcement bytes a peer may have the node take in, per peer and overall (an announcement
/// costs a decode, a signature check and a key aggregation per signer).
struct AnnouncementBudget {
    peers: HashMap<PeerId, ByteBucket>,
    total: ByteBucket,
    per_peer_rate: u64,
    overall_rate: u64,
    max_peers: usize,
}

impl AnnouncementBudget {
    fn new(config: &Config, now: u64) -> Self {
        AnnouncementBudget {
            peers: HashMap::new(),
            total: ByteBucket::full(config.announcement_bytes_per_sec, now),
            per_peer_rate: config.announcement_bytes_per_peer_per_sec,
            overall_rate: config.announcement_bytes_per_sec,
            max_peers: config.max_offence_entries,
        }
    }

    /// Takes `len` bytes from the peer's and the node's budgets; false, taking nothing, when
    /// either is spent (not an offence: an honest creator may announce a burst).
    fn take(&mut self, from: PeerId, len: usize, now: u64) -> bool {
        let len = len as u64;
        let (per_peer, overall) = (self.per_peer_rate, self.overall_rate);
        if self.peers.len() >= self.max_peers && !self.peers.contains_key(&from) {
            // Buckets that have refilled are the same as fresh ones.
            self.peers.retain(|_, b| !b.is_full(per_peer, now));
            if self.peers.len() >= self.max_peers {
                return false;
            }
        }
        self.total.refill(overall, now);
        let peer = self
            .peers
            .entry(from)
            .or_insert_with(|| ByteBucket::full(per_peer, now));
        peer.refill(per_peer, now);
        if peer.tokens < len || self.total.tokens < len {
            return false;
        }
        peer.tokens -= len;
        self.total.tokens -= len;
        true
    }
}

/// How often set-aside announcements are offered to the refilled budgets (ADR 0025).
const SET_ASIDE_DRAIN_MS: u64 = 50;

/// Light offences that make one offence (see `Actor::light_offence`).
const OFFENCE_WEIGHT: u32 = 8;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Signer lists whose key aggregation is kept for reuse.
const KEY_AGG_CACHE_ENTRIES: usize = 64;

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut peer_events: broadcast::Receiver<PeerEvent>,
    ) {
        let far = Duration::from_secs(3600);
        // What resumed sessions had to say.
        self.flush().await;
        loop {
            let wake = self
                .next_deadline()
                .map(|ms| self.clock.instant_at(ms))
                .unwrap_or_else(|| Instant::now() + far);
            tokio::select! {
                command = commands.recv() => match command {
                    None => break,
                    Some(command) => {
                        if !self.handle_command(command).await {
                            break;
                        }
                    }
                },
                inbound = self.transport.recv() => match inbound {
                    Ok(inbound) => self.handle_frame(inbound.from, inbound.frame).await,
                    Err(TransportError::Closed) => break,
                    Err(e) => tracing::warn!(error = %e, "receive failed"),
                },
                event = peer_events.recv() => match event {
                    Ok(PeerEvent::Disconnected(peer)) => self.peer_disconnected(peer),
                    Ok(PeerEvent::RateLimited(peer)) => self.offence(peer, "over its inbound rate").await,
                    Ok(PeerEvent::Connected(_)) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "peer events lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        peer_events = broadcast::channel(1).1;
                    }
                },
                () = tokio::time::sleep_until(wake) => self.tick().await,
            }
            // Group commit: what else has arrived joins this step's records in one store
            // transaction.
            if !self.staged.records.is_empty() || !self.staged.later.is_empty() {
                let mut stop = false;
                for _ in 0..MAX_GROUP_FRAMES {
                    let mut took = false;
                    if let Some(Ok(inbound)) =
                        futures::FutureExt::now_or_never(self.transport.recv())
                    {
                        self.handle_frame(inbound.from, inbound.frame).await;
                        took = true;
                    }
                    if let Ok(command) = commands.try_recv() {
                        took = true;
                        if !self.handle_command(command).await {
                            stop = true;
                            break;
                        }
                    }
                    if !took {
                        break;
                    }
                }
                if stop {
                    break;
                }
            }
            self.flush().await;
        }
        for (_, waiters) in self.waiters.drain() {
            for w in waiters {
                let _ = w.send(Err(CoordinatorError::Shutdown));
            }
        }
        tracing::debug!("node task stopped");
    }

    fn next_deadline(&mut self) -> Option<u64> {
        self.sessions
            .next_deadline()
            .into_iter()
            .chain(self.blocked.values().copied())
            .chain(self.pending.next_expiry())
            .chain(self.set_aside_drain_at)
            .chain(self.unjoined.front().map(|(_, _, at)| {
                at.saturating_add(millis(self.config.unjoined_session_lifetime))
                    .saturating_add(1)
            }))
            .chain(
                self.finished.front().map(|(_, at)| {
                    at.saturating_add(millis(self.config.finished_session_retention))
                }),
            )
            .chain(
                self.deferred_since
                    .map(|t| t.saturating_add(DEFERRED_COMMIT_MS)),
            )
            .chain(self.forgotten.front().map(|(_, expires_at_ms)| {
                expires_at_ms
                    .saturating_add(millis(self.config.max_clock_skew))
                    .saturating_add(1)
            }))
            .min()
    }

    /// Counts an offending frame from `peer`; blocks the peer at the transport once it has sent
    /// `max_peer_offences` of them within `peer_block_duration`.
    async fn offence(&mut self, peer: PeerId, what: &str) {
        self.weighted_offence(peer, what, OFFENCE_WEIGHT).await;
    }

    /// Counts a frame that cost us little but that an honest peer sends rarely (an exact
    /// replay, a frame for an unknown session past the peer's share): one `OFFENCE_WEIGHT`th of
    /// an offence, so a flood of them is blocked while an honest peer's occasional duplicate
    /// never adds up.
    async fn light_offence(&mut self, peer: PeerId, what: &str) {
        self.weighted_offence(peer, what, 1).await;
    }

    async fn weighted_offence(&mut self, peer: PeerId, what: &str, weight: u32) {
        let limit = self.config.max_peer_offences;
        if limit == 0 || self.blocked.contains_key(&peer) {
            return;
        }
        let now = self.clock.now_ms();
        let window = millis(self.config.peer_block_duration);
        if self.offences.record(peer, now, weight) < limit.saturating_mul(OFFENCE_WEIGHT) {
            return;
        }
        self.offences.remove(&peer);
        tracing::warn!(%peer, offences = limit, last = what, "blocking a misbehaving peer");
        match self.transport.block_peer(peer).await {
            Ok(()) => {
                self.blocked.insert(peer, now.saturating_add(window));
                self.stats.peer_blocked();
            }
            Err(error) => tracing::warn!(%peer, %error, "could not block the peer"),
        }
    }

    /// Unblocks peers whose block has run out.
    async fn unblock_expired(&mut self, now: u64) {
        let expired: Vec<PeerId> = self
            .blocked
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in expired {
            self.blocked.remove(&peer);
            match self.transport.unblock_peer(peer).await {
                Ok(()) => tracing::info!(%peer, "unblocked a peer"),
                Err(error) => tracing::warn!(%peer, %error, "could not unblock the peer"),
            }
        }
    }

    /// Carries out one command; false when the node should stop.
    async fn handle_command(&mut self, command: Command) -> bool {
        let now = self.clock.now_ms();
        match command {
            Command::Insert {
                announcement,
                created_here,
                reply,
            } => {
                let session = announcement.session_id();
                let result = self.insert(*announcement, created_here, now).await;
                self.staged.replies.push((session, reply, result));
            }
            Command::Join { session, reply } => {
                let result = self.join(session, now).await;
                // The caller hears "joined" once the join is stored (and sent).
                self.staged.replies.push((session, reply, result));
            }
            Command::Lookup { session, reply } => {
                let known = match self.sessions.get(&session) {
                    Some(m) => Ok(Some(m.announcement().clone())),
                    None if self.forgotten_ids.contains(&session) => {
                        Err(CoordinatorError::SessionFinished(session))
                    }
                    None => Ok(self.adopt_set_aside(session, now).await),
                };
                let _ = reply.send(known);
            }
            Command::AwaitAnnouncement { session, reply } => {
                let known = match self.sessions.get(&session) {
                    Some(m) => Some(m.announcement().clone()),
                    None => self.adopt_set_aside(session, now).await,
                };
                if let Some(known) = known {
                    let _ = reply.send(known);
                } else {
                    // Callers that gave up (their lookup ended) leave closed senders behind.
                    self.announcement_waiters.retain(|_, list| {
                        list.retain(|w| !w.is_closed());
                        !list.is_empty()
                    });
                    self.announcement_waiters
                        .entry(session)
                        .or_default()
                        .push(reply);
                }
            }
            Command::Wait { session, reply } => match self.sessions.get(&session) {
                None => {
                    let _ = reply.send(Err(CoordinatorError::UnknownSession(session)));
                }
                Some(m) => match (m.phase(), m.signatures()) {
                    (Phase::Done, Some(sigs)) => {
                        let _ = reply.send(Ok(sigs.to_vec()));
                    }
                    (Phase::Aborted, _) => {
                        let _ = reply.send(Err(aborted_error(m)));
                    }
                    _ => self.waiters.entry(session).or_default().push(reply),
                },
            },
            Command::Health { session, reply } => {
                let health = self
                    .sessions
                    .get(&session)
                    .map(|m| m.health(now))
                    .ok_or(CoordinatorError::UnknownSession(session));
                let _ = reply.send(health);
            }
            Command::Blocked { reply } => {
                let mut blocked: Vec<(PeerId, Duration)> = self
                    .blocked
                    .iter()
                    .map(|(peer, until)| (*peer, Duration::from_millis(until.saturating_sub(now))))
                    .collect();
                blocked.sort_by_key(|(peer, _)| peer.to_bytes());
                let _ = reply.send(blocked);
            }
            Command::Usage { reply } => {
                let _ = reply.send(NodeUsage {
                    sessions: self.sessions.len(),
                    active_sessions: self.active_sessions(),
                    unjoined_sessions: self.unjoined.len(),
                    finished_sessions: self.finished.len(),
                    pending_frames: self.pending.len(),
                    pending_bytes: self.pending.bytes(),
                    forgotten_sessions: self.forgotten.len(),
                    set_aside_announcements: self.set_aside.len(),
                    set_aside_bytes: self.set_aside.bytes(),
                    offence_entries: self.offences.len(),
                    outbound_peers: self.outbound.peers(),
                    blocked_peers: self.blocked.len(),
                });
            }
            Command::List { reply } => {
                let mut all: Vec<SessionHealth> =
                    self.sessions.values().map(|m| m.health(now)).collect();
                all.sort_by_key(|h| std::cmp::Reverse(h.age_ms));
                let _ = reply.send(all);
            }
            Command::Cancel { session, reply } => {
                let result = match self.sessions.get_mut(&session) {
                    None => Err(CoordinatorError::UnknownSession(session)),
                    Some(m) => {
                        let outputs = m.cancel(now);
                        self.process(outputs);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            Command::ConfirmFinalized {
                session,
                receipt,
                reply,
            } => {
                let result = match self.sessions.get_mut(&session) {
                    None => Err(CoordinatorError::UnknownSession(session)),
                    Some(m) => m.confirm_finalized(receipt, now).map(|outputs| {
                        self.process(outputs);
                    }),
                };
                self.shed_if_finished(&session);
                let _ = reply.send(result);
            }
            Command::Shutdown { reply } => {
                // Tell the others now, rather than leave them to a deadline that blames us.
                let live: Vec<SessionId> = self
                    .sessions
                    .iter()
                    .filter(|(_, m)| m.phase() != Phase::Created && !m.phase().is_terminal())
                    .map(|(id, _)| *id)
                    .collect();
                for id in live {
                    if let Some(m) = self.sessions.get_mut(&id) {
                        let outputs = m.cancel(now);
                        self.process(outputs);
                    }
                }
                self.flush().await;
                self.commit_deferred().await;
                self.outbound.close(self.config.message_send_timeout).await;
                let _ = reply.send(());
                return false;
            }
            Command::Export { session, reply } => {
                self.commit_deferred().await;
                let store = self.store.clone();
                let loaded = store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .load(&session);
                let _ = reply
                    .send(loaded.and_then(|s| s.ok_or(CoordinatorError::UnknownSession(session))));
            }
            Command::Import { stored, reply } => {
                let result = self.import(*stored, now).await;
                let _ = reply.send(result);
            }
            Command::StoreUsage { reply } => {
                self.commit_deferred().await;
                let usage = self
                    .store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .usage();
                let _ = reply.send(usage);
            }
            Command::Prune { reply } => {
                let mut forgotten = 0;
                while let Some((old, _)) = self.finished.pop_front() {
                    self.finished_ids.remove(&old);
                    self.forget(old);
                    forgotten += 1;
                }
                let records = std::mem::take(&mut self.deferred);
                let purge = std::mem::take(&mut self.purge);
                self.deferred_since = None;
                let result = self.commit(records, purge).await.map(|()| forgotten);
                let _ = reply.send(result);
            }
        }
        true
    }

    /// Sessions this node takes part in: joined or created here, not finished.
    fn active_sessions(&self) -> usize {
        self.sessions
            .len()
            .saturating_sub(self.finished.len() + self.unjoined.len())
    }

    async fn join(&mut self, session: SessionId, now: u64) -> Result<()> {
        let Some(m) = self.sessions.get(&session) else {
            return Err(CoordinatorError::UnknownSession(session));
        };
        if m.is_misrouted() {
            return Err(CoordinatorError::Misrouted {
                session,
                listed: m.listed_peer(m.signer_index()).unwrap_or(self.local_peer),
            });
        }
        if m.phase() == Phase::Aborted {
            return Err(aborted_error(m));
        }
        let pooled = self.unjoined.iter().position(|(id, _, _)| *id == session);
        if pooled.is_some() && self.active_sessions() >= self.config.max_concurrent_sessions {
            return Err(CoordinatorError::TooManySessions(
                self.config.max_concurrent_sessions,
            ));
        }
        // The count cannot reach the bound while all active sessions together are fewer.
        if pooled.is_some() && self.active_sessions() >= self.config.max_active_per_creator {
            let creator = creator_key(m.announcement());
            let of_creator = self
                .sessions
                .values()
                .filter(|s| s.phase() != Phase::Created && !s.phase().is_terminal())
                .filter(|s| creator_key(s.announcement()) == creator)
                .count();
            if of_creator >= self.config.max_active_per_creator {
                return Err(CoordinatorError::TooManySessionsFromCreator {
                    session,
                    max: self.config.max_active_per_creator,
                });
            }
        }
        if let Some(pos) = pooled {
            self.unjoined.remove(pos);
        }
        let Some(m) = self.sessions.get_mut(&session) else {
            return Err(CoordinatorError::UnknownSession(session));
        };
        let span = tracing::info_span!("session", id = %session);
        let outputs = span.in_scope(|| m.join(now, &mut self.rng));
        self.process(outputs);
        Ok(())
    }

    /// Refuses announcements whose lifetime or timeouts exceed this node's limits, so nobody
    /// can make it hold a session (or wait in a phase) for longer than its operator allows.
    fn check_policy(&self, announcement: &VerifiedAnnouncement, now: u64) -> Result<()> {
        let id = announcement.session_id();
        let a = announcement.announcement();
        let t = &a.policy.timeouts;
        let lifetime = millis(self.config.max_session_lifetime);
        let round = millis(self.config.max_round_timeout);
        let checks = [
            ("expiry", a.expires_at_ms.saturating_sub(now), lifetime),
            ("session timeout", t.session_ms, lifetime),
            (
                "join window",
                t.join_ms,
                millis(self.config.max_join_window),
            ),
            ("nonce timeout", t.nonce_ms, round),
            ("partial-signature timeout", t.partial_sig_ms, round),
            ("broadcast timeout", t.broadcast_ms, round),
        ];
        for (what, requested_ms, max_ms) in checks {
            if requested_ms > max_ms {
                return Err(CoordinatorError::PolicyOutOfBounds {
                    session: id,
                    what,
                    requested_ms,
                    max_ms,
                });
            }
        }
        Ok(())
    }

    /// Makes room in the un-joined pool for one more session of `creator`: drops that creator's
    /// oldest beyond its share, then the oldest overall.
    fn make_room_in_pool(&mut self, creator: &Option<PublicKey>) {
        let share = self.config.max_unjoined_per_creator.max(1);
        // Counting is a scan of the pool: skip it while the whole pool is below one share.
        let of_creator = if self.unjoined.len() < share {
            0
        } else {
            self.unjoined
                .iter()
                .filter(|(_, c, _)| c == creator)
                .count()
        };
        if of_creator >= share {
            if let Some(pos) = self.unjoined.iter().position(|(_, c, _)| c == creator) {
                if let Some((old, _, _)) = self.unjoined.remove(pos) {
                    self.drop_unjoined(old, "max_unjoined_per_creator");
                }
            }
        }
        while self.unjoined.len() >= self.config.max_unjoined_sessions.max(1) {
            match self.unjoined.pop_front() {
                Some((old, _, _)) => self.drop_unjoined(old, "max_unjoined_sessions"),
                None => break,
            }
        }
    }

    fn drop_unjoined(&mut self, session: SessionId, limit: &'static str) {
        tracing::info!(%session, limit, "dropped an un-joined session");
        self.sessions.remove(&session);
        self.emit(Event::SessionEvicted { session, limit });
        for w in self.waiters.remove(&session).unwrap_or_default() {
            let _ = w.send(Err(CoordinatorError::UnknownSession(session)));
        }
    }

    /// Drops un-joined sessions held longer than this node's own limit.
    fn expire_unjoined(&mut self, now: u64) {
        let lifetime = millis(self.config.unjoined_session_lifetime);
        while self
            .unjoined
            .front()
            .is_some_and(|(_, _, at)| now.saturating_sub(*at) > lifetime)
        {
            if let Some((old, _, _)) = self.unjoined.pop_front() {
                self.drop_unjoined(old, "unjoined_session_lifetime");
            }
        }
    }

    async fn insert(
        &mut self,
        announcement: VerifiedAnnouncement,
        created_here: bool,
        now: u64,
    ) -> Result<()> {
        let id = announcement.session_id();
        if self.sessions.contains_key(&id) {
            return if created_here {
                Err(CoordinatorError::SessionExists(id))
            } else {
                Ok(())
            };
        }
        if self.forgotten_ids.contains(&id) {
            return Err(CoordinatorError::SessionFinished(id));
        }
        self.check_policy(&announcement, now)?;
        let creator_key = creator_key(&announcement);
        if created_here {
            if self.active_sessions() >= self.config.max_concurrent_sessions {
                return Err(CoordinatorError::TooManySessions(
                    self.config.max_concurrent_sessions,
                ));
            }
        } else {
            self.make_room_in_pool(&creator_key);
        }
        let created = created_here.then(|| announcement.signed().clone());
        let keys = announcement.signer_keys();
        let base = match self.key_agg_cache.get(&keys) {
            Some(ctx) => ctx.clone(),
            None => {
                let ctx = musig2_core::KeyAggContext::new(&keys)?;
                if self.key_agg_cache.len() >= KEY_AGG_CACHE_ENTRIES {
                    self.key_agg_cache.clear();
                }
                self.key_agg_cache.insert(keys, ctx.clone());
                ctx
            }
        };
        let mut machine = SessionMachine::with_key_agg(
            announcement,
            self.keypair,
            self.local_peer,
            &self.config,
            now,
            Some(&base),
        )?;
        if machine.is_misrouted() {
            let listed = machine
                .listed_peer(machine.signer_index())
                .unwrap_or(self.local_peer);
            tracing::warn!(session = %id, %listed, "refusing a session that lists another peer for our key");
            self.emit(Event::SessionRefused {
                session: id,
                listed_peer: listed,
            });
            let outputs = machine.refuse(now);
            self.sessions.insert(id, machine);
            self.process(outputs);
            let _ = self.pending.take(&id, now);
            return Err(CoordinatorError::Misrouted {
                session: id,
                listed,
            });
        }
        let listed_peers: Vec<PeerId> = (0..machine.announcement().signer_count())
            .filter_map(|i| SignerIndex::try_from(i).ok())
            .filter(|&i| i != machine.signer_index())
            .filter_map(|i| machine.peer_of(i))
            .collect();
        if let Some(waiting) = self.announcement_waiters.remove(&id) {
            for w in waiting {
                let _ = w.send(machine.announcement().clone());
            }
        }
        self.sessions.insert(id, machine);
        if let Some(signed) = created {
            self.emit(Event::SessionCreated { session: id });
            // Sent at the next flush, ahead of the session's envelopes.
            self.staged.announcements.push((id, signed, listed_peers));
            if let Some(m) = self.sessions.get_mut(&id) {
                let outputs = m.join(now, &mut self.rng);
                self.process(outputs);
            }
        } else {
            self.unjoined.push_back((id, creator_key, now));
            self.emit(Event::SessionDiscovered { session: id });
        }
        for (from, frame) in self.pending.take(&id, now) {
            match decode_frame(&frame, &self.config.limits) {
                Ok(Frame::Envelope(envelope)) => self.route(from, envelope).await,
                Ok(Frame::Batch(envelopes)) => {
                    for envelope in envelopes {
                        self.route(from, envelope).await;
                    }
                }
                Ok(Frame::Signatures(finals)) => self.route_final_signatures(from, &finals).await,
                Ok(Frame::Announcement(_)) => {}
                Err(e) => {
                    tracing::debug!(%from, error = %e, "dropped an undecodable buffered frame");
                    self.offence(from, "undecodable frame").await;
                }
            }
        }
        Ok(())
    }

    async fn handle_frame(&mut self, from: PeerId, bytes: Bytes) {
        self.stats.frame_in();
        if self.blocked.contains_key(&from) {
            // Queued before the block took effect.
            return;
        }
        let now = self.clock.now_ms();
        // Cheap checks on the header before any decoding or verification.
        if let Some(header) = peek_envelope_header(&bytes, &self.config.limits) {
            match self.sessions.get(&header.session_id) {
                None => {
                    self.buffer_pending(from, header.session_id, bytes, now)
                        .await;
                    return;
                }
                // After the signature, broadcast confirmations and claims still count.
                Some(m) if m.phase().is_terminal() && m.open_to_confirmation() => {}
                Some(m) if m.phase().is_terminal() => {
                    // A signer that restarted asks with its join: tell it how the session ended.
                    // A listed star coordinator's join may be the first this member sees of it
                    // (ADR 0012): the frame is decoded only when it comes from that peer.
                    let asks = m.is_join_replay(&header)
                        || (m.peer_of(header.signer) == Some(from)
                            && header.signer == m.coordinator()
                            && matches!(
                                decode_frame(&bytes, &self.config.limits),
                                Ok(Frame::Envelope(e)) if m.is_unheard_coordinator_join(&e, from)
                            ));
                    if asks {
                        if let Some(m) = self.sessions.get_mut(&header.session_id) {
                            let outputs = m.answer_finished(from, now);
                            self.process(outputs);
                        }
                    }
                    return;
                }
                Some(m) if m.is_exact_replay(&header) => {
                    tracing::trace!(%from, session = %header.session_id, "dropped an exact replay");
                    // A restarted signer asks with its join for what it may have lost.
                    if m.is_join_replay(&header) {
                        if let Some(m) = self.sessions.get_mut(&header.session_id) {
                            let outputs = m.answer_repeat(from, now);
                            self.process(outputs);
                        }
                    }
                    self.light_offence(from, "exact replay").await;
                    return;
                }
                Some(_) => {}
            }
        } else if let Some(session) = peek_frame_session(&bytes, &self.config.limits) {
            // A batch (honest batches hold one session's envelopes: one machine step's output) or
            // a session's final signatures.
            match self.sessions.get(&session) {
                None => {
                    self.buffer_pending(from, session, bytes, now).await;
                    return;
                }
                Some(m) if m.phase().is_terminal() && m.open_to_confirmation() => {}
                Some(m) if m.phase().is_terminal() => {
                    // A restarted signer's batch starts with its join (decoding costs no
                    // signature check, and the answers are bounded per signer).
                    let asks = matches!(
                        decode_frame(&bytes, &self.config.limits),
                        Ok(Frame::Batch(envelopes)) if envelopes.first().is_some_and(|e| m.is_join_copy(e) || m.is_unheard_coordinator_join(e, from))
                    );
                    if asks {
                        if let Some(m) = self.sessions.get_mut(&session) {
                            let outputs = m.answer_finished(from, now);
                            self.process(outputs);
                        }
                    }
                    return;
                }
                Some(_) => {}
            }
        } else if bytes.first() == Some(&0)
            && bytes.len() <= self.config.limits.max_frame_bytes
            && !self.announcement_budget.take(from, bytes.len(), now)
        {
            // Announcements cost a decode, a signature and a key aggregation per signer: their
            // bytes are budgeted per peer and overall before any of that. An oversized frame is
            // refused undecoded below and spends nobody's budget (ADR 0012).
            // Over it, the frame is set aside undecoded (ADR 0025): taken in when the budgets
            // have room, or at once for a local caller that looks its session up (and pays for
            // the check). Not an offence: an honest creator running many sessions goes over the
            // budget too (blocking it would fail every session it has with us). A flood is the
            // transport's rate limit's business.
            tracing::debug!(%from, "announcement over budget");
            self.stats.rejected("announcement_over_budget");
            if self.set_aside.push(from, bytes, now).is_ok() {
                self.set_aside_drain_at
                    .get_or_insert(now.saturating_add(SET_ASIDE_DRAIN_MS));
                self.adopt_awaited(now).await;
            }
            return;
        }
        let frame = match decode_frame(&bytes, &self.config.limits) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(%from, error = %e, "dropped undecodable frame");
                self.stats.rejected("undecodable_frame");
                self.offence(from, "undecodable frame").await;
                return;
            }
        };
        match frame {
            Frame::Announcement(signed) => self.announcement_arrived(from, &signed, now).await,
            Frame::Envelope(envelope) => self.route(from, envelope).await,
            Frame::Batch(envelopes) => {
                for envelope in envelopes {
                    self.route(from, envelope).await;
                }
            }
            Frame::Signatures(finals) => self.route_final_signatures(from, &finals).await,
        }
    }

    /// Hands a session's unsigned final signatures to its machine (ADR 0015).
    async fn route_final_signatures(&mut self, from: PeerId, finals: &FinalSignatures) {
        let id = finals.session_id();
        let now = self.clock.now_ms();
        let Some(machine) = self.sessions.get_mut(&id) else {
            return;
        };
        match machine.handle_final_signatures(from, finals, now) {
            Ok(outputs) => self.process(outputs),
            Err(e) => {
                tracing::debug!(session = %id, %from, error = %e, "rejected final signatures");
                self.stats.rejected(crate::stats::rejection_reason(&e));
                if e.peer_action() == PeerAction::Penalize {
                    self.offence(from, "invalid final signatures").await;
                }
            }
        }
    }

    async fn route(&mut self, from: PeerId, envelope: SignedEnvelope) {
        let id = envelope.envelope().session_id();
        let now = self.clock.now_ms();
        let Some(machine) = self.sessions.get_mut(&id) else {
            let frame = Bytes::from(envelope.to_frame_bytes());
            self.buffer_pending(from, id, frame, now).await;
            return;
        };
        // A relay of a verified envelope is not answerable for what its author put in it (a
        // jump in numbers, a re-signed copy, a body of the wrong kind): honest relays forward
        // what they verified, and counting that against them would let a lying signer get an
        // honest relay blocked.
        let direct = machine.peer_of(envelope.envelope().signer()) == Some(from)
            || crate::machine::is_join_from(envelope.envelope().body(), from);
        let span = tracing::info_span!("session", id = %id, peer = %from);
        let result = span.in_scope(|| machine.handle_envelope(from, envelope, now, &mut self.rng));
        match result {
            Ok(outputs) => {
                self.process(outputs);
                // A broadcast confirmation may have settled a finished session.
                self.shed_if_finished(&id);
            }
            Err(e) => {
                let deliverers_fault = direct
                    || matches!(
                        e,
                        CoordinatorError::InvalidMessage { .. }
                            | CoordinatorError::UnboundPeer { .. }
                    );
                tracing::debug!(session = %id, %from, error = %e, action = ?e.peer_action(), deliverers_fault, "rejected envelope");
                self.stats.rejected(crate::stats::rejection_reason(&e));
                if e.peer_action() == PeerAction::Penalize && deliverers_fault {
                    self.offence(from, "rejected envelope").await;
                }
            }
        }
    }

    /// Takes in an announcement within its budget.
    async fn announcement_arrived(&mut self, from: PeerId, signed: &SignedAnnouncement, now: u64) {
        // Cheap checks before the signature: one we hold (its id covers all of its content) or
        // held and finished, or one that does not name us, costs no verification. A late copy
        // of a finished session is no offence: an honest relay may hold one.
        let id = signed.session_id();
        if self.sessions.contains_key(&id) || self.forgotten_ids.contains(&id) {
            return;
        }
        let me = self.keypair.public_key();
        if !signed.announcement().signers.iter().any(|s| s.key == me) {
            tracing::debug!(%from, "announcement does not name us");
            self.offence(from, "announcement not naming us").await;
            return;
        }
        match signed.verify(now, &self.config.limits) {
            Ok(verified) => {
                if let Err(e) = self.insert(verified, false, now).await {
                    tracing::debug!(%from, error = %e, "announcement not taken");
                }
            }
            Err(e) => {
                tracing::debug!(%from, error = %e, "invalid announcement");
                self.stats.rejected("invalid_announcement");
                self.offence(from, "invalid announcement").await;
            }
        }
    }

    /// Takes in set-aside announcements, oldest first, as far as their senders' budgets and the
    /// node's have refilled: the budgets bound the work, the buffer only delays it (ADR 0025).
    async fn drain_set_aside(&mut self, now: u64) {
        let budget = &mut self.announcement_budget;
        let affordable = self
            .set_aside
            .take_affordable(now, |from, len| budget.take(from, len, now));
        self.set_aside_drain_at =
            (!self.set_aside.is_empty()).then(|| now.saturating_add(SET_ASIDE_DRAIN_MS));
        for (from, frame) in affordable {
            match SignedAnnouncement::decode(&frame, &self.config.limits) {
                Ok(signed) => self.announcement_arrived(from, &signed, now).await,
                Err(e) => {
                    tracing::debug!(%from, error = %e, "dropped an undecodable set-aside frame");
                    self.stats.rejected("undecodable_frame");
                    self.offence(from, "undecodable frame").await;
                }
            }
        }
    }

    /// The announcement of `session`, which a local caller looks up, from among those set aside
    /// over their budget: verified now (the caller's cost, not the sender's) and taken in as if
    /// it had just arrived. A copy that fails its check is the sender's offence, as on arrival.
    async fn adopt_set_aside(
        &mut self,
        session: SessionId,
        now: u64,
    ) -> Option<VerifiedAnnouncement> {
        let found = self.set_aside.take(&session, now, &self.config.limits);
        for from in found.undecodable {
            self.stats.rejected("undecodable_frame");
            self.offence(from, "undecodable frame").await;
        }
        let me = self.keypair.public_key();
        for (from, signed) in found.candidates {
            let verified = match signed.verify_id(&session, now, &self.config.limits) {
                Ok(verified) => verified,
                Err(e) => {
                    tracing::debug!(%from, error = %e, "invalid set-aside announcement");
                    self.stats.rejected("invalid_announcement");
                    self.offence(from, "invalid announcement").await;
                    continue;
                }
            };
            if verified.index_of(&me).is_none() {
                self.offence(from, "announcement not naming us").await;
                continue;
            }
            if let Err(e) = self.insert(verified, false, now).await {
                tracing::debug!(%from, session = %session, error = %e, "set-aside announcement not taken");
                return None;
            }
            return self
                .sessions
                .get(&session)
                .map(|m| m.announcement().clone());
        }
        None
    }

    /// Takes in any set-aside announcement a local caller is waiting for.
    async fn adopt_awaited(&mut self, now: u64) {
        if self.announcement_waiters.is_empty() {
            return;
        }
        let awaited: Vec<SessionId> = self.announcement_waiters.keys().copied().collect();
        for session in awaited {
            // `insert` hands it to the waiters.
            let _ = self.adopt_set_aside(session, now).await;
        }
    }

    async fn buffer_pending(&mut self, from: PeerId, id: SessionId, frame: Bytes, now: u64) {
        if let Err(why) = self.pending.push(from, id, frame, now) {
            tracing::debug!(%from, session = %id, ?why, "not buffered for an unknown session");
            self.light_offence(from, "frames for unknown sessions past its share")
                .await;
        }
    }

    async fn tick(&mut self) {
        let now = self.clock.now_ms();
        self.unblock_expired(now).await;
        self.pending.expire(now);
        if self.set_aside_drain_at.is_some_and(|at| at <= now) {
            self.drain_set_aside(now).await;
        }
        self.expire_unjoined(now);
        self.forget_finished(now);
        self.expire_forgotten(now);
        if self
            .deferred_since
            .is_some_and(|t| t.saturating_add(DEFERRED_COMMIT_MS) <= now)
        {
            self.commit_deferred().await;
        }
        for id in self.sessions.due(now) {
            if let Some(m) = self.sessions.get_mut(&id) {
                let outputs = m.tick(now, &mut self.rng);
                self.process(outputs);
                self.shed_if_finished(&id);
            }
        }
    }

    fn peer_disconnected(&mut self, peer: PeerId) {
        let mut events = Vec::new();
        for (id, m) in self.sessions.iter() {
            if m.phase().is_terminal() {
                continue;
            }
            if let Some(signer) = m.signer_of(&peer) {
                events.push(Event::ParticipantDisconnected {
                    session: *id,
                    signer,
                    peer,
                });
            }
        }
        for e in events {
            self.emit(e);
        }
    }

    /// Sends and emits what a machine asked for. Envelopes for the same peer produced by one step
    /// go out as one batch frame.
    /// Stages what a machine step asked for; [`Actor::flush`] stores its records and then
    /// sends and emits the rest.
    fn process(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, envelopes } => {
                    let Some(session) = envelopes.first().map(|e| e.envelope().session_id()) else {
                        continue;
                    };
                    match self
                        .staged
                        .sends
                        .iter_mut()
                        .find(|(s, p, _)| *p == to && *s == session)
                    {
                        Some((_, _, list)) => list.extend(envelopes),
                        None => self.staged.sends.push((session, to, envelopes)),
                    }
                }
                Output::SendFinalSignatures { to, signatures } => {
                    let frame = Bytes::from(signatures.to_frame_bytes());
                    self.staged
                        .finals
                        .push((signatures.session_id(), to, frame));
                }
                Output::Seal(envelopes) => self.staged.ahead.extend(envelopes),
                Output::Event(event) => self.staged.events.push(event),
                Output::Persist(records) => self.staged.records.extend(records),
                Output::PersistLater(records) => self.staged.later.extend(records),
            }
        }
    }

    /// Commits the staged records (one transaction for every session that produced some),
    /// then sends the staged frames and emits the staged events. If the commit fails nothing
    /// staged for the sessions concerned is sent, and they abort here.
    async fn flush(&mut self) {
        if self.staged.is_empty() && self.purge.is_empty() {
            return;
        }
        let mut staged = std::mem::take(&mut self.staged);
        self.stats.batch_sealed(seal_staged(&staged));
        if !staged.records.is_empty() {
            // One transaction, with everything deferred so far: the frames wait for it anyway.
            let mut records = std::mem::take(&mut self.deferred);
            records.append(&mut staged.records);
            records.append(&mut staged.later);
            self.deferred_since = None;
            let purge = std::mem::take(&mut self.purge);
            let result = self.commit(records.clone(), purge).await;
            if let Err(error) = result {
                self.commit_failed(&records, &error, &mut staged);
            }
        }
        let later = std::mem::take(&mut staged.later);
        for (_, announcement, peers) in std::mem::take(&mut staged.announcements) {
            let frame = Bytes::from(announcement.to_frame_bytes());
            for peer in peers {
                self.send_frame(peer, frame.clone());
            }
        }
        let max_batch = self.config.limits.max_batch_entries.max(1);
        for (_, peer, envelopes) in std::mem::take(&mut staged.sends) {
            for chunk in envelopes.chunks(max_batch) {
                let frame = match chunk {
                    [single] => Frame::Envelope(single.clone()).encode(),
                    many => Frame::encode_batch(many),
                };
                self.send_frame(peer, Bytes::from(frame));
            }
        }
        for (_, peer, frame) in std::mem::take(&mut staged.finals) {
            self.send_frame(peer, frame);
        }
        if !later.is_empty() {
            self.deferred.extend(later);
            self.deferred_since.get_or_insert(self.clock.now_ms());
        }
        for event in std::mem::take(&mut staged.events) {
            self.on_event(event);
        }
        for (_, reply, result) in std::mem::take(&mut staged.replies) {
            let _ = reply.send(result);
        }
        if self.deferred.len() >= MAX_DEFERRED_RECORDS {
            self.commit_deferred().await;
        }
    }

    /// Commits the deferred records and the purge now.
    async fn commit_deferred(&mut self) {
        self.deferred_since = None;
        if self.deferred.is_empty() && self.purge.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.deferred);
        let purge = std::mem::take(&mut self.purge);
        if let Err(error) = self.commit(records.clone(), purge).await {
            let mut staged = Staged::default();
            self.commit_failed(&records, &error, &mut staged);
            for event in staged.events {
                self.on_event(event);
            }
        }
    }

    /// The sessions whose records a failed commit held: nothing still staged for them is sent,
    /// and they abort here.
    fn commit_failed(&mut self, records: &[Record], error: &CoordinatorError, staged: &mut Staged) {
        let failed: HashSet<SessionId> = records.iter().map(Record::session_id).collect();
        tracing::error!(%error, sessions = failed.len(), "store commit failed: sending nothing of it");
        staged
            .announcements
            .retain(|(session, _, _)| !failed.contains(session));
        staged
            .sends
            .retain(|(session, _, _)| !failed.contains(session));
        staged
            .finals
            .retain(|(session, _, _)| !failed.contains(session));
        // A caller told "created" or "joined" would believe in a session that exists nowhere.
        for (session, _, result) in &mut staged.replies {
            if result.is_ok() && failed.contains(session) {
                *result = Err(CoordinatorError::Store(error.to_string()));
            }
        }
        let now = self.clock.now_ms();
        for session in failed {
            for w in self.waiters.remove(&session).unwrap_or_default() {
                let _ = w.send(Err(CoordinatorError::Store(error.to_string())));
            }
            if let Some(m) = self.sessions.get_mut(&session) {
                for output in m.store_failed(now) {
                    if let Output::Event(event) = output {
                        staged.events.push(event);
                    }
                }
            }
        }
    }

    /// One store transaction (a durable store's runs on a blocking thread), then the purge.
    async fn commit(&self, records: Vec<Record>, purge: Purge) -> Result<()> {
        if records.is_empty() && purge.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let stats = self.stats.clone();
        let work = move || -> Result<()> {
            let started = std::time::Instant::now();
            let result = commit_to(&store, &records, &purge);
            stats.store_commit(started.elapsed(), result.is_ok());
            result
        };
        if self.durable {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| CoordinatorError::Store(format!("commit task: {e}")))?
        } else {
            work()
        }
    }

    async fn import(&mut self, stored: StoredSession, now: u64) -> Result<SessionId> {
        let id = stored.session_id();
        if self.sessions.contains_key(&id) {
            return Err(CoordinatorError::SessionExists(id));
        }
        let unfinished = stored.outcome.is_none();
        if unfinished && self.active_sessions() >= self.config.max_concurrent_sessions {
            return Err(CoordinatorError::TooManySessions(
                self.config.max_concurrent_sessions,
            ));
        }
        let (machine, outputs) = SessionMachine::restore(
            &stored,
            self.keypair,
            self.local_peer,
            &self.config,
            now,
            None,
            &mut self.rng,
        )?;
        // Stored before anything the restore wants to send can leave.
        self.commit(stored.to_records(), Purge::default()).await?;
        self.hold_restored(machine, outputs, now, now);
        Ok(id)
    }

    /// Holds a restored machine where its phase belongs and stages what it had to say.
    fn hold_restored(
        &mut self,
        machine: SessionMachine,
        outputs: Vec<Output>,
        finished_at: u64,
        now: u64,
    ) {
        let id = machine.session_id();
        let phase = machine.phase();
        self.sessions.insert(id, machine);
        if phase.is_terminal() {
            self.finished_ids.insert(id);
            self.finished.push_back((id, finished_at));
            self.shed_if_finished(&id);
        } else if phase == Phase::Created {
            self.unjoined.push_back((id, None, now));
        }
        self.process(outputs);
    }

    /// Takes the sessions a store held when the node started.
    fn resume(&mut self, stored: Vec<StoredSession>) {
        let now = self.clock.now_ms();
        for session in stored {
            let id = session.session_id();
            let restored = SessionMachine::restore(
                &session,
                self.keypair,
                self.local_peer,
                &self.config,
                now,
                None,
                &mut self.rng,
            );
            match restored {
                Ok((machine, outputs)) => {
                    let at = session.outcome.as_ref().map_or(now, |(_, at)| *at);
                    self.hold_restored(machine, outputs, at, now);
                }
                Err(error) => {
                    tracing::warn!(session = %id, %error, "a stored session cannot be restored; skipped");
                }
            }
        }
        self.finished.make_contiguous().sort_by_key(|(_, at)| *at);
    }

    fn on_event(&mut self, event: Event) {
        match &event {
            Event::SignatureReady {
                session,
                signatures,
            } => {
                for w in self.waiters.remove(session).unwrap_or_default() {
                    let _ = w.send(Ok(signatures.clone()));
                }
                self.retire(*session);
            }
            Event::Aborted {
                session,
                reason,
                blamed,
                origin,
            } => {
                for w in self.waiters.remove(session).unwrap_or_default() {
                    let _ = w.send(Err(CoordinatorError::Aborted {
                        session: *session,
                        reason: *reason,
                        blamed: blamed.clone(),
                        origin: *origin,
                    }));
                }
                self.retire(*session);
            }
            _ => {}
        }
        self.emit(event);
    }

    /// Keeps a bounded number of finished sessions around for late queries.
    fn retire(&mut self, session: SessionId) {
        if let Some(pos) = self.unjoined.iter().position(|(id, _, _)| *id == session) {
            self.unjoined.remove(pos);
        }
        if !self.finished_ids.insert(session) {
            return;
        }
        self.finished.push_back((session, self.clock.now_ms()));
        self.shed_if_finished(&session);
        self.forget_finished(self.clock.now_ms());
    }

    /// A finished session keeps only what answers a signer that missed the end, and while one
    /// is awaited, what takes a broadcast confirmation ([`SessionMachine::shed`]).
    fn shed_if_finished(&mut self, session: &SessionId) {
        if self.finished_ids.contains(session) {
            if let Some(m) = self.sessions.get_mut(session) {
                m.shed();
            }
        }
    }

    /// Forgets finished sessions past the retention time or count, in memory and (at the next
    /// commit) in the store; returns how many.
    fn forget_finished(&mut self, now: u64) -> usize {
        let keep_ms = millis(self.config.finished_session_retention);
        let mut forgotten = 0;
        while let Some(&(old, at)) = self.finished.front() {
            let too_many = self.finished.len() > self.config.max_finished_sessions;
            if !too_many && now.saturating_sub(at) < keep_ms {
                break;
            }
            self.finished.pop_front();
            self.finished_ids.remove(&old);
            self.forget(old);
            forgotten += 1;
        }
        forgotten
    }

    /// Forgets a finished session: memory now, the store at the next commit, and the DHT
    /// record if we published it (the creator did).
    fn forget(&mut self, session: SessionId) {
        if let Some(m) = self.sessions.remove(&session) {
            let expires_at_ms = m.announcement().announcement().expires_at_ms;
            if self.remember_forgotten(session, expires_at_ms) {
                self.purge.remember.push((session, expires_at_ms));
            }
            if m.announcement().announcement().creator == m.signer_index() {
                let transport = self.transport.clone();
                tokio::spawn(async move {
                    if let Err(error) = transport.dht_remove(dht_key(&session)).await {
                        tracing::debug!(%session, %error, "could not remove the DHT record");
                    }
                });
            }
        }
        self.waiters.remove(&session);
        self.deferred.retain(|r| r.session_id() != session);
        self.purge.sessions.push(session);
        self.deferred_since.get_or_insert(self.clock.now_ms());
    }

    /// Remembers a forgotten finished session until its announcement expires (plus the clock
    /// skew allowed), within `max_forgotten_sessions`, oldest dropped first.
    /// Returns whether it is remembered now (not before, and the bound allows any).
    fn remember_forgotten(&mut self, session: SessionId, expires_at_ms: u64) -> bool {
        if self.config.max_forgotten_sessions == 0 || !self.forgotten_ids.insert(session) {
            return false;
        }
        self.forgotten.push_back((session, expires_at_ms));
        while self.forgotten.len() > self.config.max_forgotten_sessions {
            if let Some((old, _)) = self.forgotten.pop_front() {
                self.drop_forgotten(old);
            }
        }
        true
    }

    /// Stops remembering a forgotten session, here and (at the next commit) in the store.
    fn drop_forgotten(&mut self, session: SessionId) {
        self.forgotten_ids.remove(&session);
        self.drop_forgotten_in_store(session);
    }

    /// Stops remembering a forgotten session in the store, at the next commit.
    fn drop_forgotten_in_store(&mut self, session: SessionId) {
        self.purge.expired.push(session);
        self.deferred_since.get_or_insert(self.clock.now_ms());
    }

    /// Takes the forgotten sessions a store remembered when the node started, oldest expiry
    /// first, within the bound; the store drops those expired or over it at the next commit.
    fn resume_forgotten(&mut self, mut forgotten: Vec<(SessionId, u64)>) {
        forgotten.sort_by_key(|&(id, expires_at_ms)| (expires_at_ms, id.to_bytes()));
        for (session, expires_at_ms) in forgotten {
            if self.sessions.contains_key(&session)
                || !self.remember_forgotten(session, expires_at_ms)
            {
                self.drop_forgotten_in_store(session);
            }
        }
        self.expire_forgotten(self.clock.now_ms());
    }

    /// Drops the forgotten sessions whose announcements can no longer verify.
    fn expire_forgotten(&mut self, now: u64) {
        let skew = millis(self.config.max_clock_skew);
        while let Some(&(old, expires)) = self.forgotten.front() {
            if expires.saturating_add(skew) >= now {
                break;
            }
            self.forgotten.pop_front();
            self.drop_forgotten(old);
        }
    }

    fn emit(&self, event: Event) {
        // No subscribers is fine: events are informational.
        let _ = self.events.send(event);
    }

    /// Queues a frame for `to`; never waits (a slow peer's frames are shed, see [`Outbound`]).
    fn send_frame(&mut self, to: PeerId, frame: Bytes) {
        if let Err(why) = self.outbound.send(to, frame) {
            tracing::warn!(%to, ?why, "shed an outbound frame");
            self.stats.send_failed();
        }
    }
}

/// One store transaction for `records`, then one forgetting `purge`.
fn commit_to(store: &SharedStore, records: &[Record], purge: &Purge) -> Result<()> {
    let mut store = store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !records.is_empty() {
        store.commit(records)?;
    }
    if !purge.is_empty() {
        store.forget(&purge.sessions, &purge.remember, &purge.expired)?;
    }
    Ok(())
}

/// What the next commit forgets in the store: finished sessions, the ids of those (remembered
/// until their announcement expires, the replay guard), and remembered ids the guard dropped.
#[derive(Debug, Default)]
struct Purge {
    sessions: Vec<SessionId>,
    remember: Vec<(SessionId, u64)>,
    expired: Vec<SessionId>,
}

impl Purge {
    fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.remember.is_empty() && self.expired.is_empty()
    }
}
