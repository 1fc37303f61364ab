//! Bitcoin for the operator, offline: a signer set's `musig()` descriptors and addresses
//! (BIP390), and PSBTs (BIP373) — what a signer approves, and finalizing a PSBT whose
//! participants have all contributed.
//!
//! Everything here is a function over values (keys, text, a [`Psbt`]); reading files is
//! limited to [`read_psbt`] and writing to [`write_new_file`], so the CLI in `main.rs` only
//! parses arguments and prints. The Bitcoin logic itself is `musig2-bitcoin`'s.

use std::io::{Read, Write};
use std::path::Path;

use ::bitcoin::consensus::encode::serialize_hex;
use ::bitcoin::{Network, NetworkKind, Psbt, Transaction};
use base64::Engine as _;
use musig2_bitcoin::{
    MusigDescriptor, PlanEntry, SpendPath, add_signature, aggregate_input, finalizer_entries,
    psbt_digest, read_partial_sigs, read_pubnonces, signer_set_descriptors, signing_plan,
};
use musig2_core::{KeyAggContext, key_sort};
use secp256k1::{PublicKey, schnorr};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{NodeError, Result};

/// Largest PSBT read from a file or stdin, far above any standard transaction's PSBT; bigger
/// input is refused rather than read whole.
pub const MAX_PSBT_BYTES: u64 = 16 * 1024 * 1024;

/// The network names `--network` takes.
pub const NETWORK_NAMES: [&str; 5] = ["bitcoin", "testnet", "testnet4", "signet", "regtest"];

/// Parses a `--network` value (one of [`NETWORK_NAMES`]).
pub fn parse_network(text: &str) -> std::result::Result<Network, String> {
    text.parse::<Network>()
        .map_err(|_| format!("expected one of {}", NETWORK_NAMES.join(", ")))
}

/// Parses a compressed public key (66 hex digits) named `what` in errors.
pub fn parse_public_key(what: &'static str, text: &str) -> Result<PublicKey> {
    text.trim()
        .parse::<PublicKey>()
        .map_err(|e| NodeError::invalid(what, format!("{text:?} is not a public key: {e}")))
}

/// A signer set's watch-only wallet: its receive and change descriptors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignerSetDescriptors {
    /// The signers as given, compressed, hex.
    pub signers: Vec<String>,
    /// KeyAgg of the KeySorted signers (what `musig()` aggregates), compressed, hex.
    pub aggregate_key: String,
    /// `tr(musig(...)/0/*)#checksum`.
    pub receive: String,
    /// `tr(musig(...)/1/*)#checksum`.
    pub change: String,
    /// The two descriptors as Bitcoin Core's `importdescriptors` takes them (indices 0–999,
    /// rescan from now).
    pub importdescriptors: Value,
}

/// The receive (`/0/*`) and change (`/1/*`) descriptors of the signer set `keys` (BIP390);
/// `network` picks xpub or tpub. The keys are written KeySorted, so every signer, whatever
/// order it lists the set in, gets the same descriptor text and checksum (`musig()` sorts
/// anyway, so the addresses would be the same).
pub fn descriptors(keys: &[PublicKey], network: Network) -> Result<SignerSetDescriptors> {
    if keys.is_empty() {
        return Err(NodeError::invalid("signers", "give --signer or --group"));
    }
    let mut sorted = keys.to_vec();
    key_sort(&mut sorted);
    let [receive, change] = signer_set_descriptors(&sorted, NetworkKind::from(network))?;
    let aggregate = KeyAggContext::new(&sorted)
        .map_err(musig2_bitcoin::Error::from)?
        .aggregate_key();
    let (receive, change) = (receive.with_checksum(), change.with_checksum());
    let import = |desc: &str, internal: bool| {
        json!({
            "desc": desc, "active": true, "internal": internal,
            "timestamp": "now", "range": [0, 999],
        })
    };
    Ok(SignerSetDescriptors {
        signers: keys.iter().map(ToString::to_string).collect(),
        aggregate_key: aggregate.to_string(),
        importdescriptors: json!([import(&receive, false), import(&change, true)]),
        receive,
        change,
    })
}

/// One address of a descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DerivedAddress {
    /// The address on the network asked for.
    pub address: String,
    /// Its scriptPubKey, hex.
    pub script_pubkey: String,
    /// The descriptor, with checksum.
    pub descriptor: String,
    /// The multipath branch (0, or 1 for change of a `<0;1>` descriptor).
    pub branch: usize,
    /// The child index.
    pub index: u32,
}

