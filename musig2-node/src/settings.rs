//! The node directory's configuration file, `DIR/config.toml`: what `run` listens on and
//! bootstraps from, its timeouts and defaults, and the operator's address book (contacts: a
//! name for a signer's key and peer id; groups: a name for a signer set in key-aggregation
//! order). Every field is optional; command-line flags win over the file.
//!
//! ```toml
//! listen = ["/ip4/0.0.0.0/tcp/4001"]
//! external = ["/ip4/203.0.113.7/tcp/4001"]
//! bootstrap = ["/ip4/192.0.2.10/tcp/4001/p2p/12D3KooW..."]
//! auto_join = false
//! metrics = "127.0.0.1:9464"
//!
//! [timeouts]          # seconds
//! join = 600          # join window of sessions this node creates
//! rounds = 600        # lifetime after the join window
//! nonce = 30
//! partial_signature = 30
//! broadcast = 60
//! discovery = 30      # DHT lookups of sessions
//!
//! [defaults]
//! topology = "mesh"   # or "star"
//! commitments = true
//! wait = 300          # seconds `sign` and `wait` wait
//!
//! [sessions]          # the session store, DIR/sessions.redb
//! keep_finished = "24h"   # how long finished sessions are kept (600, 90s, 10m, 2h)
//! max_finished = 1024     # most finished sessions kept; the oldest go first
//! dht_announce = "2s"     # or "always": when a created session is stored in the DHT
//!
//! [relay]           # peers that cannot reach each other (circuit relay v2, AutoNAT, DCUtR)
//! server = false      # offer relaying to other nodes (needs an `external` address)
//! via = ["/ip4/198.51.100.1/tcp/4001/p2p/12D3KooW..."]   # relays to be reachable through
//! max_reservations = 128
//! max_circuits = 64
//! max_circuit_bytes = 67108864
//! max_circuit_duration = "30m"
//! autonat_private_ips = false   # trust AutoNAT probes over private addresses (LAN, tests)
//!
//! [contacts.alice]
//! key = "02…"
//! peer = "12D3KooW…"  # optional
//!
//! [groups]
//! treasury = ["self", "alice", "bob"]   # "self" is this node
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use musig2_coordinator::{Config, DhtAnnounce};
use serde::Deserialize;

use crate::control::TopologyName;
use crate::{NodeError, Result};

/// File name of the configuration inside a node directory.
pub const CONFIG_FILE: &str = "config.toml";

/// Timeouts in seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSettings {
    /// Join window of sessions this node creates.
    pub join: Option<u64>,
    /// Lifetime of a session after its join window.
    pub rounds: Option<u64>,
    /// Each nonce phase.
    pub nonce: Option<u64>,
    /// The partial-signature phase.
    pub partial_signature: Option<u64>,
    /// The coordinator's broadcast.
    pub broadcast: Option<u64>,
    /// A DHT lookup (how long `show`, `join` and `wait` look for an unknown session).
    pub discovery: Option<u64>,
}

/// Defaults of session commands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Topology of sessions created.
    pub topology: Option<TopologyName>,
    /// Whether sessions created have a nonce-commitment round.
    pub commitments: Option<bool>,
    /// Seconds `sign` and `wait` wait.
    pub wait: Option<u64>,
}

/// What the node keeps of finished sessions (in memory and in `DIR/sessions.redb`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// How long a finished session is kept: seconds, or a duration such as `"24h"`.
    pub keep_finished: Option<DurationSetting>,
    /// Most finished sessions kept; the oldest are forgotten first.
    pub max_finished: Option<usize>,
    /// When a session this node creates is stored in the DHT: `"always"` (before `create`
    /// returns), or a duration such as `"2s"` (the default): a session whose signers' peers
    /// are all listed is then stored only if some signer has not joined that long after
    /// creation (ADR 0013).
    pub dht_announce: Option<DurationSetting>,
}

/// A duration in config.toml: a number of seconds, or text such as `"90s"`, `"10m"`, `"2h"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum DurationSetting {
    /// Seconds.
    Seconds(u64),
    /// Text for [`parse_duration_secs`].
    Text(String),
}

