//! The swarm side of frame streams: opens outbound streams on request and hands inbound ones to
//! the node through a bounded queue.
//!
//! `libp2p-stream` does the same job, but its inbound queue holds a single stream and drops the
//! rest: when several peers open their frame stream to a node at the same moment (every member
//! of a session contacting its coordinator), most of those streams would be dropped and have to
//! be retried. Here the queue is sized by configuration.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    FromSwarm, NetworkBehaviour, Stream, StreamUpgradeError, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use tokio::sync::{mpsc, oneshot};

use crate::frame_stream::FRAME_PROTOCOL;

/// Outbound stream requests one connection queues before callers wait.
const REQUESTS_PER_CONNECTION: usize = 32;

/// Why an outbound frame stream could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// No connection to the peer (dial first).
    NotConnected,
    /// The peer does not speak the frame protocol.
    Unsupported,
    /// Negotiation failed or the connection closed meanwhile.
    Failed(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotConnected => f.write_str("not connected"),
            Self::Unsupported => f.write_str("peer does not speak the frame protocol"),
            Self::Failed(reason) => f.write_str(reason),
        }
    }
}

type OpenReply = oneshot::Sender<Result<Stream, OpenError>>;

struct Shared {
    connections: HashMap<ConnectionId, (libp2p::PeerId, mpsc::Sender<OpenReply>)>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The behaviour: one [`Handler`] per connection.
pub(crate) struct FrameBehaviour {
    shared: Arc<Mutex<Shared>>,
    inbound: mpsc::Sender<(libp2p::PeerId, Stream)>,
}

impl FrameBehaviour {
    /// The behaviour and the receiving end of its inbound stream queue (`capacity` streams;
    /// past that, new inbound streams are dropped).
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<(libp2p::PeerId, Stream)>) {
        let (inbound, streams) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Mutex::new(Shared {
            connections: HashMap::new(),
        }));
        (Self { shared, inbound }, streams)
    }

    /// A handle that opens outbound streams.
    pub(crate) fn opener(&self) -> StreamOpener {
        StreamOpener {
            shared: Arc::clone(&self.shared),
        }
    }

    fn handler(&self, connection: ConnectionId, peer: libp2p::PeerId) -> Handler {
        let (requests_tx, requests) = mpsc::channel(REQUESTS_PER_CONNECTION);
        lock(&self.shared)
            .connections
            .insert(connection, (peer, requests_tx));
        Handler {
            remote: peer,
            requests,
            inbound: self.inbound.clone(),
        }
    }
}

impl NetworkBehaviour for FrameBehaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: libp2p::PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(connection, peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: libp2p::PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(connection, peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) = event {
            lock(&self.shared).connections.remove(&connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: libp2p::PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Opens outbound frame streams on existing connections; cheap to clone.
#[derive(Clone)]
pub(crate) struct StreamOpener {
    shared: Arc<Mutex<Shared>>,
}

impl StreamOpener {
    /// Opens a frame stream to `peer` on one of its connections.
    pub(crate) async fn open(&self, peer: libp2p::PeerId) -> Result<Stream, OpenError> {
        loop {
            let Some((connection, requests)) = lock(&self.shared)
                .connections
                .iter()
                .find(|(_, (p, _))| *p == peer)
                .map(|(id, (_, tx))| (*id, tx.clone()))
            else {
                return Err(OpenError::NotConnected);
            };
            let (reply, stream) = oneshot::channel();
            if requests.send(reply).await.is_err() {
                // The connection's handler is gone (closed, or denied after we made it).
                lock(&self.shared).connections.remove(&connection);
                continue;
            }
            return stream
                .await
                .unwrap_or_else(|_| Err(OpenError::Failed("connection closed".to_owned())));
        }
    }
}

/// One connection's side: turns open requests into outbound substreams and passes negotiated
/// inbound substreams on.
pub(crate) struct Handler {
    remote: libp2p::PeerId,
    requests: mpsc::Receiver<OpenReply>,
    inbound: mpsc::Sender<(libp2p::PeerId, Stream)>,
}

impl Handler {
    fn pass_inbound(&self, stream: Stream) {
        if self.inbound.try_send((self.remote, stream)).is_err() {
            tracing::debug!(peer = %self.remote, "inbound frame stream queue full, dropping the stream");
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = ReadyUpgrade<libp2p::StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<libp2p::StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = OpenReply;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(FRAME_PROTOCOL), ())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, OpenReply, Self::ToBehaviour>> {
        match self.requests.poll_recv(cx) {
            Poll::Ready(Some(reply)) => {
                Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                    protocol: SubstreamProtocol::new(ReadyUpgrade::new(FRAME_PROTOCOL), reply),
                })
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol, (), OpenReply>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => self.pass_inbound(stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: reply,
            }) => {
                let _ = reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: reply, error }) => {
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => OpenError::Unsupported,
                    StreamUpgradeError::Timeout => {
                        OpenError::Failed("stream negotiation timed out".to_owned())
                    }
                    StreamUpgradeError::Io(e) => OpenError::Failed(e.to_string()),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(error));
            }
            _ => {}
        }
    }
}
