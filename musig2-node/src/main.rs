//! `musig2-node`: keys, a local demo, a long-running node and its sessions.

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use musig2_coordinator::{
    BlameKind, ClaimSource, CoordinatorError, Event, Transcript, TranscriptLimits, TranscriptReport,
};
use musig2_node::bitcoin as btc;
use musig2_node::control::{
    self, CallError, MessageSpec, Request, TaprootSpec, TopologyName, TweakSpec,
};
use musig2_node::daemon::{Daemon, DaemonConfig, describe_event};
use musig2_node::demo::{self, DemoOptions, DemoReport};
use musig2_node::psbt_session::{PsbtSession, SessionTerms};
use musig2_node::settings::{Settings, Signer, parse_duration_secs};
use musig2_node::{ErrorKind, NodeError, keys, view};
use musig2_proto::SignerIndex;
use musig2_transport::{Multiaddr, PeerId, split_peer_address};
use serde_json::{Value, json};

type Outcome<T = ()> = std::result::Result<T, Box<CallError>>;

const MAIN_EXAMPLES: &str = "\
Examples:
  musig2-node demo --signers 3
  musig2-node keygen --dir ~/.musig2
  MUSIG2_DIR=~/.musig2 musig2-node run --listen /ip4/0.0.0.0/tcp/4001
  musig2-node --dir ~/.musig2 session create --group treasury --message-file tx.bin
  musig2-node --dir ~/.musig2 session show <SESSION>
  musig2-node verify-transcript session.transcript
  musig2-node --dir ~/.musig2 descriptor --group treasury --network signet
  musig2-node --dir ~/.musig2 psbt show spend.psbt

Exit codes: 0 ok, 1 other failure, 2 usage, 3 node unreachable, 4 not found, 5 timeout,
6 aborted, 7 rejected.";

#[derive(Parser, Debug)]
#[command(
    name = "musig2-node",
    version,
    about = "MuSig2 (BIP327) signing over libp2p",
    after_help = MAIN_EXAMPLES
)]
struct Cli {
    /// Print results as JSON: one object per command on one line (`run`: one per line).
    #[arg(long, global = true)]
    json: bool,
    /// The node directory (keys, config.toml, control.sock).
    #[arg(long, global = true, env = "MUSIG2_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The control socket (default: `<dir>/control.sock`).
    #[arg(long, global = true, value_name = "SOCKET")]
    control: Option<PathBuf>,
    /// Log format on stderr (colour only when stderr is a terminal). `RUST_LOG` sets the level.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a node directory (0700) with a fresh signing key and libp2p identity.
    #[command(after_help = "Example:\n  musig2-node keygen --dir ~/.musig2")]
    Keygen,
    /// Run N signers on loopback libp2p and sign one message.
    #[command(after_help = "Example:\n  musig2-node demo --signers 5 --topology star")]
    Demo {
        /// Number of signers (2 to 128).
        #[arg(long, short = 'n', default_value_t = 3)]
        signers: usize,
        /// Session topology.
        #[arg(long, value_enum, default_value_t = TopologyArg::Mesh)]
        topology: TopologyArg,
        /// Skip the nonce-commitment round.
        #[arg(long)]
        no_commitments: bool,
    },
    /// Run a long-lived node until interrupted (Ctrl-C or SIGTERM).
    #[command(after_help = "Examples:\n  musig2-node --dir ~/.musig2 run\n  \
        musig2-node --dir ~/.musig2 run --listen /ip4/0.0.0.0/tcp/4001 \\\n      \
        --external-addr /ip4/203.0.113.7/tcp/4001 --metrics 127.0.0.1:9464\n  \
        musig2-node --dir ~/.musig2 run --bootstrap /ip4/192.0.2.10/tcp/4001/p2p/12D3KooW...")]
    Run(RunArgs),
    /// Show the node's keys, addresses and peers (keys only when it is not running).
    #[command(after_help = "Example:\n  musig2-node --dir ~/.musig2 info")]
    Info,
    /// Create, read, join, watch or cancel sessions on a running node.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// List the contacts and signer groups of config.toml, each checked (no node needed).
    #[command(after_help = "Example:\n  musig2-node --dir ~/.musig2 contacts")]
    Contacts,
    /// Verify a session transcript file offline: every signature, the aggregate key, the final
    /// signature, and who is provably to blame (exit 0 when every signature checks).
    #[command(
        after_help = "Examples:\n  musig2-node verify-transcript session.transcript\n  \
        musig2-node verify-transcript session.transcript --json"
    )]
    VerifyTranscript {
        /// The transcript file.
        file: PathBuf,
    },
    /// Print a signer set's receive and change descriptors, `tr(musig(...)/0/*)` and `/1/*`
    /// (BIP390), and their Bitcoin Core `importdescriptors` JSON (no node needed).
    #[command(after_help = "Examples:\n  \
        musig2-node --dir ~/.musig2 descriptor --group treasury\n  \
        musig2-node descriptor --signer 02ab... --signer 03cd... --network regtest --json")]
    Descriptor(DescriptorArgs),
    /// Print the address at an index of a descriptor (no node needed). Index 0 only for a
    /// descriptor without `*`; --change takes branch 1 of a `/<0;1>/*` descriptor.
    #[command(after_help = "Examples:\n  \
        musig2-node address --descriptor 'tr(musig(xpub...,xpub...)/0/*)#...' --index 5\n  \
        musig2-node address --descriptor 'tr(musig(tpub...,tpub...)/<0;1>/*)' --change --network testnet")]
    Address {
        /// The descriptor (checksum optional).
        #[arg(long)]
        descriptor: String,
        /// The child index (at `*`).
        #[arg(long, default_value_t = 0)]
        index: u32,
        /// Branch 1 (change) of a multipath `/<0;1>/*` descriptor.
        #[arg(long)]
        change: bool,
        #[command(flatten)]
        network: NetworkArg,
    },
    /// Read or finalize a PSBT (BIP174 with BIP373 MuSig2 fields), offline.
    Psbt {
        #[command(subcommand)]
        command: PsbtCommand,
    },
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  musig2-node completions bash > /etc/bash_completion.d/musig2-node"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(after_help = "Example:\n  musig2-node man > musig2-node.1 && man ./musig2-node.1")]
    Man,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("who").required(true).multiple(true).args(["signers", "group"])))]
struct DescriptorArgs {
    /// A signer: a contact name from config.toml, `self` (this node's key, from --dir), or a
    /// compressed public key (66 hex digits); repeat per signer. The order does not matter:
    /// the descriptors list the keys sorted, as `musig()` aggregates them.
    #[arg(long = "signer")]
    signers: Vec<String>,
    /// A signer group from config.toml (`--signer`s are added to it).
    #[arg(long)]
    group: Option<String>,
    #[command(flatten)]
    network: NetworkArg,
}

#[derive(Args, Debug)]
struct NetworkArg {
    /// The Bitcoin network, for addresses and xpub/tpub: bitcoin, testnet, testnet4, signet,
    /// regtest.
    #[arg(long, value_parser = btc::parse_network, default_value = "bitcoin", value_name = "NETWORK")]
    network: bitcoin::Network,
}