impl DurationSetting {
    /// The duration in seconds (at least 1).
    pub fn seconds(&self) -> std::result::Result<u64, String> {
        match self {
            Self::Seconds(0) => Err("must be at least one second".to_owned()),
            Self::Seconds(s) => Ok(*s),
            Self::Text(text) => parse_duration_secs(text),
        }
    }
}

/// `90`, `90s`, `10m`, `2h`, `1d` as seconds (at least one).
pub fn parse_duration_secs(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a duration like 600, 90s, 10m or 2h, got {text:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("unknown unit {unit:?} (use s, m, h or d)")),
    };
    if secs == 0 {
        return Err("must be at least one second".to_owned());
    }
    Ok(secs)
}

/// `[relay]`: circuit relay v2 as a server or through relays, and AutoNAT.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    /// Offer relaying to other nodes.
    pub server: Option<bool>,
    /// Relays to reserve a slot on, `<multiaddr>/p2p/<relay id>`.
    #[serde(default)]
    pub via: Vec<String>,
    /// Most reservations the relay holds at once.
    pub max_reservations: Option<usize>,
    /// Most circuits the relay keeps open at once.
    pub max_circuits: Option<usize>,
    /// Most bytes one circuit carries in each direction.
    pub max_circuit_bytes: Option<u64>,
    /// How long one circuit may stay open.
    pub max_circuit_duration: Option<DurationSetting>,
    /// Trust AutoNAT probes over private and documentation addresses.
    pub autonat_private_ips: Option<bool>,
}

/// A named signer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// Compressed public key, hex.
    pub key: String,
    /// libp2p peer id, when known.
    pub peer: Option<String>,
}

/// `DIR/config.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Listen addresses.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Addresses announced as reachable from outside.
    #[serde(default)]
    pub external: Vec<String>,
    /// Bootstrap peers, `<multiaddr>/p2p/<peer id>`.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Join sessions announced to this node without asking.
    pub auto_join: Option<bool>,
    /// Prometheus endpoint address.
    pub metrics: Option<String>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: TimeoutSettings,
    /// Defaults of session commands.
    #[serde(default)]
    pub defaults: Defaults,
    /// What is kept of finished sessions.
    #[serde(default)]
    pub sessions: SessionSettings,
    /// Circuit relay and AutoNAT.
    #[serde(default)]
    pub relay: RelaySettings,
    /// Named signers.
    #[serde(default)]
    pub contacts: BTreeMap<String, Contact>,
    /// Named signer sets (contact names, or `self`), in key-aggregation order.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
}

/// A signer resolved from a name or a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// Compressed public key, hex.
    pub key: String,
    /// Peer id, when known.
    pub peer: Option<String>,
}

