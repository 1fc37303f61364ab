//! `musig2-node`: keys, a local demo, a long-running node and its sessions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use musig2_coordinator::Event;
use musig2_node::control::{self, Request, TaprootSpec, TopologyName, TweakSpec};
use musig2_node::daemon::{Daemon, DaemonConfig, event_json};
use musig2_node::demo::{self, DemoOptions, DemoReport};
use musig2_node::{NodeError, Result, keys};
use musig2_transport::{Multiaddr, PeerId, split_peer_address};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "musig2-node",
    version,
    about = "MuSig2 (BIP327) signing over libp2p"
)]
struct Cli {
    /// Print results as JSON (one object per command) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a node directory with a fresh signing key and libp2p identity.
    Keygen {
        /// The node directory (created if missing; existing keys are never replaced).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run N signers on loopback libp2p and sign one message.
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
    Run(RunArgs),
    /// Show a running node's keys and addresses.
    Info(ControlArgs),
    /// Create, join, watch or cancel sessions on a running node.
    Session {
        #[command(flatten)]
        control: ControlArgs,
        #[command(subcommand)]
        command: SessionCommand,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The node directory (see `keygen`).
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on (repeatable).
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/4001")]
    listen: Vec<Multiaddr>,
    /// A peer to bootstrap from, as `<multiaddr>/p2p/<peer id>` (repeatable).
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// The control socket (default: `<dir>/control.sock`).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Join every session another signer announces to this node. Without it, sessions wait
    /// for `session join`.
    #[arg(long)]
    auto_join: bool,
}

#[derive(Args, Debug)]
struct ControlArgs {
    /// The running node's directory (its control socket is `<dir>/control.sock`).
    #[arg(long, required_unless_present = "control")]
    dir: Option<PathBuf>,
    /// The running node's control socket.
    #[arg(long, conflicts_with = "dir")]
    control: Option<PathBuf>,
}

impl ControlArgs {
    fn socket(&self) -> Result<PathBuf> {
        match (&self.control, &self.dir) {
            (Some(socket), _) => Ok(socket.clone()),
            (None, Some(dir)) => Ok(keys::default_control_socket(dir)),
            // clap already requires one of the two.
            (None, None) => Err(NodeError::InvalidArgument {
                what: "control socket",
                reason: "give --dir or --control".to_owned(),
            }),
        }
    }
}

#[derive(Subcommand, Debug)]
enum SessionCommand {
    /// Create and announce a session; prints its id.
    Create {
        /// A signer's public key, compressed hex, in key-aggregation order (repeat per signer;
        /// include this node's own).
        #[arg(long = "signer", required = true)]
        signers: Vec<String>,
        /// The peer id of each signer, in the same order, or `-` where unknown (those look the
        /// session up in the DHT). Give none or one per signer.
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// The message to sign, hex.
        #[arg(
            long,
            conflicts_with = "message_text",
            required_unless_present = "message_text"
        )]
        message: Option<String>,
        /// The message to sign, as text.
        #[arg(long)]
        message_text: Option<String>,
        /// Session topology.
        #[arg(long, value_enum, default_value_t = TopologyArg::Mesh)]
        topology: TopologyArg,
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
    },
    /// Show what a session would sign (message, signers, aggregate key, rules) before joining.
    Show {
        /// Session id, hex.
        session: String,
    },
    /// Join a session (looking it up in the DHT if needed).
    Join {
        /// Session id, hex.
        session: String,
    },
    /// Join a session and wait for its signature.
    Sign {
        /// Session id, hex.
        session: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Wait for a session's signature (for the session's creator, or after `join`).
    Wait {
        /// Session id, hex.
        session: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Show one session, or all.
    Status {
        /// Session id, hex.
        session: Option<String>,
    },
    /// Abort a session.
    Cancel {
        /// Session id, hex.
        session: String,
    },
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
    match serde_json::to_string_pretty(value) {
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

/// Prints a control reply: JSON as is, or its fields as `key: value` lines.
fn print_value(value: &Value, json: bool) {
    if json {
        print_json(value);
        return;
    }
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match field {
                    Value::String(s) => println!("{key}: {s}"),
                    Value::Array(items) => {
                        println!("{key}:");
                        for item in items {
                            println!(
                                "  {}",
                                item.as_str()
                                    .map_or_else(|| item.to_string(), str::to_owned)
                            );
                        }
                    }
                    other => println!("{key}: {other}"),
                }
            }
        }
        Value::Array(items) if items.is_empty() => println!("(no sessions)"),
        Value::Array(items) => {
            for item in items {
                print_value(item, false);
                println!();
            }
        }
        other => println!("{other}"),
    }
}

fn message_hex(message: Option<String>, text: Option<String>) -> Result<String> {
    match (message, text) {
        (Some(hex_message), _) => Ok(hex_message),
        (None, Some(text)) => Ok(hex::encode(text.as_bytes())),
        (None, None) => Err(NodeError::InvalidArgument {
            what: "message",
            reason: "give --message or --message-text".to_owned(),
        }),
    }
}

/// `plain:HEX` or `xonly:HEX`.
fn parse_tweak(text: &str) -> Result<TweakSpec> {
    let invalid = || NodeError::InvalidArgument {
        what: "--tweak",
        reason: format!("expected plain:HEX or xonly:HEX, got {text:?}"),
    };
    let (kind, hex) = text.split_once(':').ok_or_else(invalid)?;
    let x_only = match kind {
        "plain" => false,
        "xonly" => true,
        _ => return Err(invalid()),
    };
    Ok(TweakSpec {
        hex: hex.to_owned(),
        x_only,
    })
}