#[derive(Subcommand, Debug)]
enum PsbtCommand {
    /// Show what signing a PSBT approves: inputs, outputs, change, fee, and per input this
    /// key signs its spend path, sighash type, message and verify key.
    #[command(
        after_help = "Examples:\n  musig2-node --dir ~/.musig2 psbt show spend.psbt\n  \
        musig2-node psbt show - --key 02ab... --json < spend.psbt"
    )]
    Show {
        /// The PSBT: binary, base64 or hex; `-` reads stdin.
        file: PathBuf,
        /// Show it for this public key (66 hex digits) instead of the node's (from --dir).
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
        #[command(flatten)]
        network: NetworkArg,
    },
    /// Finalize a PSBT whose MuSig2 inputs hold every participant's public nonce and partial
    /// signature (BIP373): aggregate, verify, finalize, extract. Prints the txid; never
    /// replaces a file.
    #[command(after_help = "Examples:\n  \
        musig2-node psbt finalize spend.psbt --out signed.psbt --tx tx.hex\n  \
        musig2-node --dir ~/.musig2 psbt finalize spend.psbt --session 5974... --tx tx.hex")]
    Finalize {
        /// The PSBT: binary, base64 or hex; `-` reads stdin.
        file: PathBuf,
        /// Take the signatures from this signed session on the running node (created with
        /// `session create --psbt`) instead of the PSBT's BIP373 contributions; the session
        /// must sign exactly this PSBT's inputs for this node.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Write the finalized PSBT to this new file (base64 unless --binary).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Write --out as binary PSBT.
        #[arg(long, requires = "out")]
        binary: bool,
        /// Write the signed transaction to this new file (hex).
        #[arg(long, value_name = "FILE")]
        tx: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Address to listen on (repeatable; default from config.toml, else
    /// /ip4/0.0.0.0/tcp/4001). An unspecified address (0.0.0.0, ::) is advertised as each
    /// interface's address.
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// An address other machines reach this node at that it cannot see itself (e.g. a
    /// forwarded port); announced to peers (repeatable).
    #[arg(long = "external-addr")]
    external: Vec<Multiaddr>,
    /// A peer to bootstrap from, as `<multiaddr>/p2p/<peer id>` (repeatable).
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Join every session another signer announces to this node. Without it, sessions wait
    /// for `session join`.
    #[arg(long)]
    auto_join: bool,
    /// Serve Prometheus metrics on this address (`http://ADDR/metrics`); loopback only unless
    /// --metrics-public.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Allow --metrics on a non-loopback address.
    #[arg(long)]
    metrics_public: bool,
    /// How long finished sessions are kept (in memory and in DIR/sessions.redb), e.g. `90s`,
    /// `10m`, `24h`, `7d` (default from config.toml, else 24h).
    #[arg(long, value_parser = parse_duration_secs, value_name = "DURATION")]
    keep_finished: Option<u64>,
    /// Most finished sessions kept; the oldest are forgotten first (default from config.toml,
    /// else 1024).
    #[arg(long, value_name = "N")]
    max_finished: Option<usize>,
    /// When a session's signature is this node's to act on (its turn to broadcast), run CMD
    /// (`sh -c CMD`) with MUSIG2_SESSION, MUSIG2_SIGNATURE, MUSIG2_MESSAGE (hex) and
    /// MUSIG2_POSITION set; on exit 0 its stdout (trimmed; hex is decoded, at most 256 bytes)
    /// is the receipt the node confirms with. A failure leaves the turn to pass on.
    #[arg(long, value_name = "CMD")]
    on_signature: Option<String>,
    /// Offer circuit relay v2 to nodes that cannot be dialled directly (needs
    /// --external-addr: reservations hand those addresses out). The relay forwards Noise-
    /// encrypted streams only (see SECURITY.md).
    #[arg(long)]
    relay_server: bool,
    /// A relay to reserve a slot on, `<multiaddr>/p2p/<relay id>` (repeatable): the node
    /// announces `.../p2p-circuit` addresses through it and keeps the reservation.
    #[arg(long = "relay", value_name = "ADDR")]
    relays: Vec<Multiaddr>,
    /// Relay server: most reservations at once (default 128).
    #[arg(long, value_name = "N")]
    relay_max_reservations: Option<usize>,
    /// Relay server: most circuits open at once (default 64).
    #[arg(long, value_name = "N")]
    relay_max_circuits: Option<usize>,
    /// Relay server: most bytes one circuit carries each way (default 64 MiB).
    #[arg(long, value_name = "BYTES")]
    relay_max_circuit_bytes: Option<u64>,
    /// Relay server: how long one circuit may stay open, e.g. `30m` (default 30m).
    #[arg(long, value_parser = parse_duration_secs, value_name = "DURATION")]
    relay_max_circuit_duration: Option<u64>,
    /// Let AutoNAT trust probes over private and documentation addresses (a LAN or a test
    /// network); by default only public addresses count.
    #[arg(long)]
    autonat_private_ips: bool,
}

#[derive(Subcommand, Debug)]
enum SessionCommand {
    /// Create and announce a session; prints its id and deadlines.
    #[command(after_help = "Examples:\n  \
        musig2-node session create --group treasury --message-text 'pay 1 BTC to Carol'\n  \
        musig2-node session create --signer self --signer alice --signer 03ab... \\\n      \
        --message-file tx.bin --join-timeout 30m --taproot\n  \
        cat tx.bin | musig2-node session create --group treasury --message-file -")]
    Create(CreateArgs),
    /// Show what a session would sign (message, signers, keys, tweaks, deadlines) before
    /// joining.
    #[command(after_help = "Example:\n  musig2-node session show 5974...")]
    Show {
        /// Session id, hex.
        session: String,
        /// Check that the session's Taproot tweak commits to this script-tree Merkle root.
        #[arg(long)]
        taproot_merkle_root: Option<String>,
        /// Check that the session signs exactly this PSBT's inputs for this node (digest,
        /// signers, every sighash and its tweaks), refusing it otherwise, and show the PSBT's
        /// approval view.
        #[arg(long, value_name = "FILE")]
        psbt: Option<PathBuf>,
        #[command(flatten)]
        network: NetworkArg,
    },
    /// Join a session (looking it up in the DHT if needed).
    #[command(after_help = "Examples:\n  musig2-node session join 5974...\n  \
        musig2-node session join 5974... --psbt spend.psbt")]
    Join {
        /// Session id, hex.
        session: String,
        /// Join only if the session signs exactly this PSBT's inputs for this node.
        #[arg(long, value_name = "FILE")]
        psbt: Option<PathBuf>,
    },
    /// Join a session and wait for its signature.
    #[command(
        after_help = "Examples:\n  musig2-node session sign 5974... --timeout 900\n  \
        musig2-node session sign 5974... --psbt spend.psbt"
    )]
    Sign {
        /// Session id, hex.
        session: String,
        /// Join only if the session signs exactly this PSBT's inputs for this node.
        #[arg(long, value_name = "FILE")]
        psbt: Option<PathBuf>,
        /// Give up after this many seconds (default from config.toml, else 300).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Wait for a session's signature (for the session's creator, or after `join`).
    #[command(after_help = "Example:\n  musig2-node session wait 5974... --timeout 60")]
    Wait {
        /// Session id, hex.
        session: String,
        /// Give up after this many seconds (default from config.toml, else 300).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Show one session, or all (`{"sessions": [...]}`).
    #[command(after_help = "Example:\n  musig2-node session status 5974...")]
    Status {
        /// Session id, hex.
        session: Option<String>,
    },
    /// Abort a session.
    #[command(after_help = "Example:\n  musig2-node session cancel 5974...")]
    Cancel {
        /// Session id, hex.
        session: String,
    },
    /// Confirm that this node acted on a session's signature when it was its turn (e.g. it
    /// published the transaction); the other signers get a signed confirmation.
    #[command(after_help = "Example:\n  musig2-node session confirm 5974... --receipt 9f3c...")]
    Confirm {
        /// Session id, hex.
        session: String,
        /// Opaque receipt, hex, at most 256 bytes (e.g. the txid).
        #[arg(long, default_value = "")]
        receipt: String,
    },
    /// List sessions, filtered (`{"sessions": [...]}` as `status` without a session).
    #[command(
        after_help = "Examples:\n  musig2-node session list --waiting-for-me\n  \
        musig2-node session list --phase aborted --since 2h"
    )]
    List {
        /// Only sessions in this phase.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(view::PHASE_NAMES))]
        phase: Option<String>,
        /// Only running sessions waiting for this node: not joined yet, or with this node among
        /// the holdouts.
        #[arg(long)]
        waiting_for_me: bool,
        /// Only sessions at most this old, e.g. `90s`, `10m`, `2h`, `1d`.
        #[arg(long, value_parser = parse_duration_secs, value_name = "DURATION")]
        since: Option<u64>,
    },
    /// Write a session's transcript to a new file (mode 0600; the running node writes it, and
    /// never replaces a file). Check it with `verify-transcript`.
    #[command(
        after_help = "Example:\n  musig2-node session export 5974... --out session.transcript"
    )]
    Export {
        /// Session id, hex.
        session: String,
        /// The file to create.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Take a transcript file into the running node: a finished session for the record, an
    /// unfinished one resumes at a new attempt. Prints the session id.
    #[command(after_help = "Example:\n  musig2-node session import session.transcript")]
    Import {
        /// The transcript file.
        file: PathBuf,
    },
    /// Forget every finished session now (memory and store), whatever the retention; prints
    /// how many.
    #[command(after_help = "Example:\n  musig2-node session prune")]
    Prune,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("msg").required(true).args(["message", "message_text", "message_file", "psbt"])))]