/// The address at `index` of `descriptor` (a `musig()` descriptor, or any other `miniscript`
/// takes; checksum optional). `change` takes branch 1 of a multipath (`/<0;1>/*`) descriptor;
/// a descriptor with one branch (such as the receive or change descriptor of [`descriptors`])
/// refuses it, since its change addresses are another descriptor's. A descriptor without `*`
/// has one address: `index` must be 0.
pub fn address(
    descriptor: &str,
    index: u32,
    change: bool,
    network: Network,
) -> Result<DerivedAddress> {
    let parsed: MusigDescriptor = descriptor.trim().parse()?;
    if !parsed.is_ranged() && index > 0 {
        return Err(NodeError::invalid(
            "--index",
            format!("the descriptor is not ranged (no `*`), so it has index 0 only, not {index}"),
        ));
    }
    let branch = usize::from(change);
    if change && parsed.branches() < 2 {
        return Err(NodeError::invalid(
            "--change",
            "the descriptor has one branch (no /<0;1>/); give the change descriptor (…/1/*) instead",
        ));
    }
    let address = parsed.address_at(branch, index, network)?;
    Ok(DerivedAddress {
        script_pubkey: address.script_pubkey().to_hex_string(),
        address: address.to_string(),
        descriptor: parsed.with_checksum(),
        branch,
        index,
    })
}

const PSBT_MAGIC: &[u8] = b"psbt\xff";

/// Decodes a PSBT given as binary, base64 or hex (detected), and checks its BIP373 fields.
/// `path` names the source in errors.
pub fn decode_psbt(bytes: &[u8], path: &Path) -> Result<Psbt> {
    let not_a_psbt = |reason: String| NodeError::NotAPsbt {
        path: path.to_owned(),
        reason,
    };
    let raw = if bytes.starts_with(PSBT_MAGIC) {
        bytes.to_vec()
    } else {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| not_a_psbt("neither binary (psbt\\xff…) nor text".to_owned()))?
            .trim();
        let decoded = if text
            .as_bytes()
            .get(..10)
            .is_some_and(|magic| magic.eq_ignore_ascii_case(b"70736274ff"))
        {
            hex::decode(text).map_err(|e| not_a_psbt(format!("bad hex: {e}")))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| not_a_psbt(format!("neither binary, hex nor base64 ({e})")))?
        };
        if !decoded.starts_with(PSBT_MAGIC) {
            return Err(not_a_psbt("decoded, but no psbt\\xff magic".to_owned()));
        }
        decoded
    };
    Ok(musig2_bitcoin::parse_psbt(&raw)?)
}

/// Reads a PSBT from `path` (`-` is stdin; see [`decode_psbt`]), at most
/// [`MAX_PSBT_BYTES`].
pub fn read_psbt(path: &Path) -> Result<Psbt> {
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_PSBT_BYTES + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_PSBT_BYTES + 1).read_to_end(&mut bytes))
    };
    read.map_err(|e| NodeError::io("cannot read", path, e))?;
    if bytes.len() as u64 > MAX_PSBT_BYTES {
        return Err(NodeError::NotAPsbt {
            path: path.to_owned(),
            reason: format!("larger than {MAX_PSBT_BYTES} bytes"),
        });
    }
    decode_psbt(&bytes, path)
}

/// Creates `path` (never replacing a file; owner-only) and writes `bytes` into it.
pub fn write_new_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = musig2_transport::create_owner_only_file(path)
        .map_err(|e| NodeError::io("cannot create", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| NodeError::io("cannot write", path, e))
}

/// A PSBT as base64 (BIP174's text form).
pub fn psbt_base64(psbt: &Psbt) -> String {
    base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
}

fn spend_path_json(path: &SpendPath) -> Value {
    match path {
        SpendPath::OutputKey => json!({ "kind": "output_key" }),
        SpendPath::InternalKey { derivation } => {
            json!({ "kind": "internal_key", "derivation": derivation })
        }
        SpendPath::ScriptLeaf {
            derivation,
            script,
            control_block,
        } => json!({
            "kind": "script_leaf",
            "derivation": derivation,
            "leaf_script": script.to_hex_string(),
            "control_block": hex::encode(control_block.serialize()),
        }),
    }
}

