//! Transport benchmarks: frame round trip between two nodes and an all-to-all round among ten
//! nodes, for the memory network and for libp2p on loopback. Two references run beside ours on
//! the same transport stack (TCP + Noise + Yamux): a bare libp2p request-response pair (one
//! exchange per frame, the reference) and a bare `libp2p-stream` pair speaking our frame
//! wire format on one long-lived stream (what our transport does, without our layer).
//!
//! Targets (2-core machine): memory round trip < 20 µs; libp2p round trip <= 1.2x the bare
//! request-response pair; 10-node all-to-all round over libp2p < 15 ms median.
#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented pub fn"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, Swarm, noise, request_response, tcp, yamux};
use musig2_transport::{
    Bytes, FRAME_PROTOCOL, FrameStatus, Libp2pConfig, Libp2pTransport, MemoryNetwork, PeerId,
    Transport,
};
use tokio::runtime::Runtime;

const FRAME: usize = 256;

/// The request-response reference protocol: the request is a 4-byte big-endian length and the
/// frame, the response one status byte (the same bytes our frame streams carry).
const REFERENCE_PROTOCOL: StreamProtocol = StreamProtocol::new("/musig2-p2p/bench-reference/1");

#[derive(Clone)]
struct ReferenceCodec;

impl request_response::Codec for ReferenceCodec {
    type Protocol = StreamProtocol;
    type Request = Bytes;
    type Response = u8;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Bytes>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        io.read_exact(&mut frame).await?;
        Ok(Bytes::from(frame))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<u8>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let mut status = [0u8; 1];
        io.read_exact(&mut status).await?;
        Ok(status[0])
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        frame: Bytes,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        let len = u32::try_from(frame.len()).expect("bench frames are small");
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(&frame).await?;
        io.flush().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        status: u8,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        io.write_all(&[status]).await?;
        io.flush().await
    }
}

type BareSwarm = Swarm<request_response::Behaviour<ReferenceCodec>>;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One full round: every node, in its own task (as each node's coordinator would be), sends one
/// frame to every other and receives one from each.
async fn all_to_all<T: Transport + 'static>(nodes: &[Arc<T>], ids: &[PeerId], frame: &Bytes) {
    let round: Vec<_> = nodes
        .iter()
        .map(|node| {
            let node = Arc::clone(node);
            let me = node.local_peer_id();
            let others: Vec<PeerId> = ids.iter().copied().filter(|p| *p != me).collect();
            let frame = frame.clone();
            tokio::spawn(async move {
                let (reports, ()) = tokio::join!(node.send_many(&others, frame), async {
                    for _ in 0..others.len() {
                        // Bounded so a failed send panics instead of hanging the bench.
                        tokio::time::timeout(Duration::from_secs(10), node.recv())
                            .await
                            .expect("frame within 10 s")
                            .expect("frame");
                    }
                });
                assert!(reports.iter().all(|r| r.result.is_ok()));
            })
        })
        .collect();
    for task in round {
        task.await.expect("node task");
    }
}

fn memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let frame = Bytes::from(vec![7u8; FRAME]);
    let net = MemoryNetwork::new(1);
    let (a, b) = (net.add_node(), net.add_node());
    let (a_id, b_id) = (a.local_peer_id(), b.local_peer_id());
    let mut group = c.benchmark_group("transport/memory");
    group.bench_function("round_trip", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    a.send(b_id, frame.clone()).await.expect("send");
                    let ping = b.recv().await.expect("recv");
                    b.send(a_id, ping.frame).await.expect("send back");
                    a.recv().await.expect("recv back");
                }
                start.elapsed()
            })
        })
    });

    let net = MemoryNetwork::new(2);
    let nodes: Vec<_> = (0..10).map(|_| Arc::new(net.add_node())).collect();
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.local_peer_id()).collect();
    group.bench_function("all_to_all_10", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    all_to_all(&nodes, &ids, &frame).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

/// Starts listening on an ephemeral loopback TCP port and returns the address once known.
async fn listen_on_loopback<B: libp2p::swarm::NetworkBehaviour>(swarm: &mut Swarm<B>) -> Multiaddr {
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    }
}

/// A swarm with only `behaviour`, on the same transport stack as ours (TCP with nodelay, Noise,
/// Yamux) and connections kept for the whole run.
fn reference_swarm<B: libp2p::swarm::NetworkBehaviour>(behaviour: B) -> Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| behaviour)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build()
}