#[command(group(clap::ArgGroup::new("who").required(true).multiple(true).args(["signers", "group", "psbt"])))]
struct CreateArgs {
    /// A signer: a contact name from config.toml, `self`, or a compressed public key (66 hex
    /// digits), in key-aggregation order (repeat per signer; include this node).
    #[arg(long = "signer")]
    signers: Vec<String>,
    /// A signer group from config.toml (its signers in order; `--signer`s follow it).
    #[arg(long)]
    group: Option<String>,
    /// The peer id of each signer, in the same order, or `-` where unknown (those look the
    /// session up in the DHT). Give none or one per signer; contacts bring their own.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// The message to sign, hex.
    #[arg(long)]
    message: Option<String>,
    /// The message to sign, as text.
    #[arg(long)]
    message_text: Option<String>,
    /// Read the message (raw bytes) from a file, or from stdin with `-`.
    #[arg(long, value_name = "PATH")]
    message_file: Option<PathBuf>,
    /// How long the signers have to join, e.g. `600`, `90s`, `10m`, `2h` (default from the
    /// node's config, else 10 minutes).
    #[arg(long, value_parser = parse_duration_secs, value_name = "DURATION")]
    join_timeout: Option<u64>,
    /// Session topology (default from config.toml, else mesh).
    #[arg(long, value_enum)]
    topology: Option<TopologyArg>,
    /// How many times the coordinator role may pass down the election order: a star
    /// aggregator that misses its deadline, a coordinator that does not confirm the broadcast
    /// (default 0: off; see docs/adr/0008-failover-and-broadcast.md).
    #[arg(long, value_name = "N")]
    max_failovers: Option<u16>,
    /// Skip the nonce-commitment round.
    #[arg(long)]
    no_commitments: bool,
    /// A tweak of the aggregate key, `plain:HEX` or `xonly:HEX` (repeatable; applied in order).
    #[arg(long = "tweak")]
    tweaks: Vec<String>,
    /// Finish with the BIP341 Taproot tweak (key-path only unless --taproot-merkle-root).
    #[arg(long)]
    taproot: bool,
    /// The Taproot script tree's Merkle root, hex (implies --taproot).
    #[arg(long)]
    taproot_merkle_root: Option<String>,
    /// Sign every input of this PSBT that this node's key signs, in one session (binary,
    /// base64 or hex; `-` reads stdin). The signers are the inputs' BIP373 participants, each
    /// input's sighash is one message with its own tweaks, and the announcement carries the
    /// PSBT's digest for the others to check (`session show --psbt`).
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "signers", "group", "message", "message_text", "message_file", "tweaks", "taproot",
        "taproot_merkle_root",
    ])]
    psbt: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TopologyArg {
    Mesh,
    Star,
}

impl From<TopologyArg> for TopologyName {
    fn from(arg: TopologyArg) -> Self {
        match arg {
            TopologyArg::Mesh => TopologyName::Mesh,
            TopologyArg::Star => TopologyName::Star,
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot encode the result: {e}"),
    }
}

fn print_demo(report: &DemoReport) {
    println!(
        "{} libp2p nodes on 127.0.0.1 ready in {:.0} ms.\n",
        report.signers.len(),
        report.setup_ms
    );
    println!("Signers:");
    for (i, signer) in report.signers.iter().enumerate() {
        println!(
            "  #{i:<3} key {}  peer {}",
            signer.public_key, signer.peer_id
        );
    }
    println!("Aggregate key (x-only): {}", report.aggregate_key);
    println!("Message: {:?}\n", report.message);
    println!("Session id: {}", report.session);
    println!("(the other signers got only this id and looked the session up in the DHT)\n");
    println!("Signature: {}", report.signature);
    println!(
        "Verified with secp256k1::schnorr::verify under the aggregate key; identical on all {} nodes.\n",
        report.signers.len()
    );
    println!("Phases (time at which the last node reached each milestone):");
    println!(
        "  {:<32} {:>11} {:>11}",
        "milestone", "phase", "since start"
    );
    let ms = |v: Option<f64>| v.map_or_else(|| format!("{:>11}", "-"), |v| format!("{v:8.2} ms"));
    for phase in &report.phases {
        println!(
            "  {:<32} {} {}",
            phase.milestone,
            ms(phase.phase_ms),
            ms(phase.since_start_ms)
        );
    }
    println!(
        "  {:<32} {:>11} {}",
        "total (create -> all signed)",
        "",
        ms(Some(report.total_ms))
    );
}

/// One line of text for a JSON value inside a text listing.
fn inline(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("local") => {
            let local = o["local"].as_str().unwrap_or("?");
            match o.get("left").and_then(Value::as_str) {
                Some("passed") => format!("{local} (passed)"),
                Some(left) => format!("{local} (in {left})"),
                None => local.to_owned(),
            }
        }
        Value::Object(o) if o.contains_key("index") && o.contains_key("this_node") => {
            view::signer_words(value)
        }
        other => other.to_string(),
    }
}

/// Prints a reply's fields as `key: value` lines.
fn print_text(value: &Value) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match field {
                    Value::Array(items) => {
                        println!("{key}:{}", if items.is_empty() { " none" } else { "" });
                        for item in items {
                            println!("  {}", inline(item));
                        }
                    }
                    Value::Object(o)
                        if !o.contains_key("local") && !o.contains_key("this_node") =>
                    {
                        println!("{key}:");
                        for (k, v) in o {
                            println!("  {k}: {}", inline(v));
                        }
                    }
                    Value::Null => {}
                    other => println!("{key}: {}", inline(other)),
                }
            }
        }
        other => println!("{}", inline(other)),
    }
}

/// `session show` for a person: the message first, escaped, with a warning when anything was.
fn print_show(value: &Value) {
    let message = &value["message"];
    println!("Session:     {}", value["session"].as_str().unwrap_or("?"));
    println!();
    match message["text"].as_str() {
        Some(text) => {
            println!("Message ({} bytes, UTF-8 text):", message["bytes"]);
            println!("    {text}");
            if message["escaped"] == true {
                println!(
                    "  ! The message contains control, bidi or invisible characters; they are shown \
                     escaped (\\r, \\u{{202e}}, ...). Read the hex before you sign:"
                );
                println!("    {}", message["hex"].as_str().unwrap_or(""));
            }
        }
        None => {
            println!("Message ({} bytes, not text), hex:", message["bytes"]);
            println!("    {}", message["hex"].as_str().unwrap_or(""));
        }
    }
    println!();
    if let Some(list) = value["messages"].as_array().filter(|l| l.len() > 1) {
        println!(
            "This session signs {} messages in the same rounds (the first is shown in detail \
             below); each under its own key:",
            list.len()
        );
        for (i, m) in list.iter().enumerate() {
            println!(
                "  #{i}: {} under {}",
                m["message"]["hex"].as_str().unwrap_or("?"),
                m["output_key"].as_str().unwrap_or("?")
            );
        }
        println!();
    }
    if let Some(digest) = value["document_digest"].as_str() {
        println!("Document digest: {digest} (check the PSBT with `session show ID --psbt FILE`)");
        println!();
    }
    println!(
        "Signature will be under (x-only output key): {}",
        value["output_key"].as_str().unwrap_or("?")
    );
    let tweaks = &value["tweak_details"];
    match tweaks["tweaks"].as_array() {
        Some(list) if !list.is_empty() => {
            println!(
                "  aggregate of the signers (untweaked): {}",
                tweaks["untweaked_key"].as_str().unwrap_or("?")
            );
            println!("  tweaks, in order:");
            for t in list {
                println!(
                    "    {} {}",
                    if t["x_only"] == true {
                        "x-only"
                    } else {
                        "plain "
                    },
                    t["value"].as_str().unwrap_or("?")
                );
            }
            println!(
                "  Taproot: {}",
                if tweaks["taproot"] == true {
                    "yes"
                } else {
                    "no"
                }
            );
            if tweaks["taproot"] == true || tweaks["taproot_note"].is_string() {
                println!(
                    "  internal key: {}",
                    tweaks["taproot_internal_key"].as_str().unwrap_or("?")
                );
            }
            if tweaks["taproot_key_path_only"] == true {
                println!("  merkle root: none (key-path only)");
            } else if let Some(root) = tweaks["taproot_merkle_root"].as_str() {
                println!(
                    "  merkle root: {root} ({})",
                    if tweaks["taproot_merkle_root_matches"] == true {
                        "matches the session's Taproot tweak"
                    } else {
                        "DOES NOT match the session's last tweak"
                    }
                );
            }
            if let Some(note) = tweaks["taproot_note"].as_str() {
                println!("  note: {note}");
            }
        }
        _ => println!("  no tweaks (the plain aggregate of the signers' keys)"),
    }
    let signers = value["signers"].as_array().cloned().unwrap_or_default();
    println!();
    println!("Signers ({}), in key-aggregation order:", signers.len());
    for s in &signers {
        let creator = s["index"] == value["creator"]["index"];
        println!(
            "  {}{}",
            view::signer_words(s),
            if creator { "  (creator)" } else { "" }
        );
    }
    println!();
    println!(
        "Rules:       {} topology, nonce commitments {}, election {}",
        value["topology"].as_str().unwrap_or("?"),
        if value["nonce_commitment"] == true {
            "on"
        } else {
            "off"
        },
        value["election"].as_str().unwrap_or("?")
    );
    println!("Created:     {}", inline(&value["created"]));
    println!("Join by:     {}", inline(&value["join_deadline"]));
    println!("Expires:     {}", inline(&value["expires"]));
}

