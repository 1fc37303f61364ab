//! Where a libp2p node says it can be reached, and refusing a port in use.

use libp2p::Multiaddr;
use musig2_transport::{Libp2pConfig, Libp2pTransport, TransportError};

fn addr(text: &str) -> Multiaddr {
    text.parse().expect("multiaddr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unspecified_listen_shows_each_interface_and_external_addresses() {
    let external = addr("/ip4/203.0.113.7/tcp/4001");
    let node = Libp2pTransport::spawn(Libp2pConfig {
        listen_addrs: vec![addr("/ip4/0.0.0.0/tcp/0")],
        external_addrs: vec![external.clone()],
        ..Libp2pConfig::default()
    })
    .await
    .expect("spawn");
    let addresses = node.addresses().await.expect("addresses");
    let texts: Vec<String> = addresses.listen.iter().map(ToString::to_string).collect();
    assert!(
        texts.iter().any(|a| a.starts_with("/ip4/127.0.0.1/tcp/")),
        "{texts:?}"
    );
    assert!(
        texts.iter().all(|a| !a.starts_with("/ip4/0.0.0.0/")),
        "the unspecified address itself is not advertised: {texts:?}"
    );
    assert_eq!(addresses.external, vec![external]);
    assert!(addresses.observed.is_empty());
    musig2_transport::Transport::shutdown(&node)
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_refused() {
    let first = Libp2pTransport::spawn(Libp2pConfig::default())
        .await
        .expect("spawn");
    let taken = first.listen_addrs()[0].clone();
    let error = Libp2pTransport::spawn(Libp2pConfig {
        listen_addrs: vec![taken.clone()],
        ..Libp2pConfig::default()
    })
    .await
    .expect_err("the port is taken");
    match error {
        TransportError::Config(message) => assert!(message.contains("in use"), "{message}"),
        other => panic!("expected a configuration error, got {other}"),
    }
    musig2_transport::Transport::shutdown(&first)
        .await
        .expect("shutdown");
}
