//! What the binary's integration tests share: a fresh directory per test and a command's
//! output with its `--json` checks.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::Secp256k1;
use serde::Deserialize;
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_musig2-node");

/// An empty directory `musig2-<prefix>-<name>-<pid>` in the temp dir.
pub fn temp_dir(prefix: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("musig2-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A finished command: exit code and output.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// The one JSON object `--json` prints, on one line.
    pub fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one line expected: {:?} (stderr {:?})",
            self.stdout,
            self.stderr
        );
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
    }

    /// Exit code 0 and its JSON object.
    pub fn ok(&self) -> Value {
        assert_eq!(self.code, 0, "{} {}", self.stdout, self.stderr);
        self.json()
    }

    /// A `--json` error: exit code `code`, error kind `kind`.
    pub fn error(&self, code: i32, kind: &str) -> Value {
        assert_eq!(self.code, code, "{} {}", self.stdout, self.stderr);
        let value = self.json();
        assert_eq!(value["error"]["kind"], kind, "{value}");
        value["error"].clone()
    }
}

/// Runs the binary (without `MUSIG2_DIR`), with `--dir` when given, feeding `stdin` when given.
pub fn cli_in(dir: Option<&Path>, args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut command = Command::new(BIN);
    command.env_remove("MUSIG2_DIR");
    if let Some(dir) = dir {
        command.arg("--dir").arg(dir);
    }
    let mut child = command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the binary");
    if let Some(bytes) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(bytes)
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The body of a `GET /metrics` from `url` (`http://ADDR/metrics`), which must answer 200.
pub fn scrape(url: &str) -> String {
    use std::io::{Read, Write};
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// A `musig2-node --json run` process and the lines it printed.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Starts `run`; its log (stderr) goes to `log` when given.
    pub fn start(dir: &Path, args: &[&str], log: Option<&Path>) -> (Self, Value) {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::null(),
        };
        let mut child = Command::new(BIN)
            // The directory from the environment, as an operator's service file would set it.
            .env("MUSIG2_DIR", dir)
            .env("RUST_LOG", "debug")
            .args(["--json", "run"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start the node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the node prints its start line");
        let started: Value = serde_json::from_str(&first).expect("JSON line");
        assert_eq!(started["event"], "started", "{started}");
        (Self { child, lines }, started)
    }

    /// Stops the node with SIGTERM and returns every line it printed after the first.
    pub fn stop(mut self) -> Vec<Value> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "the node stops cleanly: {status:?}");
        self.lines
            .try_iter()
            .map(|line| {
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("run --json printed a non-JSON line ({e}): {line}"))
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// The BIP373 and BIP390 vectors (vendored with musig2-bitcoin).

pub const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../musig2-bitcoin/tests/vectors"
);

#[derive(Deserialize)]
pub struct Bip373 {
    pub participants: Vec<Participant>,
    pub psbts: Vec<PsbtCase>,
}

#[derive(Deserialize)]
pub struct Participant {
    pub pubkey: String,
    pub wif_mainnet: String,
}

#[derive(Deserialize)]
pub struct PsbtCase {
    pub case: String,
    pub variant: Option<String>,
    pub valid: bool,
    pub psbt_hex: String,
}

#[derive(Deserialize)]
pub struct Bip390 {
    pub valid: Vec<Bip390Valid>,
    pub invalid: Vec<Bip390Invalid>,
}

#[derive(Deserialize)]
pub struct Bip390Valid {
    pub descriptor: String,
    pub scripts: Vec<String>,
}

#[derive(Deserialize)]
pub struct Bip390Invalid {
    pub descriptor: String,
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &str) -> T {
    let text = std::fs::read_to_string(format!("{VECTORS}/{path}")).expect("vector file");
    serde_json::from_str(&text).expect("vector JSON")
}

pub fn bip373() -> Bip373 {
    read_json("bip373/bip373-vectors.json")
}

pub fn spend_cases<'a>(v: &'a Bip373, variant: &str) -> Vec<&'a PsbtCase> {
    let cases: Vec<_> = v
        .psbts
        .iter()
        .filter(|c| c.valid && c.case.starts_with("Spend") && c.variant.as_deref() == Some(variant))
        .collect();
    assert_eq!(cases.len(), 4, "{variant}");
    cases
}

pub fn psbt_of(case: &PsbtCase) -> Psbt {
    Psbt::deserialize(&hex::decode(&case.psbt_hex).expect("hex")).expect("psbt")
}

/// The secret key hex and public key of a vector participant.
pub fn participant_keys(p: &Participant) -> (String, String) {
    let secp = Secp256k1::new();
    let sk = bitcoin::PrivateKey::from_wif(&p.wif_mainnet).expect("wif");
    let pk = sk.public_key(&secp).to_string();
    assert_eq!(pk, p.pubkey, "the WIF is the participant's");
    (hex::encode(sk.inner.secret_bytes()), pk)
}