fn print_reply(value: &Value, json: bool) {
    if json {
        print_json(value);
    } else {
        print_text(value);
    }
}

fn read_message(args: &CreateArgs) -> Outcome<Vec<u8>> {
    let max = musig2_proto::Limits::default().max_message_bytes;
    let too_long = |len: usize| NodeError::InvalidArgument {
        what: "message",
        reason: format!("the message is {len} bytes; a session message is at most {max} bytes"),
    };
    let bytes = if let Some(hex_message) = &args.message {
        hex::decode(hex_message.trim()).map_err(|e| NodeError::InvalidArgument {
            what: "--message",
            reason: format!("not hex: {e}"),
        })?
    } else if let Some(text) = &args.message_text {
        text.as_bytes().to_vec()
    } else if let Some(path) = &args.message_file {
        let mut bytes = Vec::new();
        let limit = u64::try_from(max).unwrap_or(u64::MAX) + 1;
        if path == Path::new("-") {
            std::io::stdin()
                .take(limit)
                .read_to_end(&mut bytes)
                .map_err(|e| NodeError::Io {
                    what: "cannot read",
                    path: PathBuf::from("stdin"),
                    source: e,
                })?;
        } else {
            std::fs::File::open(path)
                .and_then(|f| f.take(limit).read_to_end(&mut bytes))
                .map_err(|e| NodeError::Io {
                    what: "cannot read",
                    path: path.clone(),
                    source: e,
                })?;
        }
        if bytes.len() > max {
            let len = if path == Path::new("-") {
                bytes.len()
            } else {
                std::fs::metadata(path).map_or(bytes.len(), |m| {
                    usize::try_from(m.len()).unwrap_or(usize::MAX)
                })
            };
            return Err(too_long(len).into());
        }
        bytes
    } else {
        return Err(NodeError::invalid(
            "arguments",
            "give --message, --message-text or --message-file",
        )
        .into());
    };
    if bytes.len() > max {
        return Err(too_long(bytes.len()).into());
    }
    Ok(bytes)
}

/// `plain:HEX` or `xonly:HEX`.
fn parse_tweak(text: &str) -> Outcome<TweakSpec> {
    let invalid = || NodeError::InvalidArgument {
        what: "--tweak",
        reason: format!("expected plain:HEX or xonly:HEX, got {text:?}"),
    };
    let (kind, hex) = text.split_once(':').ok_or_else(invalid)?;
    let x_only = match kind {
        "plain" => false,
        "xonly" => true,
        _ => return Err(invalid().into()),
    };
    Ok(TweakSpec {
        hex: hex.to_owned(),
        x_only,
    })
}

/// Where the control socket is: `--control`, else `<dir>/control.sock`.
fn socket_of(cli: &Context) -> Outcome<PathBuf> {
    match (&cli.control, &cli.dir) {
        (Some(socket), _) => Ok(socket.clone()),
        (None, Some(dir)) => Ok(keys::default_control_socket(dir)),
        (None, None) => Err(NodeError::invalid(
            "arguments",
            "give --dir (or set MUSIG2_DIR) or --control",
        )
        .into()),
    }
}

fn dir_of(cli: &Context) -> Outcome<&Path> {
    cli.dir
        .as_deref()
        .ok_or_else(|| NodeError::invalid("arguments", "give --dir (or set MUSIG2_DIR)").into())
}

/// What every command needs from the global options.
struct Context {
    json: bool,
    dir: Option<PathBuf>,
    control: Option<PathBuf>,
    settings: Settings,
}

/// What a session for a PSBT signs: every input this node's key signs, under the inputs'
/// participants; peers from `--peer`, else this node's own and its contacts'.
async fn create_for_psbt(
    ctx: &Context,
    socket: &Path,
    path: &Path,
    args: &CreateArgs,
) -> Outcome<(PsbtSession, Vec<Option<String>>)> {
    let psbt = btc::read_psbt(path)?;
    let info = control::call_detailed(socket, &Request::Info).await?;
    let me = btc::parse_public_key("node key", info["public_key"].as_str().unwrap_or_default())?;
    let session = PsbtSession::new(&psbt, &me, &musig2_proto::Limits::default())?;
    let peers = if args.peers.is_empty() {
        session
            .terms
            .signers
            .iter()
            .map(|key| {
                if *key == me {
                    info["peer_id"].as_str().map(str::to_owned)
                } else {
                    ctx.settings.peer_of_key(key)
                }
            })
            .collect()
    } else {
        peer_args(&args.peers, session.terms.signers.len())?
    };
    Ok((session, peers))
}

/// `--peer` values, one per signer (`-` where unknown).
fn peer_args(peers: &[String], signers: usize) -> Outcome<Vec<Option<String>>> {
    if peers.len() != signers {
        return Err(NodeError::InvalidArgument {
            what: "--peer",
            reason: format!(
                "give one per signer ({signers}) or none, got {}",
                peers.len()
            ),
        }
        .into());
    }
    Ok(peers
        .iter()
        .map(|p| (p != "-").then(|| p.clone()))
        .collect())
}

async fn create(ctx: &Context, socket: &Path, args: CreateArgs) -> Outcome<Value> {
    let options = |signers: Vec<String>,
                   peers: Vec<Option<String>>,
                   message_hex: Option<String>,
                   messages: Vec<MessageSpec>,
                   document_digest: Option<String>|
     -> Outcome<Request> {
        let peers = if peers.iter().all(Option::is_none) {
            Vec::new()
        } else {
            peers
        };
        Ok(Request::Create {
            signers,
            peers,
            message_hex,
            messages,
            document_digest,
            topology: args
                .topology
                .map(TopologyName::from)
                .or(ctx.settings.defaults.topology)
                .unwrap_or_default(),
            commitments: if args.no_commitments {
                Some(false)
            } else {
                ctx.settings.defaults.commitments
            },
            tweaks: args
                .tweaks
                .iter()
                .map(|t| parse_tweak(t))
                .collect::<Outcome<_>>()?,
            taproot: (args.taproot || args.taproot_merkle_root.is_some()).then(|| TaprootSpec {
                merkle_root: args.taproot_merkle_root.clone(),
            }),
            join_timeout_secs: args.join_timeout,
            max_failovers: args.max_failovers,
        })
    };
    if let Some(path) = &args.psbt {
        let (session, peers) = create_for_psbt(ctx, socket, path, &args).await?;
        let messages = session
            .terms
            .messages
            .iter()
            .map(|(message, tweaks)| MessageSpec {
                message_hex: hex::encode(message),
                tweaks: tweaks
                    .iter()
                    .map(|t| TweakSpec {
                        hex: hex::encode(t.value()),
                        x_only: t.is_x_only(),
                    })
                    .collect(),
            })
            .collect();
        let request = options(
            session
                .terms
                .signers
                .iter()
                .map(ToString::to_string)
                .collect(),
            peers,
            None,
            messages,
            session.terms.document_digest.map(hex::encode),
        )?;
        let mut value = control::call_detailed(socket, &request).await?;
        value["inputs"] = json!(
            session
                .entries
                .iter()
                .map(|e| e.input_index)
                .collect::<Vec<_>>()
        );
        return Ok(value);
    }
    let message = read_message(&args)?;
    let me = if ctx
        .settings
        .names_self(args.group.as_deref(), &args.signers)
    {
        let info = control::call_detailed(socket, &Request::Info).await?;
        Some(Signer {
            key: info["public_key"].as_str().unwrap_or_default().to_owned(),
            peer: info["peer_id"].as_str().map(str::to_owned),
        })
    } else {
        None
    };
    let signers =
        ctx.settings
            .resolve_signers(args.group.as_deref(), &args.signers, me.as_ref())?;
    let peers: Vec<Option<String>> = if args.peers.is_empty() {
        signers.iter().map(|s| s.peer.clone()).collect()
    } else {
        peer_args(&args.peers, signers.len())?
    };
    let request = options(
        signers.into_iter().map(|s| s.key).collect(),
        peers,
        Some(hex::encode(&message)),
        Vec::new(),
        None,
    )?;
    Ok(control::call_detailed(socket, &request).await?)
}

