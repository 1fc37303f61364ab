//! Frames over long-lived libp2p streams.
//!
//! A sender keeps one stream per peer open and writes length-prefixed frames on it back to back;
//! the receiver answers every frame with one status byte, in order. Compared with a
//! request-response exchange per frame this saves, for every frame, opening and negotiating a
//! substream and the timers libp2p arms around both, which is most of the cost of a small frame.
//!
//! Wire format on a stream of [`FRAME_PROTOCOL`], opened by the sender:
//! * sender → receiver: a `u32` big-endian word, then that many bytes; repeated. The word's top
//!   bit ([`ANSWER_LATER`]) says the sender can wait for this frame's answer; the other 31 bits
//!   are the length;
//! * receiver → sender: one [`FrameStatus`] byte per frame, in the order the frames came. A
//!   frame marked [`ANSWER_LATER`] and accepted may have its answer held back (up to the
//!   receiver's `ack_delay`, at most [`ACK_BATCH`] answers) so that several go out in one write;
//!   any other answer goes out as soon as the frames already buffered are read, and takes the
//!   held ones with it (ADR 0024).
//!
//! A receiver answers a length over its limit with [`FrameStatus::TooLarge`] and closes the
//! stream; it drops the stream on a truncated frame or a body that stalls. Either way the
//! sender fails the frames it is still waiting for (or resends them on a fresh stream where
//! they cannot have been read; see [`Links::send`]).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use libp2p::{Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::frame_behaviour::{OpenError, StreamOpener};
use crate::{Inbound, PeerId, Result, TransportError};

/// The stream protocol that carries frames.
pub const FRAME_PROTOCOL: StreamProtocol = StreamProtocol::new("/musig2-p2p/frames/3.0.0");

/// The top bit of a frame's length word: the sender can wait for the answer (it pipelines its
/// frames and nothing it does waits on this one's status), so the receiver may hold the answer
/// back to write it with others.
pub const ANSWER_LATER: u32 = 1 << 31;

/// Most answers a receiver holds back for frames marked [`ANSWER_LATER`]; the sender's
/// pipelining depth per peer should be above it, or it waits for the receiver's `ack_delay`.
pub const ACK_BATCH: usize = 16;

/// Frame streams one peer may hold open towards us at once. An honest peer uses one per
/// connection (briefly two while it replaces a broken one).
const MAX_INBOUND_STREAMS_PER_PEER: usize = 4;

/// Most peers we keep an outbound stream to; past this, idle ones are closed first.
const MAX_LINKS: usize = 4096;

/// The receiver's answer to one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameStatus {
    /// The frame is in the receiver's inbound queue.
    Accepted,
    /// The receiver's inbound queue is full.
    Busy,
    /// The sender exceeded the receiver's per-peer rate limit.
    RateLimited,
    /// The frame is over the receiver's size limit; the receiver read only its length and
    /// closes the stream after this answer.
    TooLarge,
}

impl FrameStatus {
    /// The status as it goes on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::Busy => 1,
            Self::RateLimited => 2,
            Self::TooLarge => 3,
        }
    }

    /// Parses a status byte; `None` for an unknown one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Accepted),
            1 => Some(Self::Busy),
            2 => Some(Self::RateLimited),
            3 => Some(Self::TooLarge),
            _ => None,
        }
    }

    fn into_result(self, peer: PeerId) -> Result<()> {
        match self {
            Self::Accepted => Ok(()),
            Self::Busy | Self::RateLimited => Err(TransportError::Backpressure(peer)),
            Self::TooLarge => Err(TransportError::Remote {
                peer,
                reason: "frame over the receiver's size limit".to_owned(),
            }),
        }
    }
}

/// One frame as it goes on the wire, in one buffer so it leaves in one write; `later`: the
/// sender can wait for its answer ([`ANSWER_LATER`]).
fn encode(frame: &[u8], later: bool) -> Result<Vec<u8>> {
    let word = length_word(frame.len(), later)?;
    let mut wire = Vec::with_capacity(4 + frame.len());
    wire.extend_from_slice(&word.to_be_bytes());
    wire.extend_from_slice(frame);
    Ok(wire)
}