/// One plan entry as JSON, with how many contributions the PSBT already holds for it.
fn entry_json(psbt: &Psbt, entry: &PlanEntry) -> Result<Value> {
    let nonces = read_pubnonces(psbt, entry)?.iter().flatten().count();
    let psigs = read_partial_sigs(psbt, entry)?.iter().flatten().count();
    Ok(json!({
        "input": entry.input_index,
        "spend_path": spend_path_json(&entry.path),
        "leaf_hash": entry.leaf_hash.map(hex::encode),
        "sighash_type": entry.sighash_type.to_string(),
        "message": hex::encode(entry.message),
        "verify_key": entry.verify_key.to_string(),
        "aggregate_key": entry.aggregate_key.to_string(),
        "signing_key": entry.signing_key.to_string(),
        "signers": entry.signers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "pubnonces": nonces,
        "partial_sigs": psigs,
    }))
}

/// The approval view of `psbt` for the signer `our_key`: every input (outpoint, amount,
/// address, whether we sign it), every output (amount, address, change), fee and amount sent,
/// and per input we sign its spend path, sighash type, the 32-byte BIP341 message, the key the
/// signature verifies under and the contributions present; inputs that list our key but match
/// no path are `unmatched`, with a warning. `digest` is [`psbt_digest`], for signers to compare.
pub fn show(psbt: &Psbt, our_key: &PublicKey, network: Network) -> Result<Value> {
    let plan = signing_plan(psbt, our_key, network)?;
    let approval = &plan.approval;
    let sat = |a: ::bitcoin::Amount| a.to_sat();
    let inputs: Vec<Value> = approval
        .inputs
        .iter()
        .map(|i| {
            json!({
                "index": i.index,
                "outpoint": i.previous_output.to_string(),
                "amount_sat": i.amount.map(sat),
                "address": i.address.as_ref().map(ToString::to_string),
                "signed_by_us": i.signed_by_us,
            })
        })
        .collect();
    let outputs: Vec<Value> = approval
        .outputs
        .iter()
        .map(|o| {
            json!({
                "index": o.index,
                "amount_sat": sat(o.amount),
                "address": o.address.as_ref().map(ToString::to_string),
                "script_pubkey": o.script_pubkey.to_hex_string(),
                "change": o.change,
            })
        })
        .collect();
    let sign = plan
        .entries
        .iter()
        .map(|e| entry_json(psbt, e))
        .collect::<Result<Vec<_>>>()?;
    let mut warnings: Vec<String> = plan
        .unmatched
        .iter()
        .map(|i| {
            format!(
                "input {i} lists our key in PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS, but its output \
                 matches no aggregate (or derived) key of ours: nothing is signed for it"
            )
        })
        .collect();
    if plan.entries.is_empty() {
        warnings.push(format!("key {our_key} signs no input of this PSBT"));
    }
    if approval.fee.is_none() {
        warnings.push("the fee is unknown: some input has no UTXO in the PSBT".to_owned());
    }
    Ok(json!({
        "our_key": our_key.to_string(),
        "network": network.to_string(),
        "txid": psbt.unsigned_tx.compute_txid().to_string(),
        "digest": hex::encode(psbt_digest(psbt)),
        "inputs": inputs,
        "outputs": outputs,
        "fee_sat": approval.fee.map(sat),
        "sent_sat": sat(approval.sent),
        "sign": sign,
        "unmatched": plan.unmatched,
        "warnings": warnings,
    }))
}