/// This node's key in a `show` reply: the signer marked `this_node`.
fn our_key_in(show: &Value) -> Outcome<secp256k1::PublicKey> {
    let key = show["signers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["this_node"] == true)
        .and_then(|s| s["public_key"].as_str())
        .ok_or_else(|| {
            NodeError::Rejected("this node is not a signer of the session".to_owned())
        })?;
    Ok(btc::parse_public_key("signer key", key)?)
}

/// Checks that the session `show` describes signs exactly the PSBT at `path`'s inputs for this
/// node (refusing it with what differs) and returns the PSBT's approval view.
fn check_session_psbt(
    show: &Value,
    path: &Path,
    network: bitcoin::Network,
) -> Outcome<(Value, PsbtSession)> {
    let psbt = btc::read_psbt(path)?;
    let me = our_key_in(show)?;
    let expected = PsbtSession::new(&psbt, &me, &musig2_proto::Limits::default())?;
    expected.check(&SessionTerms::of_show_json(show)?)?;
    Ok((btc::show(&psbt, &me, network)?, expected))
}

/// `join`/`sign --psbt`: refuses to join a session that does not sign exactly the PSBT.
async fn check_before_join(socket: &Path, session: &str, path: &Path) -> Outcome<()> {
    let show = control::call_detailed(
        socket,
        &Request::Show {
            session: session.to_owned(),
            taproot_merkle_root: None,
        },
    )
    .await?;
    check_session_psbt(&show, path, bitcoin::Network::Bitcoin)?;
    Ok(())
}

/// Shows progress of a long wait on stderr (a terminal only): phase, who has joined, holdouts,
/// time left; until the task is aborted.
async fn progress(socket: PathBuf, session: String) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let status = control::call(
            &socket,
            &Request::Status {
                session: Some(session.clone()),
            },
        )
        .await;
        let line = match status {
            Ok(s) => view::progress_line(&s),
            Err(_) => "waiting for the session to be announced...".to_owned(),
        };
        eprint!("\r\x1b[2K{line}");
    }
}

async fn wait_with_progress(
    ctx: &Context,
    socket: &Path,
    session: String,
    secs: u64,
) -> Outcome<Value> {
    let show = !ctx.json && std::io::stderr().is_terminal();
    let ticker = show.then(|| tokio::spawn(progress(socket.to_owned(), session.clone())));
    let result = control::call_detailed(
        socket,
        &Request::Wait {
            session,
            timeout_secs: Some(secs),
        },
    )
    .await;
    if let Some(ticker) = ticker {
        ticker.abort();
        eprint!("\r\x1b[2K");
    }
    Ok(result?)
}

async fn session(ctx: &Context, command: SessionCommand) -> Outcome {
    let socket = socket_of(ctx)?;
    let wait_secs = |t: Option<u64>| t.or(ctx.settings.defaults.wait).unwrap_or(300);
    let call = |request: Request| {
        let socket = socket.clone();
        async move { Ok::<_, Box<CallError>>(control::call_detailed(&socket, &request).await?) }
    };
    match command {
        SessionCommand::Create(args) => {
            let value = create(ctx, &socket, args).await?;
            print_reply(&value, ctx.json);
        }
        SessionCommand::Show {
            session,
            taproot_merkle_root,
            psbt,
            network,
        } => {
            let mut value = call(Request::Show {
                session,
                taproot_merkle_root,
            })
            .await?;
            let approval = match &psbt {
                Some(path) => Some(check_session_psbt(&value, path, network.network)?.0),
                None => None,
            };
            if ctx.json {
                if let Some(approval) = approval {
                    value["psbt"] = approval;
                }
                print_json(&value);
            } else {
                print_show(&value);
                if let Some(approval) = approval {
                    println!();
                    println!(
                        "The session signs exactly this node's {} inputs of the PSBT (digest {}):",
                        approval["sign"].as_array().map_or(0, Vec::len),
                        approval["digest"].as_str().unwrap_or("?")
                    );
                    println!();
                    print!("{}", btc::show_text(&approval));
                }
            }
        }
        SessionCommand::Join { session, psbt } => {
            if let Some(path) = &psbt {
                check_before_join(&socket, &session, path).await?;
            }
            print_reply(&call(Request::Join { session }).await?, ctx.json)
        }
        SessionCommand::Sign {
            session,
            psbt,
            timeout,
        } => {
            if let Some(path) = &psbt {
                check_before_join(&socket, &session, path).await?;
            }
            call(Request::Join {
                session: session.clone(),
            })
            .await?;
            let value = wait_with_progress(ctx, &socket, session, wait_secs(timeout)).await?;
            print_reply(&value, ctx.json);
        }
        SessionCommand::Wait { session, timeout } => {
            let value = wait_with_progress(ctx, &socket, session, wait_secs(timeout)).await?;
            print_reply(&value, ctx.json);
        }
        SessionCommand::Status {
            session: Some(session),
        } => {
            let mut value = call(Request::Status {
                session: Some(session),
            })
            .await?;
            if !ctx.json {
                if let Some(obj) = value.as_object_mut() {
                    obj.remove("abort");
                }
            }
            print_reply(&value, ctx.json);
        }
        SessionCommand::Status { session: None } => {
            let value = call(Request::Status { session: None }).await?;
            print_sessions(&value, ctx.json);
        }
        SessionCommand::Confirm { session, receipt } => print_reply(
            &call(Request::Confirm { session, receipt }).await?,
            ctx.json,
        ),
        SessionCommand::Cancel { session } => {
            print_reply(&call(Request::Cancel { session }).await?, ctx.json)
        }
        SessionCommand::List {
            phase,
            waiting_for_me,
            since,
        } => {
            let value = call(Request::List {
                phase,
                waiting_for_me,
                since_secs: since,
            })
            .await?;
            print_sessions(&value, ctx.json);
        }
        SessionCommand::Export { session, out } => {
            let out = absolute_path(&out)?;
            print_reply(&call(Request::Export { session, out }).await?, ctx.json);
        }
        SessionCommand::Import { file } => {
            let file = absolute_path(&file)?;
            print_reply(&call(Request::Import { file }).await?, ctx.json);
        }
        SessionCommand::Prune => {
            let value = call(Request::Prune).await?;
            if ctx.json {
                print_json(&value);
            } else {
                println!("forgot {} finished sessions", value["pruned"]);
            }
        }
    }
    Ok(())
}

/// `path` made absolute against this process's working directory (the node's is another).
fn absolute_path(path: &Path) -> Outcome<PathBuf> {
    std::path::absolute(path).map_err(|e| NodeError::io("cannot resolve", path, e).into())
}

/// A `{"sessions": [...]}` reply: JSON as is, or each session as `key: value` lines.
fn print_sessions(value: &Value, json: bool) {
    if json {
        print_json(value);
        return;
    }
    let sessions = value["sessions"].as_array().cloned().unwrap_or_default();
    if sessions.is_empty() {
        println!("(no sessions)");
    }
    for mut s in sessions {
        if let Some(obj) = s.as_object_mut() {
            obj.remove("abort");
        }
        print_text(&s);
        println!();
    }
}