fn bare_swarm() -> BareSwarm {
    reference_swarm(request_response::Behaviour::with_codec(
        ReferenceCodec,
        [(REFERENCE_PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default(),
    ))
}

/// One request-response exchange on the bare reference pair.
async fn bare_request(client: &mut BareSwarm, server: libp2p::PeerId, frame: &Bytes) {
    let id = client.behaviour_mut().send_request(&server, frame.clone());
    loop {
        match client.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, .. },
                ..
            }) if request_id == id => break,
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                panic!("reference request failed: {error}")
            }
            _ => {}
        }
    }
}

/// A bare request-response node for the all-to-all reference: on each frame from `start` it
/// sends one request to every peer; it answers every request; it reports `done` once its own
/// requests are answered and it has served one request from every peer for this round.
async fn bare_node(
    mut swarm: BareSwarm,
    peers: Vec<libp2p::PeerId>,
    mut start: tokio::sync::mpsc::Receiver<Bytes>,
    done: tokio::sync::mpsc::Sender<()>,
) {
    let (mut waiting, mut served, mut active) = (0usize, 0usize, false);
    loop {
        tokio::select! {
            frame = start.recv() => {
                let Some(frame) = frame else { return };
                for peer in &peers {
                    swarm.behaviour_mut().send_request(peer, frame.clone());
                }
                waiting = peers.len();
                active = true;
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Request { channel, .. },
                    ..
                }) => {
                    let _ = swarm
                        .behaviour_mut()
                        .send_response(channel, FrameStatus::Accepted.to_byte());
                    served += 1;
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                }) => waiting -= 1,
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                    panic!("reference request failed: {error}")
                }
                _ => {}
            },
        }
        if active && waiting == 0 && served >= peers.len() {
            served -= peers.len();
            active = false;
            if done.send(()).await.is_err() {
                return;
            }
        }
    }
}

/// Ten bare request-response nodes on loopback, each in its own task; returns the round
/// starters and the completion channel.
async fn bare_mesh(
    n: usize,
) -> (
    Vec<tokio::sync::mpsc::Sender<Bytes>>,
    tokio::sync::mpsc::Receiver<()>,
) {
    let mut swarms = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..n {
        let mut swarm = bare_swarm();
        let addr = listen_on_loopback(&mut swarm).await;
        addrs.push((*swarm.local_peer_id(), addr));
        swarms.push(swarm);
    }
    let (done_tx, done_rx) = tokio::sync::mpsc::channel(n);
    let mut starters = Vec::new();
    for mut swarm in swarms {
        let me = *swarm.local_peer_id();
        let mut peers = Vec::new();
        for (peer, addr) in &addrs {
            if *peer != me {
                swarm.add_peer_address(*peer, addr.clone());
                peers.push(*peer);
            }
        }
        let (start_tx, start_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(bare_node(swarm, peers, start_rx, done_tx.clone()));
        starters.push(start_tx);
    }
    (starters, done_rx)
}

/// One all-to-all round on the bare mesh.
async fn bare_round(
    starters: &[tokio::sync::mpsc::Sender<Bytes>],
    done: &mut tokio::sync::mpsc::Receiver<()>,
    frame: &Bytes,
) {
    for start in starters {
        start.send(frame.clone()).await.expect("start");
    }
    for _ in 0..starters.len() {
        tokio::time::timeout(Duration::from_secs(10), done.recv())
            .await
            .expect("round within 10 s")
            .expect("node alive");
    }
}

/// A bare request-response server on loopback that accepts every frame, answering from its own
/// task, and a client swarm that knows its address (not yet connected).
async fn bare_client_and_server() -> (BareSwarm, libp2p::PeerId, tokio::task::JoinHandle<()>) {
    let mut server = bare_swarm();
    let addr = listen_on_loopback(&mut server).await;
    let server_id = *server.local_peer_id();
    let server_task = tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = server.select_next_some().await
            {
                let _ = server
                    .behaviour_mut()
                    .send_response(channel, FrameStatus::Accepted.to_byte());
            }
        }
    });
    let mut client = bare_swarm();
    client.add_peer_address(server_id, addr);
    (client, server_id, server_task)
}

fn stream_swarm() -> Swarm<libp2p_stream::Behaviour> {
    reference_swarm(libp2p_stream::Behaviour::new())
}