fn peer_list(peers: Vec<String>, signers: usize) -> Result<Vec<Option<String>>> {
    if !peers.is_empty() && peers.len() != signers {
        return Err(NodeError::InvalidArgument {
            what: "--peer",
            reason: format!(
                "give one per signer ({signers}) or none, got {}",
                peers.len()
            ),
        });
    }
    Ok(peers.into_iter().map(|p| (p != "-").then_some(p)).collect())
}

fn wait(session: String, timeout_secs: u64) -> Request {
    Request::Wait {
        session,
        timeout_secs: Some(timeout_secs),
    }
}

async fn session(control: ControlArgs, command: SessionCommand, json: bool) -> Result<()> {
    let socket = control.socket()?;
    let value = match command {
        SessionCommand::Create {
            signers,
            peers,
            message,
            message_text,
            topology,
            no_commitments,
            tweaks,
            taproot,
            taproot_merkle_root,
        } => {
            let peers = peer_list(peers, signers.len())?;
            let request = Request::Create {
                message_hex: message_hex(message, message_text)?,
                signers,
                peers,
                topology: topology.into(),
                commitments: Some(!no_commitments),
                tweaks: tweaks
                    .iter()
                    .map(|t| parse_tweak(t))
                    .collect::<Result<_>>()?,
                taproot: (taproot || taproot_merkle_root.is_some()).then_some(TaprootSpec {
                    merkle_root: taproot_merkle_root,
                }),
            };
            control::call(&socket, &request).await?
        }
        SessionCommand::Show { session } => {
            control::call(&socket, &Request::Show { session }).await?
        }
        SessionCommand::Join { session } => {
            control::call(&socket, &Request::Join { session }).await?
        }
        SessionCommand::Sign { session, timeout } => {
            control::call(
                &socket,
                &Request::Join {
                    session: session.clone(),
                },
            )
            .await?;
            control::call(&socket, &wait(session, timeout)).await?
        }
        SessionCommand::Wait { session, timeout } => {
            control::call(&socket, &wait(session, timeout)).await?
        }
        SessionCommand::Status { session } => {
            control::call(&socket, &Request::Status { session }).await?
        }
        SessionCommand::Cancel { session } => {
            control::call(&socket, &Request::Cancel { session }).await?
        }
    };
    print_value(&value, json);
    Ok(())
}

async fn run_node(args: RunArgs, json: bool) -> Result<()> {
    let bootstrap = args
        .bootstrap
        .into_iter()
        .map(|addr| {
            split_peer_address(addr.clone()).ok_or_else(|| NodeError::InvalidArgument {
                what: "--bootstrap",
                reason: format!("{addr} does not end in /p2p/<peer id>"),
            })
        })
        .collect::<Result<Vec<(PeerId, Multiaddr)>>>()?;
    let control = args
        .control
        .unwrap_or_else(|| keys::default_control_socket(&args.dir));
    let daemon = Daemon::start(DaemonConfig {
        dir: args.dir,
        listen: args.listen,
        bootstrap,
        control,
        auto_join: args.auto_join,
        node: Default::default(),
    })
    .await?;
    let info = serde_json::json!({
        "public_key": daemon.node().public_key().to_string(),
        "peer_id": daemon.node().peer_id().to_string(),
        "addresses": daemon.addresses().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "control": daemon.control_socket().display().to_string(),
        "auto_join": args.auto_join,
    });
    print_value(&info, json);
    if !json {
        println!("Running; Ctrl-C (or SIGTERM) stops the node.");
    }
    let printer = tokio::spawn(print_events(daemon.node().events(), json));
    let stopped = stop_signal().await;
    printer.abort();
    let result = daemon.shutdown().await;
    stopped.map_err(|source| NodeError::Io {
        what: "cannot wait for",
        path: PathBuf::from("the stop signal"),
        source,
    })?;
    result
}

/// Prints the node's events as they happen: JSON lines, or one line of text each.
async fn print_events(mut events: tokio::sync::broadcast::Receiver<Event>, json: bool) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                eprintln!("({missed} events not shown: the printer fell behind)");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let value = event_json(&event);
        if json {
            println!("{value}");
            continue;
        }
        let kind = value["event"].as_str().unwrap_or("event");
        let session = event.session();
        match &event {
            Event::SessionDiscovered { .. } => println!(
                "session {session} names this node: read it with `session show {session}`, \
                 sign with `session sign {session}`"
            ),
            Event::SignatureReady { signature, .. } => {
                println!("session {session}: signature {signature}")
            }
            Event::Aborted { .. } => println!(
                "session {session}: aborted ({}), blamed {}",
                value["reason"].as_str().unwrap_or("?"),
                value["blamed"]
            ),
            _ => println!("session {session}: {}", kind.replace('_', " ")),
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

async fn dispatch(cli: Cli) -> Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Keygen { dir } => {
            let info = keys::generate(&dir)?;
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
        Command::Run(args) => run_node(args, json).await,
        Command::Info(control) => {
            let value = control::call(&control.socket()?, &Request::Info).await?;
            print_value(&value, json);
            Ok(())
        }
        Command::Session { control, command } => session(control, command, json).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,libp2p_kad=error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                print_json(&serde_json::json!({
                    "error": { "kind": e.kind(), "message": e.to_string() }
                }));
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