fn parse_bootstrap(text: &str) -> Outcome<(PeerId, Multiaddr)> {
    let addr: Multiaddr = text.parse().map_err(|e| NodeError::InvalidArgument {
        what: "bootstrap address",
        reason: format!("{text}: {e}"),
    })?;
    split_peer_address(addr.clone()).ok_or_else(|| {
        NodeError::InvalidArgument {
            what: "--bootstrap",
            reason: format!("{addr} does not end in /p2p/<peer id>"),
        }
        .into()
    })
}

fn parse_addrs(what: &'static str, list: &[String]) -> Outcome<Vec<Multiaddr>> {
    list.iter()
        .map(|a| {
            a.parse().map_err(|e| {
                NodeError::InvalidArgument {
                    what,
                    reason: format!("{a}: {e}"),
                }
                .into()
            })
        })
        .collect()
}

async fn run_node(ctx: &Context, args: RunArgs) -> Outcome {
    let dir = dir_of(ctx)?.to_owned();
    let settings = &ctx.settings;
    let mut bootstrap = args
        .bootstrap
        .iter()
        .map(|a| parse_bootstrap(&a.to_string()))
        .collect::<Outcome<Vec<_>>>()?;
    if bootstrap.is_empty() {
        bootstrap = settings
            .bootstrap
            .iter()
            .map(|a| parse_bootstrap(a))
            .collect::<Outcome<Vec<_>>>()?;
    }
    let mut listen = args.listen.clone();
    if listen.is_empty() {
        listen = parse_addrs("listen address in config.toml", &settings.listen)?;
    }
    if listen.is_empty() {
        listen.push(
            "/ip4/0.0.0.0/tcp/4001"
                .parse()
                .map_err(|e| NodeError::invalid("listen address", e))?,
        );
    }
    let mut external = args.external.clone();
    external.extend(parse_addrs(
        "external address in config.toml",
        &settings.external,
    )?);
    let metrics = match (args.metrics, &settings.metrics) {
        (Some(addr), _) => Some(addr),
        (None, Some(text)) => {
            Some(
                text.parse::<SocketAddr>()
                    .map_err(|e| NodeError::InvalidArgument {
                        what: "metrics address in config.toml",
                        reason: format!("{text}: {e}"),
                    })?,
            )
        }
        (None, None) => None,
    };
    if let Some(addr) = metrics {
        if !addr.ip().is_loopback() && !args.metrics_public {
            return Err(NodeError::InvalidArgument {
                what: "--metrics",
                reason: format!(
                    "{addr} is not a loopback address; metrics name peers and sessions, so pass \
                     --metrics-public to serve them beyond this machine"
                ),
            }
            .into());
        }
    }
    let auto_join = args.auto_join || settings.auto_join.unwrap_or(false);
    let control = ctx
        .control
        .clone()
        .unwrap_or_else(|| keys::default_control_socket(&dir));
    let mut node = settings.node_config()?;
    if let Some(secs) = args.keep_finished {
        node.finished_session_retention = Duration::from_secs(secs);
    }
    if let Some(max) = args.max_finished {
        node.max_finished_sessions = max;
    }
    let relay = relay_options(&args, settings, &external)?;
    let store = dir.join(musig2_node::daemon::STORE_FILE);
    let daemon = Daemon::start(DaemonConfig {
        dir,
        listen,
        bootstrap,
        control,
        auto_join,
        node,
        external,
        metrics,
        store: Some(store.clone()),
        on_signature: args.on_signature.clone(),
        relay_server: relay.server.clone(),
        relays: relay.via,
        autonat_private_ips: relay.autonat_private_ips,
    })
    .await?;
    let info = control::call_detailed(daemon.control_socket(), &Request::Info).await?;
    let mut started = json!({ "event": "started" });
    if let (Some(obj), Some(info)) = (started.as_object_mut(), info.as_object()) {
        obj.extend(info.clone());
        obj.insert(
            "control".into(),
            json!(daemon.control_socket().display().to_string()),
        );
        obj.insert("auto_join".into(), json!(auto_join));
        obj.insert(
            "relay_server".into(),
            relay.server.as_ref().map_or(Value::Null, |l| {
                json!({
                    "max_reservations": l.max_reservations,
                    "max_circuits": l.max_circuits,
                    "max_circuit_bytes": l.max_circuit_bytes,
                    "max_circuit_duration_secs": l.max_circuit_duration.as_secs(),
                })
            }),
        );
        obj.insert("store".into(), json!(store.display().to_string()));
        obj.insert(
            "resumed_sessions".into(),
            json!({
                "count": daemon.resumed().sessions,
                "unfinished": daemon.resumed().unfinished,
            }),
        );
        let now = view::now_ms();
        obj.insert("at".into(), json!(view::utc_time(now)));
        obj.insert("at_ms".into(), json!(now));
    }
    if ctx.json {
        print_json(&started);
    } else {
        print_text(&started);
        println!("Running; Ctrl-C (or SIGTERM) stops the node.");
    }
    let printer = tokio::spawn(print_events(
        daemon.node().clone(),
        daemon.node().events(),
        ctx.json,
    ));
    let stopped = stop_signal().await;
    printer.abort();
    let result = daemon.shutdown().await;
    stopped.map_err(|source| NodeError::Io {
        what: "cannot wait for",
        path: PathBuf::from("the stop signal"),
        source,
    })?;
    if ctx.json {
        let now = view::now_ms();
        print_json(&json!({ "event": "stopped", "at": view::utc_time(now), "at_ms": now }));
    }
    Ok(result?)
}

/// What `run` does about relays: serve (with limits), listen through relays, AutoNAT.
struct RelayOptions {
    server: Option<musig2_transport::RelayLimits>,
    via: Vec<Multiaddr>,
    autonat_private_ips: bool,
}

/// `run`'s relay flags over config.toml's `[relay]`, checked: relay addresses end in
/// `/p2p/<id>`, and a relay server has an external address to hand out.
fn relay_options(
    args: &RunArgs,
    settings: &Settings,
    external: &[Multiaddr],
) -> Outcome<RelayOptions> {
    let file = &settings.relay;
    let mut via = args.relays.clone();
    if via.is_empty() {
        via = parse_addrs("relay.via in config.toml", &file.via)?;
    }
    for addr in &via {
        if split_peer_address(addr.clone()).is_none() {
            return Err(NodeError::InvalidArgument {
                what: "--relay",
                reason: format!("{addr} does not end in /p2p/<relay peer id>"),
            }
            .into());
        }
    }
    let server = if args.relay_server || file.server.unwrap_or(false) {
        if external.is_empty() {
            return Err(NodeError::InvalidArgument {
                what: "--relay-server",
                reason: "a relay hands its external addresses to the nodes that reserve a slot;                          give --external-addr (or `external` in config.toml)"
                    .to_owned(),
            }
            .into());
        }
        let mut limits = musig2_transport::RelayLimits::default();
        if let Some(n) = args.relay_max_reservations.or(file.max_reservations) {
            limits.max_reservations = n;
        }
        if let Some(n) = args.relay_max_circuits.or(file.max_circuits) {
            limits.max_circuits = n;
        }
        if let Some(n) = args.relay_max_circuit_bytes.or(file.max_circuit_bytes) {
            limits.max_circuit_bytes = n;
        }
        let duration = match (args.relay_max_circuit_duration, &file.max_circuit_duration) {
            (Some(secs), _) => Some(secs),
            (None, Some(setting)) => {
                Some(
                    setting
                        .seconds()
                        .map_err(|reason| NodeError::InvalidArgument {
                            what: "relay.max_circuit_duration in config.toml",
                            reason,
                        })?,
                )
            }
            (None, None) => None,
        };
        if let Some(secs) = duration {
            limits.max_circuit_duration = Duration::from_secs(secs);
        }
        Some(limits)
    } else {
        None
    };
    Ok(RelayOptions {
        server,
        via,
        autonat_private_ips: args.autonat_private_ips || file.autonat_private_ips.unwrap_or(false),
    })
}