/// The stream reference: two bare `libp2p-stream` swarms, each driven in its own task, and one
/// long-lived frame stream from client to server on which the server acknowledges every frame
/// (our wire format, without our layer). Returns the client's stream and the tasks to abort.
async fn bare_stream_pair() -> (libp2p::Stream, Vec<tokio::task::JoinHandle<()>>) {
    let mut server = stream_swarm();
    let addr = listen_on_loopback(&mut server).await;
    let server_id = *server.local_peer_id();
    let mut incoming = server
        .behaviour()
        .new_control()
        .accept(FRAME_PROTOCOL)
        .expect("accept");
    let mut tasks = vec![tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    })];
    tasks.push(tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                let mut frame = Vec::new();
                while stream.read_exact(&mut len).await.is_ok() {
                    frame.resize(u32::from_be_bytes(len) as usize, 0);
                    if stream.read_exact(&mut frame).await.is_err()
                        || stream
                            .write_all(&[FrameStatus::Accepted.to_byte()])
                            .await
                            .is_err()
                        || stream.flush().await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    }));
    let mut client = stream_swarm();
    client.dial(addr).expect("dial");
    loop {
        if let SwarmEvent::ConnectionEstablished { .. } = client.select_next_some().await {
            break;
        }
    }
    let mut control = client.behaviour().new_control();
    tasks.push(tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    }));
    let stream = control
        .open_stream(server_id, FRAME_PROTOCOL)
        .await
        .expect("stream");
    (stream, tasks)
}

/// One frame and its acknowledgement on the stream reference.
async fn bare_stream_round_trip(stream: &mut libp2p::Stream, wire: &[u8]) {
    stream.write_all(wire).await.expect("write");
    stream.flush().await.expect("flush");
    let mut status = [0u8; 1];
    stream.read_exact(&mut status).await.expect("status");
}