impl Settings {
    /// The path of the configuration file of node directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(CONFIG_FILE)
    }

    /// Reads `dir/config.toml`; no file gives the defaults.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(NodeError::io("cannot read", path, e)),
        };
        Self::parse(&text).map_err(|reason| NodeError::InvalidArgument {
            what: "config file",
            reason: format!("{}: {reason}", path.display()),
        })
    }

    /// Parses a configuration file's text.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The signing node's settings with this file's timeouts and session retention applied.
    /// Fails on a `keep_finished` that is not a duration.
    pub fn node_config(&self) -> Result<Config> {
        let mut config = Config::default();
        let t = &self.timeouts;
        let secs = Duration::from_secs;
        if let Some(s) = t.join {
            config.join_timeout = secs(s.max(1));
        }
        if let Some(s) = t.rounds {
            config.session_timeout = secs(s.max(1));
        }
        if let Some(s) = t.nonce {
            config.nonce_exchange_timeout = secs(s.max(1));
        }
        if let Some(s) = t.partial_signature {
            config.partial_sig_exchange_timeout = secs(s.max(1));
        }
        if let Some(s) = t.broadcast {
            config.broadcast_timeout = secs(s.max(1));
        }
        if let Some(s) = t.discovery {
            config.dht_query_timeout = secs(s.max(1));
        }
        if let Some(keep) = &self.sessions.keep_finished {
            let s = keep
                .seconds()
                .map_err(|reason| NodeError::InvalidArgument {
                    what: "sessions.keep_finished in config.toml",
                    reason,
                })?;
            config.finished_session_retention = secs(s);
        }
        if let Some(max) = self.sessions.max_finished {
            config.max_finished_sessions = max;
        }
        config.dht_announce = match &self.sessions.dht_announce {
            None => config.dht_announce,
            Some(DurationSetting::Text(t)) if t.trim() == "always" => DhtAnnounce::Always,
            Some(after) => {
                DhtAnnounce::IfNotJoinedWithin(secs(after.seconds().map_err(|reason| {
                    NodeError::InvalidArgument {
                        what: "sessions.dht_announce in config.toml (\"always\" or a duration)",
                        reason,
                    }
                })?))
            }
        };
        Ok(config)
    }

    /// Resolves `--signer` values: a contact name or a key (hex). `me` resolves `self`.
    pub fn resolve_signer(&self, name: &str, me: Option<&Signer>) -> Result<Signer> {
        if name == "self" {
            return me.cloned().ok_or_else(|| {
                NodeError::invalid("signer", "`self` needs the running node's keys")
            });
        }
        if let Some(contact) = self.contacts.get(name) {
            return Ok(Signer {
                key: contact.key.clone(),
                peer: contact.peer.clone(),
            });
        }
        if name.len() == 66 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Signer {
                key: name.to_owned(),
                peer: None,
            });
        }
        Err(NodeError::invalid(
            "signer",
            format!(
                "{name:?} is neither a contact in config.toml nor a compressed key (66 hex digits)"
            ),
        ))
    }

    /// Whether `--group` or a `--signer` names this node (`self`), so its key is needed.
    pub fn names_self(&self, group: Option<&str>, signers: &[String]) -> bool {
        signers.iter().any(|s| s == "self")
            || group
                .and_then(|g| self.groups.get(g))
                .is_some_and(|members| members.iter().any(|m| m == "self"))
    }

    /// The signers of `--group` (if given), then the `--signer`s, each resolved by
    /// [`resolve_signer`](Self::resolve_signer), in that order; `me` resolves `self`.
    pub fn resolve_signers(
        &self,
        group: Option<&str>,
        signers: &[String],
        me: Option<&Signer>,
    ) -> Result<Vec<Signer>> {
        let mut resolved = match group {
            Some(group) => self.group(group, me)?,
            None => Vec::new(),
        };
        for name in signers {
            resolved.push(self.resolve_signer(name, me)?);
        }
        Ok(resolved)
    }

    /// The peer id of the contact whose key is `key`, if the address book has one.
    pub fn peer_of_key(&self, key: &secp256k1::PublicKey) -> Option<String> {
        self.contacts
            .values()
            .find(|c| c.key.trim().parse::<secp256k1::PublicKey>().ok() == Some(*key))
            .and_then(|c| c.peer.clone())
    }

    /// The signers of group `name`, in order.
    pub fn group(&self, name: &str, me: Option<&Signer>) -> Result<Vec<Signer>> {
        let members = self.groups.get(name).ok_or_else(|| {
            NodeError::NotFound(format!(
                "no group {name:?} in config.toml (groups: {})",
                self.groups.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        members.iter().map(|m| self.resolve_signer(m, me)).collect()
    }
}

impl Settings {
    /// The address book as JSON, each contact and group checked: a contact's key must be a
    /// compressed key and its peer a peer id; a group's members must resolve.
    pub fn address_book(&self) -> serde_json::Value {
        use std::str::FromStr;
        let contacts: Vec<serde_json::Value> = self
            .contacts
            .iter()
            .map(|(name, c)| {
                let mut problems = Vec::new();
                if let Err(e) = crate::control::parse_signer_key(&c.key) {
                    problems.push(e.to_string());
                }
                if let Some(peer) = &c.peer {
                    if let Err(e) = musig2_transport::PeerId::from_str(peer) {
                        problems.push(format!("invalid peer id: {e}"));
                    }
                }
                serde_json::json!({
                    "name": name,
                    "key": c.key,
                    "peer": c.peer,
                    "problems": problems,
                })
            })
            .collect();
        let me = Signer {
            key: String::new(),
            peer: None,
        };
        let groups: Vec<serde_json::Value> = self
            .groups
            .iter()
            .map(|(name, members)| {
                let problems: Vec<String> = members
                    .iter()
                    .filter_map(|m| self.resolve_signer(m, Some(&me)).err())
                    .map(|e| e.to_string())
                    .collect();
                serde_json::json!({ "name": name, "signers": members, "problems": problems })
            })
            .collect();
        serde_json::json!({ "contacts": contacts, "groups": groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_resolves() {
        let text = r#"
listen = ["/ip4/0.0.0.0/tcp/4001"]
bootstrap = []
metrics = "127.0.0.1:9464"
[timeouts]
join = 120
nonce = 10
[defaults]
topology = "star"
wait = 60
[contacts.alice]
key = "02aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
peer = "12D3KooWAlice"
[groups]
treasury = ["self", "alice"]
"#;
        let settings = Settings::parse(text).expect("parses");
        assert_eq!(settings.defaults.topology, Some(TopologyName::Star));
        let config = settings.node_config().expect("config");
        assert_eq!(config.join_timeout, Duration::from_secs(120));
        assert_eq!(config.nonce_exchange_timeout, Duration::from_secs(10));
        let me = Signer {
            key: "03".to_owned() + &"bb".repeat(32),
            peer: Some("12D3KooWMe".to_owned()),
        };
        let group = settings.group("treasury", Some(&me)).expect("group");
        assert_eq!(group[0], me);
        assert_eq!(group[1].peer.as_deref(), Some("12D3KooWAlice"));
        assert!(settings.group("nope", Some(&me)).is_err());
        assert!(settings.resolve_signer("bob", None).is_err());
        assert!(Settings::parse("lisen = []").is_err(), "typos are refused");
        let kept = Settings::parse("[sessions]\nkeep_finished = \"2h\"\nmax_finished = 5")
            .expect("parses")
            .node_config()
            .expect("config");
        assert_eq!(kept.finished_session_retention, Duration::from_secs(7200));
        assert_eq!(kept.max_finished_sessions, 5);
        let seconds = Settings::parse("[sessions]\nkeep_finished = 90").expect("parses");
        assert_eq!(
            seconds
                .node_config()
                .expect("config")
                .finished_session_retention,
            Duration::from_secs(90)
        );
        let bad = Settings::parse("[sessions]\nkeep_finished = \"soon\"").expect("parses");
        assert!(bad.node_config().is_err());
        let dht = |text: &str| {
            Settings::parse(&format!("[sessions]\ndht_announce = {text}"))
                .expect("parses")
                .node_config()
                .map(|c| c.dht_announce)
        };
        assert_eq!(dht("\"always\"").ok(), Some(DhtAnnounce::Always));
        assert_eq!(
            dht("\"5s\"").ok(),
            Some(DhtAnnounce::IfNotJoinedWithin(Duration::from_secs(5)))
        );
        assert!(dht("\"never\"").is_err());
        assert_eq!(
            Settings::default()
                .node_config()
                .ok()
                .map(|c| c.dht_announce),
            Some(Config::default().dht_announce)
        );
        assert_eq!(parse_duration_secs("1d"), Ok(86_400));
        assert!(parse_duration_secs("0").is_err());
        let book = settings.address_book();
        assert_eq!(book["contacts"][0]["name"], "alice");
        assert_eq!(
            book["contacts"][0]["problems"].as_array().map(Vec::len),
            Some(1),
            "the example's peer id is not a real one: {book}"
        );
        assert_eq!(book["groups"][0]["problems"], serde_json::json!([]));
    }

    #[test]
    fn the_relay_section_parses_and_refuses_typos() {
        let settings = Settings::parse(
            r#"
[relay]
server = true
via = ["/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWRelay"]
max_reservations = 7
max_circuits = 3
max_circuit_bytes = 1024
max_circuit_duration = "5m"
autonat_private_ips = true
"#,
        )
        .expect("parses");
        let relay = &settings.relay;
        assert_eq!(relay.server, Some(true));
        assert_eq!(relay.via.len(), 1);
        assert_eq!(relay.max_reservations, Some(7));
        assert_eq!(relay.max_circuits, Some(3));
        assert_eq!(relay.max_circuit_bytes, Some(1024));
        assert_eq!(
            relay
                .max_circuit_duration
                .as_ref()
                .map(DurationSetting::seconds),
            Some(Ok(300))
        );
        assert_eq!(relay.autonat_private_ips, Some(true));
        assert!(Settings::parse("[relay]\nservr = true").is_err());
        assert_eq!(Settings::default().relay, RelaySettings::default());
    }
}
