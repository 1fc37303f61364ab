//! Outbound frames: one bounded queue and one worker task per peer, so the node task never waits
//! for send capacity or for a slow or unreachable peer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use musig2_transport::{PeerId, Transport, TransportError};
use tokio::sync::{Semaphore, mpsc};

use crate::config::Config;
use crate::stats::NodeStats;

/// Why a frame was shed instead of queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    /// The peer's queue is full (it is slow or unreachable).
    QueueFull,
    /// Too many peers have frames in flight.
    TooManyPeers,
}

/// The per-peer outbound queues.
pub(crate) struct Outbound {
    transport: Arc<dyn Transport>,
    stats: Arc<NodeStats>,
    config: Arc<Config>,
    permits: Arc<Semaphore>,
    queues: HashMap<PeerId, mpsc::Sender<Bytes>>,
    /// The workers, to wait for them when the node stops.
    workers: HashMap<PeerId, tokio::task::JoinHandle<()>>,
}

/// How long a peer's worker waits for more frames before it exits.
const WORKER_IDLE: Duration = Duration::from_secs(30);

impl Outbound {
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        config: Arc<Config>,
        stats: Arc<NodeStats>,
    ) -> Self {
        Outbound {
            stats,
            permits: Arc::new(Semaphore::new(config.max_inflight_sends.max(1))),
            transport,
            config,
            queues: HashMap::new(),
            workers: HashMap::new(),
        }
    }

    /// Queues `frame` for `to` without waiting.
    pub(crate) fn send(&mut self, to: PeerId, frame: Bytes) -> Result<(), Shed> {
        let frame = match self.queues.get(&to) {
            Some(tx) => match tx.try_send(frame) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(Shed::QueueFull),
                // The worker went idle and exited: start a new one.
                Err(mpsc::error::TrySendError::Closed(frame)) => frame,
            },
            None => frame,
        };
        if self.queues.len() >= self.config.max_outbound_peers {
            self.queues.retain(|_, tx| !tx.is_closed());
            if self.queues.len() >= self.config.max_outbound_peers {
                return Err(Shed::TooManyPeers);
            }
        }
        let (tx, rx) = mpsc::channel(self.config.max_queued_frames_per_peer.max(1));
        // A fresh channel has room for one frame.
        let _ = tx.try_send(frame);
        self.queues.insert(to, tx);
        self.workers.retain(|_, handle| !handle.is_finished());
        let handle = tokio::spawn(worker(
            to,
            rx,
            Sender {
                transport: self.transport.clone(),
                config: self.config.clone(),
                stats: self.stats.clone(),
            },
            self.permits.clone(),
        ));
        self.workers.insert(to, handle);
        Ok(())
    }

    /// Stops taking frames and waits, at most `within`, for the queued ones to go out.
    pub(crate) async fn close(&mut self, within: Duration) {
        self.queues.clear();
        let workers: Vec<_> = self.workers.drain().map(|(_, h)| h).collect();
        let _ = tokio::time::timeout(within, futures::future::join_all(workers)).await;
    }

    /// Peers with a live worker.
    pub(crate) fn peers(&self) -> usize {
        self.queues.values().filter(|tx| !tx.is_closed()).count()
    }
}

/// Sends one peer's frames in order of arrival, a few at a time (the transport pipelines them),
/// each with its retries; exits after `WORKER_IDLE` without frames.
/// What a worker sends with.
#[derive(Clone)]
struct Sender {
    transport: Arc<dyn Transport>,
    config: Arc<Config>,
    stats: Arc<NodeStats>,
}