fn wire(frame: &Bytes) -> Vec<u8> {
    let mut wire = u32::try_from(frame.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    wire.extend_from_slice(frame);
    wire
}

/// Medians of the per-batch means, in seconds, of ours and the two references.
struct Paired {
    ours: f64,
    request_response: f64,
    stream: f64,
}

/// Ours and the two references' round trips, alternating batches on `rt` (which owns every task
/// involved).
fn paired_round_trip(rt: &Runtime, frame: &Bytes) -> Paired {
    let frame = frame.clone();
    rt.block_on(async move {
        let (mut client, server_id, server_task) = bare_client_and_server().await;
        let (mut bare_stream, stream_tasks) = bare_stream_pair().await;
        let frame_wire = wire(&frame);
        let pair = Libp2pTransport::spawn_local_network(
            2,
            Libp2pConfig {
                inbound_rate_per_sec: 0,
                inbound_bytes_per_sec: 0,
                ..Libp2pConfig::default()
            },
        )
        .await
        .expect("pair");
        let b_id = pair[1].local_peer_id();
        let task = tokio::spawn(async move {
            let (mut ours, mut bare, mut streamed) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..42 {
                let start = Instant::now();
                for _ in 0..50 {
                    bare_request(&mut client, server_id, &frame).await;
                }
                let bare_t = start.elapsed().as_secs_f64() / 50.0;
                let start = Instant::now();
                for _ in 0..50 {
                    bare_stream_round_trip(&mut bare_stream, &frame_wire).await;
                }
                let stream_t = start.elapsed().as_secs_f64() / 50.0;
                let start = Instant::now();
                for _ in 0..50 {
                    pair[0].send(b_id, frame.clone()).await.expect("send");
                    pair[1].recv().await.expect("recv");
                }
                let ours_t = start.elapsed().as_secs_f64() / 50.0;
                if round > 0 {
                    // The first batch connects and warms up.
                    bare.push(bare_t);
                    streamed.push(stream_t);
                    ours.push(ours_t);
                }
            }
            for node in &pair {
                node.shutdown().await.expect("shutdown");
            }
            Paired {
                ours: median(ours),
                request_response: median(bare),
                stream: median(streamed),
            }
        });
        let result = task.await.expect("paired task");
        server_task.abort();
        for task in stream_tasks {
            task.abort();
        }
        result
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn libp2p_benches(c: &mut Criterion) {
    let rt = runtime();
    let frame = Bytes::from(vec![7u8; FRAME]);
    let mut group = c.benchmark_group("transport/libp2p");
    group.sample_size(30);

    // Reference: a bare request-response pair with the same codec and transport stack. The
    // server answers from its own task, the client drives its swarm inline.
    let (mut client, server_id, server_task) = rt.block_on(bare_client_and_server());
    // Connect before measuring.
    rt.block_on(bare_request(&mut client, server_id, &frame));
    // Both round trips run in a spawned task, as a coordinator would.
    let client = Arc::new(tokio::sync::Mutex::new(client));
    group.bench_function("round_trip_bare_request_response", |bench| {
        bench.iter_custom(|iters| {
            let (client, frame) = (Arc::clone(&client), frame.clone());
            rt.block_on(rt.spawn(async move {
                let mut client = client.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    bare_request(&mut client, server_id, &frame).await;
                }
                start.elapsed()
            }))
            .expect("bench task")
        })
    });

    // Reference: our wire format on one long-lived bare libp2p-stream stream.
    let (bare_stream, stream_tasks) = rt.block_on(bare_stream_pair());
    let bare_stream = Arc::new(tokio::sync::Mutex::new(bare_stream));
    let frame_wire = Arc::new(wire(&frame));
    group.bench_function("round_trip_bare_stream", |bench| {
        bench.iter_custom(|iters| {
            let (stream, frame_wire) = (Arc::clone(&bare_stream), Arc::clone(&frame_wire));
            rt.block_on(rt.spawn(async move {
                let mut stream = stream.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    bare_stream_round_trip(&mut stream, &frame_wire).await;
                }
                start.elapsed()
            }))
            .expect("bench task")
        })
    });

    // Ours: an acknowledged send (a frame on the peer's long-lived stream and its status) and
    // the receiver taking it.
    // The per-peer inbound rate limit is off here: this loop sends ~10k frames/s to one peer,
    // far over the default limit, which would (correctly) answer with back-pressure.
    let pair = rt
        .block_on(Libp2pTransport::spawn_local_network(
            2,
            Libp2pConfig {
                inbound_rate_per_sec: 0,
                inbound_bytes_per_sec: 0,
                ..Libp2pConfig::default()
            },
        ))
        .expect("pair");
    let pair: Vec<Arc<Libp2pTransport>> = pair.into_iter().map(Arc::new).collect();
    let b_id = pair[1].local_peer_id();
    group.bench_function("round_trip_transport", |bench| {
        bench.iter_custom(|iters| {
            let (a, b, frame) = (Arc::clone(&pair[0]), Arc::clone(&pair[1]), frame.clone());
            rt.block_on(rt.spawn(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    a.send(b_id, frame.clone()).await.expect("send");
                    b.recv().await.expect("recv");
                }
                start.elapsed()
            }))
            .expect("bench task")
        })
    });

    let nodes = rt
        .block_on(Libp2pTransport::spawn_local_network(
            10,
            Libp2pConfig::default(),
        ))
        .expect("ten nodes");
    let nodes: Vec<Arc<Libp2pTransport>> = nodes.into_iter().map(Arc::new).collect();
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.local_peer_id()).collect();
    // Warm every connection once.
    rt.block_on(all_to_all(&nodes, &ids, &frame));
    group.bench_function("all_to_all_10", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    all_to_all(&nodes, &ids, &frame).await;
                }
                start.elapsed()
            })
        })
    });
    // Reference for the round: the same all-to-all on ten bare request-response nodes.
    let (starters, mut done) = rt.block_on(bare_mesh(10));
    rt.block_on(bare_round(&starters, &mut done, &frame));
    group.bench_function("all_to_all_10_bare_request_response", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    bare_round(&starters, &mut done, &frame).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    // Paired measurement: the machine is shared, so load can change between two criterion
    // benchmarks. Alternate short batches of ours and the reference and compare the medians of
    // the batches, which cancels slow drift in load. Printed next to criterion's output.
    let (ours_round, bare_round_t) = {
        let (nodes, ids, frame) = (nodes.clone(), ids.clone(), frame.clone());
        rt.block_on(rt.spawn(async move {
            let (mut ours_round, mut bare_round_t) = (Vec::new(), Vec::new());
            for _ in 0..21 {
                let start = Instant::now();
                bare_round(&starters, &mut done, &frame).await;
                bare_round_t.push(start.elapsed().as_secs_f64());
                let start = Instant::now();
                all_to_all(&nodes, &ids, &frame).await;
                ours_round.push(start.elapsed().as_secs_f64());
            }
            (ours_round, bare_round_t)
        }))
        .expect("paired task")
    };
    for (name, runtime) in [
        ("multi-thread (2 workers)", runtime()),
        (
            "current-thread",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        ),
    ] {
        let p = paired_round_trip(&runtime, &frame);
        println!(
            "paired round trip, {name} runtime: ours {:.1} us, bare request-response {:.1} us \
             (ratio {:.2}), bare stream {:.1} us (ratio {:.2})",
            p.ours * 1e6,
            p.request_response * 1e6,
            p.ours / p.request_response,
            p.stream * 1e6,
            p.ours / p.stream,
        );
    }
    let (o, b) = (median(ours_round), median(bare_round_t));
    println!(
        "paired 10-node all-to-all: ours {:.2} ms, bare request-response {:.2} ms, ratio {:.2}",
        o * 1e3,
        b * 1e3,
        o / b
    );

    rt.block_on(async {
        for node in pair.iter().chain(&nodes) {
            node.shutdown().await.expect("shutdown");
        }
    });
    server_task.abort();
    for task in stream_tasks {
        task.abort();
    }
}

criterion_group!(benches, memory, libp2p_benches);
criterion_main!(benches);
