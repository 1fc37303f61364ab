//! Peers that cannot reach each other: circuit relay v2 limits and what AutoNAT found.
//!
//! The protocols themselves are libp2p's (`libp2p-relay`, `libp2p-autonat` v1, `libp2p-dcutr`);
//! this module holds the settings an operator chooses and the status a node reports.

use std::num::NonZeroU32;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// What a node that offers circuit relay v2 to others allows (every field a hard bound).
///
/// A relay only forwards bytes between two peers' Noise sessions: it cannot read or alter the
/// frames (see SECURITY.md, "Relays"). These limits bound what forwarding costs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Most reservations held at once (peers that listen through this relay).
    pub max_reservations: usize,
    /// Most reservations one peer holds at once.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the peer must renew it (libp2p renews on its own).
    pub reservation_duration: Duration,
    /// Most circuits (relayed connections) open at once.
    pub max_circuits: usize,
    /// Most circuits open at once with one peer at either end.
    pub max_circuits_per_peer: usize,
    /// How long one circuit may stay open; the peers reconnect through the relay afterwards.
    pub max_circuit_duration: Duration,
    /// Most bytes one circuit carries in each direction before the relay closes it.
    pub max_circuit_bytes: u64,
    /// New reservations accepted per peer per minute (token bucket).
    pub reservations_per_peer_per_minute: u32,
    /// New circuits a peer may open per minute (token bucket).
    pub circuits_per_peer_per_minute: u32,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(30 * 60),
            max_circuit_bytes: 64 * 1024 * 1024,
            reservations_per_peer_per_minute: 30,
            circuits_per_peer_per_minute: 60,
        }
    }
}

impl RelayLimits {
    /// libp2p's relay server configuration with these limits.
    pub(crate) fn to_libp2p(&self) -> libp2p::relay::Config {
        let per_minute = |n: u32| NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        libp2p::relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            reservation_rate_limiters: Vec::new(),
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            circuit_src_rate_limiters: Vec::new(),
        }
        .reservation_rate_per_peer(
            per_minute(self.reservations_per_peer_per_minute),
            Duration::from_secs(60),
        )
        .circuit_src_per_peer(
            per_minute(self.circuits_per_peer_per_minute),
            Duration::from_secs(60),
        )
    }
}

/// Whether other peers can dial this node directly, as AutoNAT's probes found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reachability {
    /// Not probed yet, or too few answers to say.
    #[default]
    Unknown,
    /// Peers dialled back successfully on this address.
    Public(Multiaddr),
    /// Peers could not dial back: reach this node through a relay (`/p2p-circuit`).
    Private,
}

impl Reachability {
    /// `unknown`, `public` or `private`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Public(_) => "public",
            Self::Private => "private",
        }
    }

    pub(crate) fn from_nat(status: &libp2p::autonat::NatStatus) -> Self {
        match status {
            libp2p::autonat::NatStatus::Public(addr) => Self::Public(addr.clone()),
            libp2p::autonat::NatStatus::Private => Self::Private,
            libp2p::autonat::NatStatus::Unknown => Self::Unknown,
        }
    }
}

/// Whether `addr` goes through a relay (has a `/p2p-circuit` part).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Splits a relay's address `<multiaddr>/p2p/<relay id>` into the relay's peer id and the
/// address to listen on through it (`.../p2p/<relay id>/p2p-circuit`); `None` if `addr` does
/// not end in `/p2p/<peer id>`.
pub(crate) fn circuit_listen_addr(addr: &Multiaddr) -> Option<(libp2p::PeerId, Multiaddr)> {
    match addr.iter().last()? {
        Protocol::P2p(relay) => Some((relay, addr.clone().with(Protocol::P2pCircuit))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_become_circuit_listen_addresses() {
        let relay = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let addr: Multiaddr = format!("/ip4/198.51.100.1/tcp/4001/p2p/{relay}")
            .parse()
            .expect("addr");
        let (id, listen) = circuit_listen_addr(&addr).expect("relay address");
        assert_eq!(id, relay);
        assert_eq!(listen.to_string(), format!("{addr}/p2p-circuit"));
        assert!(is_relayed(&listen));
        assert!(!is_relayed(&addr));
        let bare: Multiaddr = "/ip4/198.51.100.1/tcp/4001".parse().expect("addr");
        assert_eq!(circuit_listen_addr(&bare), None);
    }

    #[test]
    fn limits_reach_the_libp2p_configuration() {
        let limits = RelayLimits {
            max_reservations: 3,
            max_circuits: 5,
            max_circuit_bytes: 77,
            max_circuit_duration: Duration::from_secs(9),
            ..RelayLimits::default()
        };
        let config = limits.to_libp2p();
        assert_eq!(config.max_reservations, 3);
        assert_eq!(config.max_circuits, 5);
        assert_eq!(config.max_circuit_bytes, 77);
        assert_eq!(config.max_circuit_duration, Duration::from_secs(9));
        assert_eq!(config.reservation_rate_limiters.len(), 1);
        assert_eq!(config.circuit_src_rate_limiters.len(), 1);
        assert_eq!(Reachability::default().name(), "unknown");
        assert_eq!(Reachability::Private.name(), "private");
    }
}