/// The word in front of a frame of `len` bytes; a length that needs the top bit is refused.
fn length_word(len: usize, later: bool) -> Result<u32> {
    let len = u32::try_from(len)
        .ok()
        .filter(|len| len & ANSWER_LATER == 0)
        .ok_or(TransportError::FrameTooLarge {
            size: len,
            max: (ANSWER_LATER - 1) as usize,
        })?;
    Ok(if later { len | ANSWER_LATER } else { len })
}

/// Why reading a frame failed.
#[derive(Debug)]
enum ReadError {
    /// The announced length is over the limit (nothing of the body was read).
    TooLarge(usize),
    /// The stream failed, ended inside a frame, or the body stalled.
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge(len) => write!(f, "frame of {len} bytes is over the limit"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

/// One frame as read, and whether its sender can wait for the answer ([`ANSWER_LATER`]).
#[derive(Debug)]
struct ReadFrame {
    body: Bytes,
    later: bool,
}

/// Reads one frame; `Ok(None)` when the stream ends between frames. The length is checked
/// against `max` before any of the body is read, and the body buffer grows only as bytes
/// arrive, so a peer that announces a large frame and stalls holds no more than it sent.
async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    max: usize,
    body_timeout: Duration,
) -> std::result::Result<Option<ReadFrame>, ReadError> {
    let mut word = [0u8; 4];
    match io.read_exact(&mut word).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    }
    let word = u32::from_be_bytes(word);
    let later = word & ANSWER_LATER != 0;
    let len = (word & !ANSWER_LATER) as usize;
    if len > max {
        return Err(ReadError::TooLarge(len));
    }
    let mut body = Vec::new();
    let mut limited = (&mut *io).take(len as u64);
    match tokio::time::timeout(body_timeout, limited.read_to_end(&mut body)).await {
        Ok(Ok(n)) if n == len => Ok(Some(ReadFrame {
            body: Bytes::from(body),
            later,
        })),
        Ok(Ok(_)) => Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
        Ok(Err(e)) => Err(ReadError::Io(e)),
        Err(_) => Err(ReadError::Io(io::ErrorKind::TimedOut.into())),
    }
}

// ---- receiving -------------------------------------------------------------------------------

struct RateBucket {
    /// Frame tokens.
    tokens: f64,
    /// Byte tokens.
    bytes: f64,
    last: std::time::Instant,
}

#[derive(Default)]
struct PeerInbound {
    streams: usize,
    bucket: Option<RateBucket>,
    /// When we last reported this peer as rate-limited.
    reported: Option<std::time::Instant>,
}

/// How much of a frame stream is read ahead.
const STREAM_READ_BUFFER: usize = 16 * 1024;

/// Most answers held back while a burst of frames is read.
const MAX_DEFERRED_ANSWERS: usize = 64;

/// A peer over its rate is reported at most this often.
const RATE_REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// The answers read but not yet written on one inbound stream.
#[derive(Default)]
struct PendingAnswers {
    bytes: Vec<u8>,
    /// When the held answers must go out; `None` while nothing is held (or something is due
    /// at once).
    due: Option<tokio::time::Instant>,
    /// An answer that may not wait is among them.
    hurry: bool,
}

impl PendingAnswers {
    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Adds an answer; `can_wait`: it may be held back for `delay`.
    fn push(&mut self, status: FrameStatus, can_wait: bool, delay: Duration) {
        self.bytes.push(status.to_byte());
        if can_wait {
            self.due
                .get_or_insert_with(|| tokio::time::Instant::now() + delay);
        } else {
            self.hurry = true;
        }
    }

    /// Whether the answers should be written now rather than held.
    fn due_now(&self) -> bool {
        self.hurry || self.bytes.len() >= ACK_BATCH
    }

    /// Writes every answer held and clears them.
    async fn write(&mut self, stream: &mut Stream, peer: PeerId) -> io::Result<()> {
        let written = async {
            stream.write_all(&self.bytes).await?;
            stream.flush().await
        }
        .await;
        self.bytes.clear();
        self.due = None;
        self.hurry = false;
        if let Err(error) = &written {
            tracing::debug!(%peer, %error, "frame stream closed while answering");
        }
        written
    }
}

