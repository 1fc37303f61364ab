//! Circuit relay v2 on 127.0.0.1: a node that listens only through a relay is reached by a node
//! that knows nothing but its `/p2p-circuit` address. Waits for conditions, never on timing.

mod common;

use std::time::Duration;

use common::{wait_for_event, within};
use musig2_transport::{
    Bytes, Libp2pConfig, Libp2pTransport, Multiaddr, PeerEvent, PeerId, RelayLimits, Transport,
    TransportError, is_relayed,
};

/// A relay on a loopback port that it also announces as its external address (a relay hands
/// its external addresses out in reservations). The port is probed first; a port taken in
/// between is tried again with another.
async fn spawn_relay(limits: RelayLimits) -> (Libp2pTransport, Multiaddr) {
    for _ in 0..10 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
        let config = Libp2pConfig {
            listen_addrs: vec![addr.clone()],
            external_addrs: vec![addr.clone()],
            relay_server: Some(limits.clone()),
            ..Libp2pConfig::default()
        };
        match Libp2pTransport::spawn(config).await {
            Ok(relay) => {
                let full = addr
                    .with_p2p(relay.local_peer_id().to_libp2p())
                    .expect("p2p");
                return (relay, full);
            }
            Err(TransportError::Config(_)) => continue,
            Err(e) => panic!("relay: {e}"),
        }
    }
    panic!("no free loopback port for the relay");
}

/// Polls `node` until it holds a reservation on `relay` and announces a relayed address through
/// it; returns that address.
async fn relayed_address(node: &Libp2pTransport, relay: PeerId) -> Multiaddr {
    within("the relay reservation", async {
        loop {
            let addrs = node.addresses().await.expect("addresses");
            let circuit = addrs
                .listen
                .iter()
                .find(|a| is_relayed(a) && a.to_string().contains(&relay.to_string()));
            if let (true, Some(addr)) = (addrs.relays.contains(&relay), circuit) {
                return addr.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_known_only_by_its_relayed_address_is_reached_through_the_relay() {
    let (relay, relay_addr) = spawn_relay(RelayLimits::default()).await;
    let listener = Libp2pTransport::spawn(Libp2pConfig {
        relays: vec![relay_addr.clone()],
        ..Libp2pConfig::default()
    })
    .await
    .expect("listener");
    let mut listener_events = listener.events();
    let circuit = relayed_address(&listener, relay.local_peer_id()).await;
    assert!(
        circuit.to_string().starts_with(&relay_addr.to_string()),
        "{circuit} is not an address through {relay_addr}"
    );

    // The dialer has no bootstrap peer and no DHT: all it is told is the circuit address.
    let dialer = Libp2pTransport::spawn(Libp2pConfig::default())
        .await
        .expect("dialer");
    dialer
        .add_address(listener.local_peer_id(), circuit)
        .await
        .expect("address");
    dialer
        .send(
            listener.local_peer_id(),
            Bytes::from_static(b"through the relay"),
        )
        .await
        .expect("send through the relay");
    wait_for_event(
        &mut listener_events,
        PeerEvent::Connected(dialer.local_peer_id()),
    )
    .await;
    let inbound = within("recv", listener.recv()).await.expect("frame");
    assert_eq!(inbound.from, dialer.local_peer_id());
    assert_eq!(&inbound.frame[..], b"through the relay");
    // And back on the same connection.
    listener
        .send(dialer.local_peer_id(), Bytes::from_static(b"reply"))
        .await
        .expect("reply");
    let back = within("recv reply", dialer.recv()).await.expect("frame");
    assert_eq!(&back.frame[..], b"reply");
    // The dialer is connected to the relay too (it went through it), never told its address
    // other than inside the circuit address.
    let dialer_peers = dialer.connected_peers().await.expect("peers");
    assert!(
        dialer_peers.contains(&relay.local_peer_id()),
        "{dialer_peers:?}"
    );
    for node in [&dialer, &listener, &relay] {
        node.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_address_without_a_peer_id_is_a_configuration_error() {
    let result = Libp2pTransport::spawn(Libp2pConfig {
        relays: vec!["/ip4/127.0.0.1/tcp/9".parse().expect("addr")],
        ..Libp2pConfig::default()
    })
    .await;
    assert!(
        matches!(result, Err(TransportError::Config(ref text)) if text.contains("/p2p/")),
        "{result:?}"
    );
}