async fn worker(
    to: PeerId,
    mut rx: mpsc::Receiver<Bytes>,
    sender: Sender,
    permits: Arc<Semaphore>,
) {
    let per_peer = sender.config.max_inflight_sends_per_peer.max(1);
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            frame = rx.recv(), if in_flight.len() < per_peer => match frame {
                Some(frame) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else { return };
                    let sender = sender.clone();
                    in_flight.push(async move {
                        let _permit = permit;
                        sender.send_with_retry(to, frame).await;
                    });
                }
                None => break,
            },
            () = tokio::time::sleep(WORKER_IDLE), if in_flight.is_empty() => {
                rx.close();
                // Frames queued between the idle deadline and the close still go out.
                while let Ok(frame) = rx.try_recv() {
                    sender.send_with_retry(to, frame).await;
                }
                return;
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

impl Sender {
    /// One send. Its result only frees the in-flight slot, so receivers may acknowledge in
    /// batches, unless the pipeline is too short to keep a batch's worth in flight.
    async fn send_once(&self, to: PeerId, frame: Bytes) -> musig2_transport::Result<()> {
        if self.config.max_inflight_sends_per_peer > musig2_transport::ACK_BATCH {
            self.transport.send_pipelined(to, frame).await
        } else {
            self.transport.send(to, frame).await
        }
    }

    async fn send_with_retry(&self, to: PeerId, frame: Bytes) {
        let config = &*self.config;
        let mut delay = config.retry_base_delay;
        for attempt in 0..=config.send_retry_attempts {
            let result = tokio::time::timeout(
                config.message_send_timeout,
                self.send_once(to, frame.clone()),
            )
            .await;
            match result {
                Ok(Ok(())) => return self.stats.frame_out(frame.len()),
                Ok(Err(e @ (TransportError::Closed | TransportError::FrameTooLarge { .. }))) => {
                    tracing::debug!(%to, error = %e, "send failed permanently");
                    return self.stats.send_failed();
                }
                Ok(Err(e)) => tracing::debug!(%to, attempt, error = %e, "send failed"),
                Err(_) => tracing::debug!(%to, attempt, "send timed out"),
            }
            if attempt < config.send_retry_attempts {
                tokio::time::sleep(crate::node::jittered(delay)).await;
                delay = (delay * 2).min(config.retry_max_delay);
            }
        }
        tracing::warn!(%to, "giving up on a frame after retries");
        self.stats.send_failed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use musig2_transport::{Inbound, Multiaddr, PeerEvent, RecordValidator, SendReport};

    mockall::mock! {
        Net {}
        #[async_trait::async_trait]
        impl Transport for Net {
            fn local_peer_id(&self) -> PeerId;
            fn max_frame_size(&self) -> usize;
            async fn send(&self, to: PeerId, frame: Bytes) -> musig2_transport::Result<()>;
            async fn send_pipelined(&self, to: PeerId, frame: Bytes) -> musig2_transport::Result<()>;
            async fn send_many(&self, to: &[PeerId], frame: Bytes) -> Vec<SendReport>;
            async fn recv(&self) -> musig2_transport::Result<Inbound>;
            async fn dht_put(&self, key: Vec<u8>, value: Vec<u8>, ttl: Duration) -> musig2_transport::Result<()>;
            async fn dht_get(&self, key: Vec<u8>, validator: RecordValidator) -> musig2_transport::Result<Vec<u8>>;
            async fn dht_remove(&self, key: Vec<u8>) -> musig2_transport::Result<()>;
            async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> musig2_transport::Result<()>;
            async fn dial(&self, peer: PeerId) -> musig2_transport::Result<()>;
            async fn block_peer(&self, peer: PeerId) -> musig2_transport::Result<()>;
            async fn unblock_peer(&self, peer: PeerId) -> musig2_transport::Result<()>;
            fn events(&self) -> tokio::sync::broadcast::Receiver<PeerEvent>;
            async fn shutdown(&self) -> musig2_transport::Result<()>;
        }
    }

    /// Queues three frames for one peer under `per_peer` and waits for them to go out.
    async fn send_three(transport: MockNet, per_peer: usize) -> Arc<NodeStats> {
        let config = Arc::new(Config {
            max_inflight_sends_per_peer: per_peer,
            ..Config::default()
        });
        let stats = Arc::new(NodeStats::default());
        let mut outbound = Outbound::new(Arc::new(transport), config, stats.clone());
        let peer = musig2_transport::MemoryNetwork::new(1)
            .add_node()
            .local_peer_id();
        for i in 0..3u8 {
            outbound.send(peer, Bytes::from(vec![i])).expect("queued");
        }
        outbound.close(Duration::from_secs(5)).await;
        stats
    }

    #[tokio::test]
    async fn a_deep_pipeline_lets_receivers_acknowledge_in_batches() {
        let mut transport = MockNet::new();
        transport
            .expect_send_pipelined()
            .times(3)
            .returning(|_, _| Ok(()));
        transport.expect_send().never();
        let stats = send_three(transport, musig2_transport::ACK_BATCH + 1).await;
        assert_eq!(stats.snapshot().frames_out, 3);
    }

    #[tokio::test]
    async fn a_short_pipeline_asks_for_every_answer_at_once() {
        let mut transport = MockNet::new();
        transport.expect_send().times(3).returning(|_, _| Ok(()));
        transport.expect_send_pipelined().never();
        let stats = send_three(transport, musig2_transport::ACK_BATCH).await;
        assert_eq!(stats.snapshot().frames_out, 3);
    }
}