/// The limits of a node's inbound frames (from `Libp2pConfig`).
pub(crate) struct InboundLimits {
    pub(crate) max_frame: usize,
    pub(crate) rate: u32,
    pub(crate) byte_rate: u64,
    pub(crate) body_timeout: Duration,
    pub(crate) max_queued_bytes: usize,
    pub(crate) ack_delay: Duration,
}

/// What every inbound stream of a node shares: the inbound queue, limits and per-peer state.
pub(crate) struct InboundFrames {
    queue: mpsc::Sender<Inbound>,
    /// Bytes in the queue (taken off by the receiving side), and their bound.
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    max_queued_bytes: usize,
    max_frame: usize,
    rate: u32,
    byte_rate: u64,
    /// Weak, so the event stream still ends when the transport shuts down.
    events: Option<tokio::sync::broadcast::WeakSender<crate::PeerEvent>>,
    body_timeout: Duration,
    /// How long the answer to a frame marked [`ANSWER_LATER`] may be held back.
    ack_delay: Duration,
    peers: Mutex<HashMap<PeerId, PeerInbound>>,
}

impl InboundFrames {
    pub(crate) fn new(
        queue: mpsc::Sender<Inbound>,
        limits: InboundLimits,
        events: Option<tokio::sync::broadcast::WeakSender<crate::PeerEvent>>,
        queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Arc<Self> {
        Arc::new(Self {
            queue,
            queued_bytes,
            max_queued_bytes: limits.max_queued_bytes,
            max_frame: limits.max_frame,
            rate: limits.rate,
            byte_rate: limits.byte_rate,
            events,
            body_timeout: limits.body_timeout,
            ack_delay: limits.ack_delay,
            peers: Mutex::new(HashMap::new()),
        })
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, PeerInbound>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers a frame to our own queue (a send to ourselves).
    pub(crate) fn deliver_local(&self, from: PeerId, frame: Bytes) -> Result<()> {
        if self.queue.is_closed() {
            return Err(TransportError::Closed);
        }
        if self.enqueue(from, frame) {
            Ok(())
        } else {
            Err(TransportError::Backpressure(from))
        }
    }

    /// Forgets a peer's rate state once it has no connection left.
    pub(crate) fn forget(&self, peer: PeerId) {
        let mut peers = self.peers();
        if peers.get(&peer).is_some_and(|p| p.streams == 0) {
            peers.remove(&peer);
        }
    }

    /// Takes one frame token and `len` byte tokens from the peer's buckets (each refills at its
    /// rate per second and holds at most one second's worth, or one largest frame of bytes).
    fn allow(&self, peer: PeerId, len: usize) -> bool {
        if self.rate == 0 && self.byte_rate == 0 {
            return true;
        }
        let rate = if self.rate == 0 {
            f64::INFINITY
        } else {
            f64::from(self.rate)
        };
        let byte_rate = if self.byte_rate == 0 {
            f64::INFINITY
        } else {
            self.byte_rate as f64
        };
        let byte_burst = byte_rate.max(self.max_frame as f64);
        let now = std::time::Instant::now();
        let mut peers = self.peers();
        let state = peers.entry(peer).or_default();
        let bucket = state.bucket.get_or_insert(RateBucket {
            tokens: rate,
            bytes: byte_burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.bytes = (bucket.bytes + elapsed * byte_rate).min(byte_burst);
        bucket.last = now;
        let len = len as f64;
        if bucket.tokens >= 1.0 && bucket.bytes >= len {
            bucket.tokens -= 1.0;
            bucket.bytes -= len;
            return true;
        }
        let due = state
            .reported
            .is_none_or(|at| now.duration_since(at) >= RATE_REPORT_INTERVAL);
        if due {
            state.reported = Some(now);
            if let Some(events) = self.events.as_ref().and_then(|w| w.upgrade()) {
                let _ = events.send(crate::PeerEvent::RateLimited(peer));
            }
        }
        false
    }

    fn admit(&self, from: PeerId, frame: Bytes) -> FrameStatus {
        if !self.allow(from, frame.len()) {
            return FrameStatus::RateLimited;
        }
        if self.enqueue(from, frame) {
            FrameStatus::Accepted
        } else {
            FrameStatus::Busy
        }
    }

    /// Queues a frame if the queue has room in frames and in bytes.
    fn enqueue(&self, from: PeerId, frame: Bytes) -> bool {
        use std::sync::atomic::Ordering;
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.max_queued_bytes && before > 0 {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        if self.queue.try_send(Inbound { from, frame }).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Counts a new stream of `peer`; false if it already holds the most it may.
    fn open_stream(&self, peer: PeerId) -> bool {
        let mut peers = self.peers();
        let state = peers.entry(peer).or_default();
        if state.streams >= MAX_INBOUND_STREAMS_PER_PEER {
            return false;
        }
        state.streams += 1;
        true
    }

    fn close_stream(&self, peer: PeerId) {
        let mut peers = self.peers();
        let Some(state) = peers.get_mut(&peer) else {
            return;
        };
        state.streams = state.streams.saturating_sub(1);
        // A bucket that has refilled is the same as a fresh one: nothing worth keeping.
        let rate = f64::from(self.rate);
        let refilled = state.bucket.as_ref().is_none_or(|b| {
            let elapsed = b.last.elapsed().as_secs_f64();
            b.tokens + elapsed * rate >= rate
                && b.bytes + elapsed * self.byte_rate as f64
                    >= (self.byte_rate as f64).max(self.max_frame as f64)
        });
        if state.streams == 0 && refilled {
            peers.remove(&peer);
        }
    }

    /// Serves one peer's stream until it ends or breaks the protocol. Answers go out in order.
    /// While more frames are already buffered they are written together (one write and flush
    /// for a burst, not one per frame), so a flooding peer costs few writes. An accepted frame
    /// marked [`ANSWER_LATER`] may wait up to `ack_delay` for more (at most [`ACK_BATCH`]);
    /// any other answer is written once the buffered frames are read, with the held ones.
    async fn serve(self: Arc<Self>, peer: PeerId, stream: Stream) {
        let mut reader = futures::io::BufReader::with_capacity(STREAM_READ_BUFFER, stream);
        let mut answers = PendingAnswers::default();
        loop {
            if let Some(due) = answers.due {
                // Held answers: wait for the next frame, or for them to fall due. Filling the
                // buffer consumes nothing, so losing the race to the timer loses no input.
                let next_frame = futures::future::poll_fn(|cx| {
                    futures::AsyncBufRead::poll_fill_buf(std::pin::Pin::new(&mut reader), cx)
                        .map(|_| ())
                });
                let timed_out = tokio::select! {
                    biased;
                    () = next_frame => false,
                    () = tokio::time::sleep_until(due) => true,
                };
                if timed_out {
                    if answers.write(reader.get_mut(), peer).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
            let (status, later, more) =
                match read_frame(&mut reader, self.max_frame, self.body_timeout).await {
                    Ok(Some(frame)) => (self.admit(peer, frame.body), frame.later, true),
                    Ok(None) => break,
                    // The body is still on the stream: answer, then drop the stream.
                    Err(ReadError::TooLarge(len)) => {
                        tracing::debug!(%peer, len, "frame over the size limit");
                        (FrameStatus::TooLarge, false, false)
                    }
                    Err(error) => {
                        tracing::debug!(%peer, %error, "dropping a frame stream");
                        break;
                    }
                };
            let can_wait = later && status == FrameStatus::Accepted && !self.ack_delay.is_zero();
            answers.push(status, can_wait, self.ack_delay);
            let burst_continues =
                more && !reader.buffer().is_empty() && answers.len() < MAX_DEFERRED_ANSWERS;
            if burst_continues || (more && !answers.due_now()) {
                continue;
            }
            if answers.write(reader.get_mut(), peer).await.is_err() || !more {
                break;
            }
        }
        if answers.len() > 0 {
            let _ = answers.write(reader.get_mut(), peer).await;
        }
        self.close_stream(peer);
    }

    /// Accepts frame streams until `incoming` ends; every stream is served in its own task,
    /// all of which end with this one.
    pub(crate) fn spawn_accept(
        self: Arc<Self>,
        mut incoming: mpsc::Receiver<(libp2p::PeerId, Stream)>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut serving = JoinSet::new();
            loop {
                tokio::select! {
                    next = incoming.recv() => {
                        let Some((peer, stream)) = next else { break };
                        let peer = PeerId::from_libp2p(peer);
                        if self.open_stream(peer) {
                            serving.spawn(Arc::clone(&self).serve(peer, stream));
                        } else {
                            tracing::debug!(%peer, "too many frame streams from one peer");
                        }
                    }
                    Some(_) = serving.join_next(), if !serving.is_empty() => {}
                }
            }
        })
    }
}

// ---- sending ---------------------------------------------------------------------------------

/// The frames written on a link and still waiting for their status, oldest first.
#[derive(Default)]
struct AckQueue {
    state: Mutex<AckState>,
}

/// What became of one frame written on a link.
enum AckOutcome {
    /// The receiver answered it.
    Answered(Result<()>),
    /// The link broke before its answer. `retry`: the frame is worth sending again on a fresh
    /// stream (see [`Links::send`]).
    Lost { reason: String, retry: bool },
}

#[derive(Default)]
struct AckState {
    waiting: VecDeque<oneshot::Sender<AckOutcome>>,
    /// Statuses received so far.
    answered: u64,
    /// Why the link stopped, once it has, and whether what it lost may be retried.
    broken: Option<(String, bool)>,
}

impl AckQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, AckState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a waiter for the next frame; if the link is already broken, how it broke.
    fn push(&self, waiter: oneshot::Sender<AckOutcome>) -> std::result::Result<(), AckOutcome> {
        let mut state = self.state();
        let retry = state.answered == 0;
        match &state.broken {
            Some((reason, retry_all)) => Err(AckOutcome::Lost {
                reason: reason.clone(),
                retry: retry || *retry_all,
            }),
            None => {
                state.waiting.push_back(waiter);
                Ok(())
            }
        }
    }

    /// How a frame whose write failed on this link is reported.
    fn write_failed(&self, reason: String) -> AckOutcome {
        let state = self.state();
        let retry_all = state.broken.as_ref().is_some_and(|(_, all)| *all);
        AckOutcome::Lost {
            reason,
            retry: state.answered == 0 || retry_all,
        }
    }

    fn is_broken(&self) -> bool {
        self.state().broken.is_some()
    }

    fn is_idle(&self) -> bool {
        self.state().waiting.is_empty()
    }

    /// Marks the link broken and fails every frame still waiting. They are worth retrying if
    /// the peer answered nothing on this link (it most likely dropped the stream unread), or
    /// if `unread` says the peer read none of them.
    fn fail(&self, reason: String, unread: bool) {
        let (waiting, retry) = {
            let mut state = self.state();
            let retry = unread || state.answered == 0;
            state.broken.get_or_insert((reason.clone(), unread));
            (std::mem::take(&mut state.waiting), retry)
        };
        for waiter in waiting {
            let _ = waiter.send(AckOutcome::Lost {
                reason: reason.clone(),
                retry,
            });
        }
    }
}

/// An open outbound stream to one peer.
struct Link {
    generation: u64,
    writer: WriteHalf<Stream>,
    acks: Arc<AckQueue>,
    reader: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
        // Frames written by other callers and still waiting fail now rather than at their
        // deadline.
        self.acks.fail("frame stream closed".to_owned(), false);
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Link>>>;

struct LinksInner {
    opener: StreamOpener,
    slots: Mutex<HashMap<PeerId, Slot>>,
    generations: AtomicU64,
    idle: Duration,
}

/// The outbound side: one link per peer, opened on the first frame and reopened after a failure.
pub(crate) struct Links {
    inner: Arc<LinksInner>,
}

impl Links {
    /// `idle`: a link with nothing in flight for this long is closed (so the connection can idle
    /// out as well).
    pub(crate) fn new(opener: StreamOpener, idle: Duration) -> Self {
        Self {
            inner: Arc::new(LinksInner {
                opener,
                slots: Mutex::new(HashMap::new()),
                generations: AtomicU64::new(0),
                idle,
            }),
        }
    }

    /// Closes the link to `peer`, if any.
    pub(crate) fn close(&self, peer: PeerId) {
        let slot = self.inner.slots().remove(&peer);
        drop(slot);
    }

    /// Closes every link.
    pub(crate) fn close_all(&self) {
        let slots = std::mem::take(&mut *self.inner.slots());
        drop(slots);
    }

    /// Sends one frame to `peer` and waits for its status, all within `limit`. `connect` makes
    /// sure we are connected (it runs only when a new stream has to be opened). A stream that
    /// fails before the peer answered anything on it (the peer dropped it, or the connection went
    /// away as it opened) is retried on a fresh one a couple of times. The frame may then arrive
    /// twice, if the receiver had queued it and the stream broke before its status came back,
    /// as with any resend after a lost acknowledgement; receivers deduplicate. `later`: the
    /// caller can wait for the status, which the receiver may then hold back to answer several
    /// frames at once ([`ANSWER_LATER`]).
    pub(crate) async fn send<F>(
        &self,
        peer: PeerId,
        frame: Bytes,
        limit: Duration,
        later: bool,
        connect: impl Fn() -> F,
    ) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        const FRESH_RETRIES: u32 = 2;
        let deadline = tokio::time::Instant::now() + limit;
        let wire = encode(&frame, later)?;
        drop(frame);
        let mut retries = 0;
        loop {
            match self.send_once(peer, &wire, deadline, &connect).await {
                Attempt::Delivered => return Ok(()),
                Attempt::Failed(error) => return Err(error),
                Attempt::TimedOut => {
                    return Err(TransportError::Timeout {
                        operation: "send",
                        after: limit,
                    });
                }
                Attempt::Unanswered(reason) if retries >= FRESH_RETRIES => {
                    return Err(TransportError::Unreachable { peer, reason });
                }
                Attempt::Unanswered(reason) => {
                    retries += 1;
                    tracing::debug!(%peer, %reason, retries, "frame stream failed before answering; retrying");
                    let pause = Duration::from_millis(5 * u64::from(retries));
                    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause))
                        .await;
                }
            }
        }
    }

    async fn send_once<F>(
        &self,
        peer: PeerId,
        wire: &[u8],
        deadline: tokio::time::Instant,
        connect: &impl Fn() -> F,
    ) -> Attempt
    where
        F: Future<Output = Result<()>>,
    {
        let slot = self.inner.slot(peer);
        let written = tokio::time::timeout_at(deadline, async {
            let mut link = slot.lock().await;
            let open = match link.take() {
                Some(healthy) if !healthy.acks.is_broken() => link.insert(healthy),
                broken => {
                    drop(broken);
                    let fresh = self.inner.open(peer, connect()).await?;
                    link.insert(fresh)
                }
            };
            let (waiter, ack) = oneshot::channel();
            let written = match open.acks.push(waiter) {
                Ok(()) => async {
                    open.writer.write_all(wire).await?;
                    open.writer.flush().await
                }
                .await
                .map_err(|e| open.acks.write_failed(e.to_string())),
                Err(lost) => Err(lost),
            };
            match written {
                Ok(()) => Ok((open.generation, ack)),
                Err(lost) => {
                    *link = None;
                    Err(Attempt::from_outcome(peer, lost))
                }
            }
        })
        .await;
        let (generation, ack) = match written {
            Ok(Ok(written)) => written,
            Ok(Err(failed)) => return failed,
            Err(_) => return Attempt::TimedOut,
        };
        match tokio::time::timeout_at(deadline, ack).await {
            Ok(Ok(outcome)) => Attempt::from_outcome(peer, outcome),
            // Every waiter is answered or failed before its link goes away.
            Ok(Err(_)) => Attempt::Failed(TransportError::Unreachable {
                peer,
                reason: "frame stream closed".to_owned(),
            }),
            Err(_) => {
                // The peer is not answering on this stream; the next frame gets a fresh one.
                self.inner.release(peer, generation, true).await;
                Attempt::TimedOut
            }
        }
    }
}

/// How one attempt at sending a frame ended.
enum Attempt {
    Delivered,
    /// The stream broke in a way that makes sending the frame again worthwhile.
    Unanswered(String),
    Failed(TransportError),
    TimedOut,
}

impl Attempt {
    fn from_outcome(peer: PeerId, outcome: AckOutcome) -> Self {
        match outcome {
            AckOutcome::Answered(Ok(())) => Self::Delivered,
            AckOutcome::Answered(Err(error)) => Self::Failed(error),
            AckOutcome::Lost {
                reason,
                retry: true,
            } => Self::Unanswered(reason),
            AckOutcome::Lost {
                reason,
                retry: false,
            } => Self::Failed(TransportError::Unreachable { peer, reason }),
        }
    }
}

impl From<TransportError> for Attempt {
    fn from(error: TransportError) -> Self {
        Self::Failed(error)
    }
}

impl LinksInner {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self, peer: PeerId) -> Slot {
        let mut slots = self.slots();
        if !slots.contains_key(&peer) && slots.len() >= MAX_LINKS {
            // Drop links nobody is using right now; they reopen on demand.
            slots.retain(|_, slot| {
                slot.try_lock()
                    .map(|link| link.as_ref().is_some_and(|l| !l.acks.is_idle()))
                    .unwrap_or(true)
            });
        }
        Arc::clone(slots.entry(peer).or_default())
    }

    async fn open(
        self: &Arc<Self>,
        peer: PeerId,
        connect: impl Future<Output = Result<()>>,
    ) -> Result<Link> {
        connect.await?;
        let stream = self
            .opener
            .open(peer.to_libp2p())
            .await
            .map_err(|e| match e {
                OpenError::Unsupported => TransportError::Remote {
                    peer,
                    reason: e.to_string(),
                },
                OpenError::NotConnected | OpenError::Failed(_) => TransportError::Unreachable {
                    peer,
                    reason: e.to_string(),
                },
            })?;
        let (reader, writer) = stream.split();
        let acks = Arc::new(AckQueue::default());
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let reader = tokio::spawn(read_acks(
            peer,
            generation,
            reader,
            Arc::clone(&acks),
            Arc::downgrade(self),
        ));
        Ok(Link {
            generation,
            writer,
            acks,
            reader,
        })
    }

    /// Closes `peer`'s link if it is still the one of `generation`. `wait`: wait for a sender
    /// using it rather than leave it (only a sender's own failure path waits).
    async fn release(&self, peer: PeerId, generation: u64, wait: bool) {
        let Some(slot) = self.slots().get(&peer).cloned() else {
            return;
        };
        let mut link = if wait {
            slot.lock().await
        } else {
            match slot.try_lock() {
                Ok(link) => link,
                // A sender holds it; it sees the broken link itself.
                Err(_) => return,
            }
        };
        if link.as_ref().is_some_and(|l| l.generation == generation) {
            *link = None;
        }
    }
}

/// Reads the statuses of one link and hands each to the oldest waiting frame. Ends, failing
/// what still waits, when the stream ends or misbehaves, or when it has been idle too long.
async fn read_acks(
    peer: PeerId,
    generation: u64,
    mut reader: ReadHalf<Stream>,
    acks: Arc<AckQueue>,
    links: Weak<LinksInner>,
) {
    let idle = links.upgrade().map_or(Duration::ZERO, |l| l.idle);
    let mut status = [0u8; 1];
    let (reason, unread) = loop {
        match tokio::time::timeout(idle, reader.read_exact(&mut status)).await {
            Err(_) if acks.is_idle() => break ("idle".to_owned(), false),
            Err(_) => continue,
            Ok(Err(e)) => break (e.to_string(), false),
            Ok(Ok(())) => {}
        }
        // Anything the peer wrote, even garbage, means the stream reached it.
        acks.state().answered += 1;
        let Some(status) = FrameStatus::from_byte(status[0]) else {
            break (format!("unknown frame status {}", status[0]), false);
        };
        let waiter = acks.state().waiting.pop_front();
        let Some(waiter) = waiter else {
            break ("a status for no frame".to_owned(), false);
        };
        if status == FrameStatus::TooLarge {
            // The receiver closes the stream unread after this answer: whatever was written
            // behind the oversized frame never reached it. Broken before the caller hears of
            // it, so its next frame goes on a fresh stream.
            let reason = "the receiver closed the stream after an oversized frame".to_owned();
            acks.fail(reason.clone(), true);
            let _ = waiter.send(AckOutcome::Answered(status.into_result(peer)));
            break (reason, true);
        }
        let _ = waiter.send(AckOutcome::Answered(status.into_result(peer)));
    };
    tracing::debug!(%peer, %reason, "frame link closed");
    acks.fail(reason, unread);
    if let Some(links) = links.upgrade() {
        links.release(peer, generation, false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_status_round_trips_and_rejects_unknown() {
        for status in [
            FrameStatus::Accepted,
            FrameStatus::Busy,
            FrameStatus::RateLimited,
            FrameStatus::TooLarge,
        ] {
            assert_eq!(FrameStatus::from_byte(status.to_byte()), Some(status));
        }
        assert_eq!(FrameStatus::from_byte(9), None);
    }

    async fn read(wire: &[u8], max: usize) -> std::result::Result<Option<Bytes>, ReadError> {
        let frame = read_frame(&mut &wire[..], max, Duration::from_secs(1)).await?;
        Ok(frame.map(|f| f.body))
    }

    #[tokio::test]
    async fn the_answer_later_bit_is_read_apart_from_the_length() {
        let later = encode(b"hello", true).expect("encode");
        assert_eq!(later[..4], [0x80, 0, 0, 5]);
        let frame = read_frame(&mut &later[..], 5, Duration::from_secs(1))
            .await
            .expect("read")
            .expect("frame");
        assert!(frame.later);
        assert_eq!(&frame.body[..], b"hello");
        let now = encode(b"hello", false).expect("encode");
        let frame = read_frame(&mut &now[..], 5, Duration::from_secs(1))
            .await
            .expect("read")
            .expect("frame");
        assert!(!frame.later);
        // The bit is not part of the length: with it, 5 bytes is still within a limit of 5,
        // and a length word of all ones claims 2 GiB, refused from the length alone.
        let error = read(&u32::MAX.to_be_bytes(), 1 << 20)
            .await
            .expect_err("huge");
        assert!(
            matches!(error, ReadError::TooLarge(n) if n == (u32::MAX >> 1) as usize),
            "{error}"
        );
    }

    #[test]
    fn a_frame_whose_length_needs_the_top_bit_is_refused_before_sending() {
        let largest = (ANSWER_LATER - 1) as usize;
        assert_eq!(length_word(largest, false).expect("fits"), 0x7fff_ffff);
        assert_eq!(length_word(largest, true).expect("fits"), u32::MAX);
        for len in [largest + 1, u32::MAX as usize, usize::MAX] {
            let error = length_word(len, false).expect_err("needs the top bit");
            assert!(
                matches!(error, TransportError::FrameTooLarge { size, max } if size == len && max == largest),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn frames_decode_within_the_limit_only() {
        let wire = encode(b"hello", false).expect("encode");
        assert_eq!(
            read(&wire, 5).await.expect("read").as_deref(),
            Some(&b"hello"[..])
        );
        // Over the limit: refused from the length alone.
        let error = read(&wire, 4).await.expect_err("too large");
        assert!(matches!(error, ReadError::TooLarge(5)), "{error}");
        // A clean end between frames, a truncated length, a truncated body.
        assert_eq!(read(&[], 5).await.expect("end"), None);
        assert_eq!(read(&[0, 0], 5).await.expect("short length"), None);
        let error = read(&wire[..7], 5).await.expect_err("short body");
        assert!(
            matches!(&error, ReadError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{error}"
        );
        // A length claiming 2 GiB allocates nothing and is refused.
        let error = read(&0x7fff_ffffu32.to_be_bytes(), 1 << 20)
            .await
            .expect_err("huge");
        assert!(
            matches!(error, ReadError::TooLarge(n) if n == 0x7fff_ffff),
            "{error}"
        );
    }

    /// Never yields another byte.
    struct Stalls;

    impl AsyncRead for Stalls {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let announced_ten_sent_two: &[u8] = &[0, 0, 0, 10, 1, 2];
        let mut io = announced_ten_sent_two.chain(Stalls);
        let error = read_frame(&mut io, 100, Duration::from_secs(5))
            .await
            .expect_err("stalls");
        assert!(
            matches!(&error, ReadError::Io(e) if e.kind() == io::ErrorKind::TimedOut),
            "{error}"
        );
    }
}