fn btc(sat: &Value) -> String {
    match sat.as_u64() {
        Some(s) => format!("{}.{:08} BTC", s / 100_000_000, s % 100_000_000),
        None => "unknown".to_owned(),
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

/// [`show`]'s JSON as text for a person: warnings first, then what moves, then what is
/// signed.
pub fn show_text(value: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    for warning in list(&value["warnings"]) {
        let _ = writeln!(out, "! {}", text(&warning));
    }
    let _ = writeln!(out, "PSBT of transaction {}", text(&value["txid"]));
    let _ = writeln!(out, "digest:  {}", text(&value["digest"]));
    let _ = writeln!(
        out,
        "our key: {} ({})",
        text(&value["our_key"]),
        text(&value["network"])
    );
    let _ = writeln!(out, "\nInputs:");
    for i in list(&value["inputs"]) {
        let _ = writeln!(
            out,
            "  #{} {}  {}  from {}{}",
            i["index"],
            text(&i["outpoint"]),
            btc(&i["amount_sat"]),
            i["address"].as_str().unwrap_or("(no address)"),
            if i["signed_by_us"] == true {
                "  [we sign]"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(out, "\nOutputs:");
    for o in list(&value["outputs"]) {
        let _ = writeln!(
            out,
            "  #{} {}  to {}{}",
            o["index"],
            btc(&o["amount_sat"]),
            o["address"].as_str().map_or_else(
                || format!("script {}", text(&o["script_pubkey"])),
                str::to_owned
            ),
            if o["change"] == true {
                "  [change, ours]"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(out, "\nSent:    {}", btc(&value["sent_sat"]));
    let _ = writeln!(out, "Fee:     {}", btc(&value["fee_sat"]));
    for e in list(&value["sign"]) {
        let path = &e["spend_path"];
        let derivation = |p: &Value| {
            let steps: Vec<String> = list(&p["derivation"])
                .iter()
                .map(Value::to_string)
                .collect();
            if steps.is_empty() {
                "the aggregate itself".to_owned()
            } else {
                format!("derived from the aggregate along /{}", steps.join("/"))
            }
        };
        let how = match text(&path["kind"]) {
            "output_key" => "key path; the output key is the aggregate key".to_owned(),
            "internal_key" => format!("key path; internal key = {}", derivation(path)),
            _ => format!(
                "script path; leaf {} with a key = {}",
                text(&path["leaf_script"]),
                derivation(path)
            ),
        };
        let _ = writeln!(out, "\nWe sign input #{}:", e["input"]);
        let _ = writeln!(out, "  spend path:   {how}");
        let _ = writeln!(out, "  sighash type: {}", text(&e["sighash_type"]));
        let _ = writeln!(out, "  message:      {}", text(&e["message"]));
        let _ = writeln!(out, "  verify key:   {}", text(&e["verify_key"]));
        let _ = writeln!(
            out,
            "  signers:      {} (aggregate {}); nonces {}, partial signatures {}",
            list(&e["signers"]).len(),
            text(&e["aggregate_key"]),
            e["pubnonces"],
            e["partial_sigs"]
        );
    }
    out
}

/// Adds final BIP340 signatures to `psbt`, one per plan entry in `plan_entries` order, then
/// finalizes those inputs and extracts the transaction.
///
/// Each signature must verify under its entry's `verify_key` for its `message`
/// ([`add_signature`] checks; a failure is `Error::InvalidSignature(input)`); it is written as
/// `TAP_KEY_SIG` or `TAP_SCRIPT_SIG` with the entry's sighash type. Every other input must
/// already be final. Returns the finalized PSBT and the transaction.
pub fn finalize_with_signatures(
    mut psbt: Psbt,
    plan_entries: &[PlanEntry],
    signatures: &[[u8; 64]],
) -> Result<(Psbt, Transaction)> {
    if plan_entries.len() != signatures.len() {
        return Err(NodeError::SignatureCount {
            entries: plan_entries.len(),
            signatures: signatures.len(),
        });
    }
    for (entry, bytes) in plan_entries.iter().zip(signatures) {
        let signature = schnorr::Signature::from_byte_array(*bytes);
        add_signature(&mut psbt, entry, &signature)?;
    }
    musig2_bitcoin::finalize(&mut psbt, plan_entries)?;
    let tx = musig2_bitcoin::extract(psbt.clone())?;
    Ok((psbt, tx))
}

/// A PSBT finalized from its participants' BIP373 contributions.
#[derive(Clone, Debug)]
pub struct Finalized {
    /// The finalized PSBT.
    pub psbt: Psbt,
    /// The signed transaction.
    pub tx: Transaction,
    /// The MuSig2 inputs aggregated and finalized here.
    pub inputs: Vec<usize>,
}

impl Finalized {
    /// The result as JSON (`psbt` base64, `tx` hex).
    pub fn to_json(&self) -> Value {
        json!({
            "txid": self.tx.compute_txid().to_string(),
            "finalized_inputs": self.inputs,
            "tx": serialize_hex(&self.tx),
            "psbt": psbt_base64(&self.psbt),
        })
    }
}

/// What a BIP373 finalizer does, offline: for every MuSig2 input (whoever's; see
/// `finalizer_entries`) that is not final yet, aggregates the participants' public nonces and
/// partial signatures from the PSBT and verifies them (missing ones name the holdouts, bad
/// ones the culprits), then [`finalize_with_signatures`].
pub fn finalize_psbt(psbt: Psbt) -> Result<Finalized> {
    let entries: Vec<PlanEntry> = finalizer_entries(&psbt)?
        .into_iter()
        // An input someone already finalized is left as it is.
        .filter(|e| {
            psbt.inputs[e.input_index].final_script_witness.is_none()
                && psbt.inputs[e.input_index].final_script_sig.is_none()
        })
        .collect();
    let signatures = entries
        .iter()
        .map(|e| Ok(aggregate_input(&psbt, e)?.to_byte_array()))
        .collect::<Result<Vec<_>>>()?;
    let (psbt, tx) = finalize_with_signatures(psbt, &entries, &signatures)?;
    Ok(Finalized {
        psbt,
        tx,
        inputs: entries.iter().map(|e| e.input_index).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn keys(n: usize) -> Vec<PublicKey> {
        (1..=n)
            .map(|i| {
                let mut secret = [0u8; 32];
                secret[31] = u8::try_from(i).expect("small");
                secp256k1::Keypair::from_secret_bytes(secret)
                    .expect("valid")
                    .public_key()
            })
            .collect()
    }

    #[test]
    fn descriptors_round_trip_through_address() {
        let set = descriptors(&keys(3), Network::Regtest).expect("descriptors");
        assert!(set.receive.starts_with("tr(musig(tpub"), "{}", set.receive);
        assert!(set.receive.contains(")/0/*)#"), "{}", set.receive);
        assert!(set.change.contains(")/1/*)#"), "{}", set.change);
        assert_eq!(set.importdescriptors[1]["internal"], true);
        let a = address(&set.receive, 0, false, Network::Regtest).expect("address");
        assert!(a.address.starts_with("bcrt1p"), "{}", a.address);
        let b = address(&set.receive, 1, false, Network::Regtest).expect("address");
        assert_ne!(a.address, b.address);
        // Order does not matter: musig() sorts.
        let mut reversed = keys(3);
        reversed.reverse();
        let again = descriptors(&reversed, Network::Regtest).expect("descriptors");
        assert_eq!(again.aggregate_key, set.aggregate_key);
        assert_eq!(again.receive, set.receive, "one text per signer set");
        assert_eq!(
            address(&again.receive, 0, false, Network::Regtest)
                .expect("address")
                .address,
            a.address
        );
    }

    #[test]
    fn address_refuses_what_it_cannot_mean() {
        let set = descriptors(&keys(2), Network::Bitcoin).expect("descriptors");
        let change = address(&set.receive, 0, true, Network::Bitcoin).expect_err("one branch");
        assert!(
            matches!(
                change,
                NodeError::InvalidArgument {
                    what: "--change",
                    ..
                }
            ),
            "{change}"
        );
        let plain = format!("tr({})", keys(1)[0]);
        assert!(address(&plain, 0, false, Network::Bitcoin).is_ok());
        let index = address(&plain, 1, false, Network::Bitcoin).expect_err("not ranged");
        assert!(
            matches!(
                index,
                NodeError::InvalidArgument {
                    what: "--index",
                    ..
                }
            ),
            "{index}"
        );
        let bad = address("tr(musig())", 0, false, Network::Bitcoin).expect_err("bip390");
        assert!(matches!(bad, NodeError::Bitcoin(_)), "{bad}");
        assert!(descriptors(&[], Network::Bitcoin).is_err());
    }

    #[test]
    fn psbt_encodings_are_detected_and_garbage_is_refused() {
        let path = PathBuf::from("x.psbt");
        let multibyte = "70736274\u{e9}ff".as_bytes();
        for garbage in [
            &b"hello"[..],
            b"\xff\xfe",
            b"aGVsbG8=",
            b"70736274fg",
            multibyte,
            b"",
        ] {
            let err = decode_psbt(garbage, &path).expect_err("garbage");
            assert!(matches!(err, NodeError::NotAPsbt { .. }), "{err}");
        }
        // The magic alone (binary, hex or base64) is a PSBT to parse, and bitcoin's parser
        // says what is wrong with it.
        for magic in [&b"psbt\xff"[..], b"70736274FF\n", b" cHNidP8= "] {
            let err = decode_psbt(magic, &path).expect_err("empty");
            assert!(matches!(err, NodeError::Bitcoin(_)), "{err}");
        }
    }

    #[test]
    fn signature_count_must_match() {
        let tx = Transaction {
            version: ::bitcoin::transaction::Version::TWO,
            lock_time: ::bitcoin::absolute::LockTime::ZERO,
            input: Vec::new(),
            output: Vec::new(),
        };
        let psbt = Psbt::from_unsigned_tx(tx).expect("psbt");
        let err = finalize_with_signatures(psbt, &[], &[[0; 64]]).expect_err("count");
        assert!(
            matches!(
                err,
                NodeError::SignatureCount {
                    entries: 0,
                    signatures: 1
                }
            ),
            "{err}"
        );
    }
}