/// Prints the node's events as they happen: JSON lines, or one line of text each.
async fn print_events(
    node: musig2_coordinator::Node,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    json: bool,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                if json {
                    let now = view::now_ms();
                    print_json(&json!({
                        "event": "lagged", "missed": missed, "at": view::utc_time(now), "at_ms": now,
                    }));
                } else {
                    eprintln!("({missed} events not shown: the printer fell behind)");
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let value = describe_event(&node, &event).await;
        if json {
            print_json(&value);
            continue;
        }
        let at = value["at"].as_str().unwrap_or("");
        let kind = value["event"].as_str().unwrap_or("event");
        let session = event.session();
        match &event {
            Event::SessionDiscovered { .. } => println!(
                "{at} session {session} names this node: read it with `session show {session}`, \
                 sign with `session sign {session}`"
            ),
            Event::SignatureReady { signatures, .. } => {
                let list: Vec<String> = signatures.iter().map(ToString::to_string).collect();
                println!("{at} session {session}: signature {}", list.join(" "))
            }
            Event::Aborted { .. } => println!(
                "{at} session {session}: aborted: {}",
                value["text"].as_str().unwrap_or("?"),
            ),
            Event::AttemptStarted { .. } | Event::SessionResumed { .. } => println!(
                "{at} session {session}: {}",
                value["text"].as_str().unwrap_or("?"),
            ),
            _ => println!("{at} session {session}: {}", kind.replace('_', " ")),
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix (what service managers send).
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

async fn info(ctx: &Context) -> Outcome {
    let socket = socket_of(ctx)?;
    match control::call_detailed(&socket, &Request::Info).await {
        Ok(value) => print_reply(&value, ctx.json),
        // Not running: the keys are still there to show.
        Err(CallError {
            error: NodeError::Unreachable { .. },
            ..
        }) if ctx.dir.is_some() => {
            let dir = dir_of(ctx)?;
            let keys = keys::NodeKeys::load(dir)?.info();
            let value = json!({
                "public_key": keys.public_key,
                "peer_id": keys.peer_id,
                "running": false,
                "control": socket.display().to_string(),
            });
            print_reply(&value, ctx.json);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn dispatch(ctx: Context, command: Command) -> Outcome {
    let json = ctx.json;
    match command {
        Command::Keygen => {
            let dir = dir_of(&ctx)?;
            let info = keys::generate(dir)?;
            if json {
                print_json(&info);
            } else {
                println!("Node directory: {}", dir.display());
                println!("public key: {}", info.public_key);
                println!("peer id:    {}", info.peer_id);
            }
            Ok(())
        }
        Command::Demo {
            signers,
            topology,
            no_commitments,
        } => {
            let options = DemoOptions {
                signers,
                topology: TopologyName::from(topology).into(),
                commitments: !no_commitments,
            };
            let report = tokio::time::timeout(Duration::from_secs(120), demo::run(options))
                .await
                .map_err(|_| NodeError::Timeout("the demo"))??;
            if json {
                print_json(&report);
            } else {
                print_demo(&report);
            }
            Ok(())
        }
        Command::Run(args) => run_node(&ctx, args).await,
        Command::Info => info(&ctx).await,
        Command::Session { command } => session(&ctx, command).await,
        Command::Contacts => {
            dir_of(&ctx)?;
            let book = ctx.settings.address_book();
            if json {
                print_json(&book);
            } else {
                for c in book["contacts"].as_array().into_iter().flatten() {
                    println!(
                        "contact {}: key {}{}",
                        c["name"].as_str().unwrap_or("?"),
                        c["key"].as_str().unwrap_or("?"),
                        c["peer"]
                            .as_str()
                            .map_or_else(String::new, |p| format!(" peer {p}"))
                    );
                    for problem in c["problems"].as_array().into_iter().flatten() {
                        println!("  ! {}", problem.as_str().unwrap_or("?"));
                    }
                }
                for g in book["groups"].as_array().into_iter().flatten() {
                    println!(
                        "group {}: {}",
                        g["name"].as_str().unwrap_or("?"),
                        inline(&g["signers"])
                    );
                    for problem in g["problems"].as_array().into_iter().flatten() {
                        println!("  ! {}", problem.as_str().unwrap_or("?"));
                    }
                }
            }
            Ok(())
        }
        Command::VerifyTranscript { file } => verify_transcript(&file, json),
        Command::Descriptor(args) => descriptor(&ctx, args),
        Command::Address {
            descriptor,
            index,
            change,
            network,
        } => {
            let address = btc::address(&descriptor, index, change, network.network)?;
            if json {
                print_json(&address);
            } else {
                println!("{}", address.address);
            }
            Ok(())
        }
        Command::Psbt { command } => psbt(&ctx, command).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "musig2-node",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|e| NodeError::io("cannot write", "stdout", e).into()),
    }
}

/// `descriptor`: signers resolve as for `session create`; `self` is the key in --dir.
fn descriptor(ctx: &Context, args: DescriptorArgs) -> Outcome {
    let me = if ctx
        .settings
        .names_self(args.group.as_deref(), &args.signers)
    {
        let key = keys::load_public_key(dir_of(ctx)?)?;
        Some(Signer {
            key: key.to_string(),
            peer: None,
        })
    } else {
        None
    };
    let keys = ctx
        .settings
        .resolve_signers(args.group.as_deref(), &args.signers, me.as_ref())?
        .iter()
        .map(|s| btc::parse_public_key("signer", &s.key))
        .collect::<Result<Vec<_>, _>>()?;
    let set = btc::descriptors(&keys, args.network.network)?;
    if ctx.json {
        print_json(&set);
    } else {
        println!(
            "Signers ({}): {}",
            set.signers.len(),
            set.signers.join(", ")
        );
        println!("Aggregate key: {}", set.aggregate_key);
        println!("Receive: {}", set.receive);
        println!("Change:  {}", set.change);
        println!("\nBitcoin Core (watch-only descriptor wallet):");
        println!(
            "  bitcoin-cli importdescriptors '{}'",
            set.importdescriptors
        );
    }
    Ok(())
}

/// `psbt finalize --session`: the session's signatures, one per input this node signs, once
/// the session is checked to sign exactly this PSBT.
async fn finalize_from_session(
    ctx: &Context,
    psbt: bitcoin::Psbt,
    path: &Path,
    session: String,
) -> Outcome<btc::Finalized> {
    let socket = socket_of(ctx)?;
    let show = control::call_detailed(
        &socket,
        &Request::Show {
            session: session.clone(),
            taproot_merkle_root: None,
        },
    )
    .await?;
    let (_, expected) = check_session_psbt(&show, path, bitcoin::Network::Bitcoin)?;
    let status = control::call_detailed(
        &socket,
        &Request::Status {
            session: Some(session.clone()),
        },
    )
    .await?;
    let Some(list) = status["signatures"].as_array() else {
        return Err(NodeError::Rejected(format!(
            "session {session} has no signatures (phase {}); wait for it with `session wait`",
            status["phase"].as_str().unwrap_or("?")
        ))
        .into());
    };
    let signatures = list
        .iter()
        .map(|s| {
            let mut bytes = [0u8; 64];
            hex::decode_to_slice(s.as_str().unwrap_or_default(), &mut bytes)
                .map_err(|_| NodeError::invalid("session signature", "expected 128 hex digits"))?;
            Ok(bytes)
        })
        .collect::<Outcome<Vec<_>>>()?;
    let (psbt, tx) = btc::finalize_with_signatures(psbt, &expected.entries, &signatures)?;
    Ok(btc::Finalized {
        psbt,
        tx,
        inputs: expected.entries.iter().map(|e| e.input_index).collect(),
    })
}

async fn psbt(ctx: &Context, command: PsbtCommand) -> Outcome {
    match command {
        PsbtCommand::Show { file, key, network } => {
            let psbt = btc::read_psbt(&file)?;
            let our_key = match (key, &ctx.dir) {
                (Some(key), _) => btc::parse_public_key("--key", &key)?,
                (None, Some(dir)) => keys::load_public_key(dir)?,
                (None, None) => {
                    return Err(NodeError::invalid(
                        "arguments",
                        "give --key, or --dir (or MUSIG2_DIR) for the node's key",
                    )
                    .into());
                }
            };
            let value = btc::show(&psbt, &our_key, network.network)?;
            if ctx.json {
                print_json(&value);
            } else {
                print!("{}", btc::show_text(&value));
            }
            Ok(())
        }
        PsbtCommand::Finalize {
            file,
            session,
            out,
            binary,
            tx,
        } => {
            // Refuse before any work if an output file exists (creating it refuses again).
            for path in out.iter().chain(&tx) {
                if path.exists() {
                    return Err(NodeError::io(
                        "will not overwrite",
                        path.as_path(),
                        std::io::ErrorKind::AlreadyExists.into(),
                    )
                    .into());
                }
            }
            let psbt = btc::read_psbt(&file)?;
            let done = match session {
                None => btc::finalize_psbt(psbt)?,
                Some(session) => finalize_from_session(ctx, psbt, &file, session).await?,
            };
            let mut value = done.to_json();
            if let Some(path) = &out {
                let bytes = if binary {
                    done.psbt.serialize()
                } else {
                    format!("{}\n", btc::psbt_base64(&done.psbt)).into_bytes()
                };
                btc::write_new_file(path, &bytes)?;
                value["psbt_file"] = json!(path.display().to_string());
            }
            if let Some(path) = &tx {
                let hex = value["tx"].as_str().unwrap_or_default();
                btc::write_new_file(path, format!("{hex}\n").as_bytes())?;
                value["tx_file"] = json!(path.display().to_string());
            }
            if ctx.json {
                print_json(&value);
            } else {
                println!("finalized inputs: {}", inline(&value["finalized_inputs"]));
                println!("txid: {}", value["txid"].as_str().unwrap_or("?"));
                match &out {
                    Some(path) => println!("signed PSBT written to {}", path.display()),
                    None => println!("signed PSBT: {}", value["psbt"].as_str().unwrap_or("?")),
                }
                match &tx {
                    Some(path) => println!("transaction written to {}", path.display()),
                    None => println!("transaction: {}", value["tx"].as_str().unwrap_or("?")),
                }
            }
            Ok(())
        }
    }
}

/// The stable name of a kind of proven misbehaviour.
fn blame_name(kind: BlameKind) -> &'static str {
    match kind {
        BlameKind::SameSequence => "same_sequence",
        BlameKind::ConflictingContribution { .. } => "conflicting_contribution",
        BlameKind::CommitmentMismatch => "commitment_mismatch",
        BlameKind::InvalidPartialSig => "invalid_partial_signature",
        BlameKind::AggregateNonceMismatch => "aggregate_nonce_mismatch",
        BlameKind::InvalidFinalSignature => "invalid_final_signature",
        BlameKind::OutOfTurnClaim => "out_of_turn_claim",
        _ => "other",
    }
}

/// A transcript report as JSON (the message escaped as in `session show`).
fn transcript_json(report: &TranscriptReport) -> Value {
    let index = |s: Option<SignerIndex>| s.map(SignerIndex::get);
    json!({
        "valid": report.signatures_valid(),
        "session": report.session.to_string(),
        "exporter": index(report.exporter),
        "creator": report.creator.get(),
        "topology": match report.topology {
            musig2_proto::Topology::Mesh => "mesh",
            musig2_proto::Topology::Star => "star",
        },
        "signers": report.signers.iter().enumerate()
            .map(|(i, k)| json!({ "index": i, "key": k.to_string() }))
            .collect::<Vec<_>>(),
        "untweaked_key": report.untweaked_key.to_string(),
        // The first message at the top level, as for every single-message session.
        "message": report.messages.first().map(|m| view::message_json(&m.message)),
        "messages": report.messages.iter().map(|m| json!({
            "message": view::message_json(&m.message),
            "tweaks": m.tweaks,
            "tweaked_key": m.tweaked_key.to_string(),
            "output_key": m.output_key.to_string(),
        })).collect::<Vec<_>>(),
        "attempts": report.attempts.iter().map(|a| a.get()).collect::<Vec<_>>(),
        "envelopes_verified": report.envelopes_verified,
        "partial_sigs_checked": report.partial_sigs_checked,
        "partial_sigs_unchecked": report.partial_sigs_unchecked,
        "signatures": report.signatures.as_ref().map(|(sigs, valid)| json!({
            "hex": sigs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "valid": valid,
        })),
        // The first message's, as for every single-message session.
        "signature": report.signatures.as_ref().and_then(|(sigs, valid)| {
            sigs.first().map(|sig| json!({ "hex": sig.to_string(), "valid": valid }))
        }),
        "proofs": report.proofs.iter().map(|p| json!({
            "signer": p.signer.get(),
            "kind": blame_name(p.kind),
            "contribution": match p.kind {
                BlameKind::ConflictingContribution { contribution } => Some(contribution),
                _ => None,
            },
            "text": p.kind.to_string(),
            "attempt": p.attempt.map(|a| a.get()),
            "evidence": p.evidence,
        })).collect::<Vec<_>>(),
        "claims": report.claims.iter().map(|c| json!({
            "claimant": index(c.claimant),
            "reason": view::reason_name(c.reason),
            "text": view::reason_text(c.reason),
            "blamed": c.blamed.iter().map(|s| s.get()).collect::<Vec<_>>(),
            "source": match c.source {
                ClaimSource::Envelope(i) => json!({ "envelope": i }),
                ClaimSource::Outcome => json!("outcome"),
            },
        })).collect::<Vec<_>>(),
    })
}

/// `verify-transcript`: decodes and verifies a transcript file without a node or a network.
fn verify_transcript(path: &Path, json: bool) -> Outcome {
    let limits = TranscriptLimits::default();
    let cap = u64::try_from(limits.max_file_bytes).unwrap_or(u64::MAX) + 1;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(cap).read_to_end(&mut bytes))
        .map_err(|e| NodeError::io("cannot read", path, e))?;
    // A file that does not decode or verify is invalid input; the details say where.
    let refused = |e: CoordinatorError| -> Box<CallError> {
        let details = match &e {
            CoordinatorError::Transcript {
                envelope, signer, ..
            } => Some(json!({
                "envelope": envelope,
                "signer": signer.map(SignerIndex::get),
            })),
            _ => None,
        };
        let reason = match e {
            CoordinatorError::Transcript { what, .. } => what,
            other => other.to_string(),
        };
        Box::new(CallError {
            error: NodeError::InvalidArgument {
                what: "transcript",
                reason,
            },
            details,
        })
    };
    let report = Transcript::decode(&bytes, &limits)
        .and_then(|t| t.verify(&limits))
        .map_err(refused)?;
    let value = transcript_json(&report);
    if !report.signatures_valid() {
        if !json {
            print!("{report}");
        }
        return Err(Box::new(CallError {
            error: NodeError::invalid(
                "transcript",
                "the recorded final signature does not verify under the output key",
            ),
            details: Some(value),
        }));
    }
    if json {
        print_json(&value);
    } else {
        print!("{report}");
        for (i, m) in report.messages.iter().enumerate() {
            let message = view::message_json(&m.message);
            if let Some(text) = message["text"].as_str() {
                println!("Message #{i} text (escaped): {text}");
            }
        }
        println!("Result: every signature checks");
    }
    Ok(())
}

fn report(error: &CallError, json: bool) -> ExitCode {
    let kind: ErrorKind = error.error.kind();
    if json {
        let mut body = json!({ "kind": kind, "message": error.error.to_string() });
        if let Some(details) = &error.details {
            body["details"] = details.clone();
        }
        print_json(&json!({ "error": body }));
    } else {
        eprintln!("error: {}", error.error);
    }
    ExitCode::from(kind.exit_code())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,libp2p_kad=error,musig2_node::daemon=info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn main() -> ExitCode {
    let json_requested = std::env::args().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind as Clap;
            let informational = matches!(
                e.kind(),
                Clap::DisplayHelp
                    | Clap::DisplayVersion
                    | Clap::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if json_requested && !informational {
                print_json(&json!({
                    "error": { "kind": ErrorKind::Usage, "message": e.kind().to_string(), "detail": e.to_string() }
                }));
                return ExitCode::from(ErrorKind::Usage.exit_code());
            }
            e.exit();
        }
    };
    init_logging(cli.log_format);
    let json = cli.json;
    let settings = match cli.dir.as_deref().map(Settings::load).transpose() {
        Ok(settings) => settings.unwrap_or_default(),
        Err(e) => return report(&e.into(), json),
    };
    let ctx = Context {
        json,
        dir: cli.dir,
        control: cli.control,
        settings,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return report(
                &NodeError::Io {
                    what: "cannot start",
                    path: PathBuf::from("the async runtime"),
                    source: e,
                }
                .into(),
                json,
            );
        }
    };
    match runtime.block_on(dispatch(ctx, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, json),
    }
}
