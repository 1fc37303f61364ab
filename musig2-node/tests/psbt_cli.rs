//! The offline Bitcoin commands through the binary: `descriptor` and `address` against the
//! BIP390 vectors, `psbt show` and `psbt finalize` against the BIP373 vectors (finalized
//! transactions checked with `bitcoin`'s sighash and `secp256k1`), and their errors.

use std::path::{Path, PathBuf};

use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Message, Secp256k1, XOnlyPublicKey};
use bitcoin::sighash::{Prevouts, SighashCache};
use bitcoin::taproot::{ControlBlock, LeafVersion, TapLeafHash};
use bitcoin::{Network, Transaction, TxOut};
use musig2_bitcoin::MusigDescriptor;
use serde_json::Value;

mod common;

use common::{
    Bip390, Out, PsbtCase, VECTORS, bip373, cli_in, participant_keys, psbt_of, read_json,
    spend_cases,
};

fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir("psbt", name)
}

fn cli(args: &[&str]) -> Out {
    cli_in(None, args, None)
}

/// Writes a vector's PSBT in one of the encodings the commands detect.
fn write_psbt(dir: &Path, name: &str, case: &PsbtCase, encoding: usize) -> PathBuf {
    use base64::Engine as _;
    let bytes = hex::decode(&case.psbt_hex).expect("hex");
    let path = dir.join(name);
    let content = match encoding % 3 {
        0 => case.psbt_hex.clone().into_bytes(),
        1 => base64::engine::general_purpose::STANDARD
            .encode(&bytes)
            .into_bytes(),
        _ => bytes,
    };
    std::fs::write(&path, content).expect("write psbt");
    path
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The key a Taproot spend's witness signature must verify under, and the sighash, computed
/// by `bitcoin` alone: the output key for a key-path witness `[sig]`, the leaf's key for a
/// script-path witness `[sig, script, control block]` (whose commitment is checked).
fn witness_key_and_sighash(
    tx: &Transaction,
    prevouts: &[TxOut],
    index: usize,
) -> (XOnlyPublicKey, Message, bitcoin::taproot::Signature) {
    let secp = Secp256k1::verification_only();
    let witness = &tx.input[index].witness;
    let spk = &prevouts[index].script_pubkey;
    assert!(spk.is_p2tr(), "input {index} spends Taproot");
    let output_key = XOnlyPublicKey::from_slice(&spk.as_bytes()[2..34]).expect("key");
    let sig = bitcoin::taproot::Signature::from_slice(&witness[0]).expect("signature");
    let mut cache = SighashCache::new(tx);
    let prevouts = Prevouts::All(prevouts);
    let (key, hash) = match witness.len() {
        1 => (
            output_key,
            cache
                .taproot_key_spend_signature_hash(index, &prevouts, sig.sighash_type)
                .expect("sighash"),
        ),
        3 => {
            let script = bitcoin::Script::from_bytes(&witness[1]);
            let cb = ControlBlock::decode(&witness[2]).expect("control block");
            assert!(cb.verify_taproot_commitment(&secp, output_key, script));
            let leaf = TapLeafHash::from_script(script, LeafVersion::TapScript);
            let key = XOnlyPublicKey::from_slice(&script.as_bytes()[1..33]).expect("leaf key");
            let hash = cache
                .taproot_script_spend_signature_hash(index, &prevouts, leaf, sig.sighash_type)
                .expect("sighash");
            (key, hash)
        }
        n => panic!("input {index}: unexpected witness of {n} items"),
    };
    (key, Message::from_digest(hash.to_byte_array()), sig)
}

#[test]
fn finalize_turns_the_vectors_partial_signatures_into_valid_transactions() {
    let v = bip373();
    let dir = temp_dir("finalize");
    let secp = Secp256k1::verification_only();
    for (n, case) in spend_cases(&v, "With all partial signatures")
        .into_iter()
        .enumerate()
    {
        let input = write_psbt(&dir, &format!("in{n}"), case, n);
        let out = dir.join(format!("signed{n}.psbt"));
        let tx_file = dir.join(format!("tx{n}.hex"));
        let result = cli(&[
            "--json",
            "psbt",
            "finalize",
            s(&input),
            "--out",
            s(&out),
            "--tx",
            s(&tx_file),
        ])
        .ok();
        assert_eq!(
            result["finalized_inputs"],
            serde_json::json!([0]),
            "{}",
            case.case
        );

        let tx_hex = std::fs::read_to_string(&tx_file).expect("tx file");
        assert_eq!(tx_hex.trim(), result["tx"], "{}", case.case);
        let tx: Transaction =
            bitcoin::consensus::encode::deserialize_hex(tx_hex.trim()).expect("transaction");
        assert_eq!(tx.compute_txid().to_string(), result["txid"]);
        let unsigned = psbt_of(case);
        assert_eq!(tx.compute_txid(), unsigned.unsigned_tx.compute_txid());
        let prevouts: Vec<TxOut> = unsigned
            .inputs
            .iter()
            .map(|i| i.witness_utxo.clone().expect("witness utxo"))
            .collect();
        let (key, msg, sig) = witness_key_and_sighash(&tx, &prevouts, 0);
        secp.verify_schnorr(&sig.signature, &msg, &key)
            .unwrap_or_else(|e| panic!("{}: {e}", case.case));
        // The vectors' participants are all in the set that signed: for the output-key and
        // leaf cases the key is their (untweaked) aggregate itself.
        if case.case.contains("output key is") || case.case.contains("key in a script") {
            assert_eq!(key.to_string(), aggregate_xonly(), "{}", case.case);
        }

        // The signed PSBT (base64) carries the same witness.
        let written = std::fs::read_to_string(&out).expect("psbt file");
        let signed = {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(written.trim())
                .expect("base64");
            Psbt::deserialize(&raw).expect("psbt")
        };
        assert_eq!(
            signed.inputs[0].final_script_witness.as_ref(),
            Some(&tx.input[0].witness)
        );

        // Never replaces a file.
        let again = cli(&["psbt", "finalize", s(&input), "--out", s(&out)]);
        assert_ne!(again.code, 0);
        assert!(
            again.stderr.contains("will not overwrite"),
            "{}",
            again.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The vectors' aggregate key, x-only.
fn aggregate_xonly() -> String {
    let text = std::fs::read_to_string(format!("{VECTORS}/bip373/bip373-vectors.json"))
        .expect("vector file");
    let v: Value = serde_json::from_str(&text).expect("json");
    v["aggregate_pubkey"].as_str().expect("aggregate")[2..].to_owned()
}

#[test]
fn finalize_names_missing_and_bad_contributions() {
    let v = bip373();
    let dir = temp_dir("finalize-errors");
    let nonces_only = spend_cases(&v, "With all pubnonces")[0];
    let path = write_psbt(&dir, "nonces", nonces_only, 0);
    let err = cli(&["--json", "psbt", "finalize", s(&path)]).error(2, "usage");
    assert_eq!(
        err["details"]["field"], "PSBT_IN_MUSIG2_PARTIAL_SIG",
        "{err}"
    );
    let missing: Vec<&str> = err["details"]["missing"]
        .as_array()
        .expect("missing")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(missing.len(), 3, "{err}");
    for p in &v.participants {
        assert!(missing.contains(&p.pubkey.as_str()), "{err}");
    }

    // One participant's partial signature replaced by another valid scalar.
    let full = spend_cases(&v, "With all partial signatures")[0];
    let mut psbt = psbt_of(full);
    let culprit = &v.participants[1].pubkey;
    let key = psbt.inputs[0]
        .unknown
        .keys()
        .find(|k| k.type_value == 0x1c && hex::encode(&k.key[..33]) == *culprit)
        .expect("the culprit's partial signature")
        .clone();
    psbt.inputs[0].unknown.insert(key, vec![1; 32]);
    let bad = dir.join("bad.psbt");
    std::fs::write(&bad, psbt.serialize()).expect("write");
    let err = cli(&["--json", "psbt", "finalize", s(&bad)]).error(2, "usage");
    assert_eq!(err["details"]["input"], 0, "{err}");
    assert_eq!(
        err["details"]["culprits"],
        serde_json::json!([culprit]),
        "{err}"
    );
    let text = cli(&["psbt", "finalize", s(&bad)]);
    assert!(
        text.stderr.contains("input 0: invalid partial signature") && text.stderr.contains(culprit),
        "{}",
        text.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn show_lists_what_each_participant_signs() {
    let v = bip373();
    let dir = temp_dir("show");
    for (n, case) in spend_cases(&v, "With participant pubkeys only")
        .into_iter()
        .enumerate()
    {
        let path = write_psbt(&dir, &format!("in{n}"), case, n);
        let psbt = psbt_of(case);
        let prevouts: Vec<TxOut> = psbt
            .inputs
            .iter()
            .map(|i| i.witness_utxo.clone().expect("witness utxo"))
            .collect();
        let output_key = prevouts[0].script_pubkey.as_bytes()[2..34].to_vec();
        for p in &v.participants {
            let (_, pubkey) = participant_keys(p);
            let shown = cli(&["--json", "psbt", "show", s(&path), "--key", &pubkey]).ok();
            assert_eq!(shown["our_key"], pubkey);
            assert_eq!(shown["inputs"][0]["signed_by_us"], true, "{}", case.case);
            let sign = shown["sign"].as_array().expect("sign");
            assert_eq!(sign.len(), 1, "{}: {shown}", case.case);
            let entry = &sign[0];
            assert_eq!(entry["input"], 0);
            assert!(
                entry["signers"]
                    .as_array()
                    .expect("signers")
                    .contains(&Value::from(pubkey.clone())),
                "{entry}"
            );
            // The message is BIP341's sighash, as `bitcoin` computes it.
            let mut cache = SighashCache::new(&psbt.unsigned_tx);
            let prevouts = Prevouts::All(&prevouts);
            let expected = match entry["spend_path"]["kind"].as_str() {
                Some("script_leaf") => {
                    let script =
                        hex::decode(entry["spend_path"]["leaf_script"].as_str().expect("leaf"))
                            .expect("hex");
                    assert_eq!(
                        entry["verify_key"].as_str(),
                        Some(&hex::encode(&script[1..33])[..])
                    );
                    let leaf = TapLeafHash::from_script(
                        bitcoin::Script::from_bytes(&script),
                        LeafVersion::TapScript,
                    );
                    cache
                        .taproot_script_spend_signature_hash(
                            0,
                            &prevouts,
                            leaf,
                            bitcoin::TapSighashType::Default,
                        )
                        .expect("sighash")
                }
                Some(_) => {
                    assert_eq!(
                        entry["verify_key"],
                        hex::encode(&output_key),
                        "{}",
                        case.case
                    );
                    cache
                        .taproot_key_spend_signature_hash(
                            0,
                            &prevouts,
                            bitcoin::TapSighashType::Default,
                        )
                        .expect("sighash")
                }
                None => panic!("no spend path: {entry}"),
            };
            assert_eq!(
                entry["message"],
                hex::encode(expected.to_byte_array()),
                "{}",
                case.case
            );
            let kind = entry["spend_path"]["kind"].as_str().expect("kind");
            let want = if case.case.contains("output key is") {
                "output_key"
            } else if case.case.contains("key in a script") {
                "script_leaf"
            } else {
                "internal_key"
            };
            assert_eq!(kind, want, "{}", case.case);
            assert_eq!(shown["warnings"], serde_json::json!([]), "{shown}");
        }
    }

    // The node's own key comes from --dir (no running node, no identity file), and stdin
    // works; a key that is no participant signs nothing and is warned about.
    let case = spend_cases(&v, "With participant pubkeys only")[0];
    let (secret, pubkey) = participant_keys(&v.participants[2]);
    let node = dir.join("node");
    std::fs::create_dir_all(&node).expect("node dir");
    std::fs::write(node.join("signing.key"), &secret).expect("key");
    let via_dir = cli_in(
        Some(&node),
        &["--json", "psbt", "show", "-"],
        Some(case.psbt_hex.as_bytes()),
    )
    .ok();
    assert_eq!(via_dir["our_key"], pubkey);
    assert_eq!(via_dir["sign"].as_array().map(Vec::len), Some(1));
    let text = cli_in(
        Some(&node),
        &["psbt", "show", "-"],
        Some(case.psbt_hex.as_bytes()),
    );
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains("We sign input #0"), "{}", text.stdout);
    assert!(
        text.stdout
            .contains(via_dir["sign"][0]["message"].as_str().expect("msg"))
    );

    let stranger = "02dff1d77f2a671c5f36183726db2341be58feae1da2deced843240f7b502ba659";
    let path = write_psbt(&dir, "stranger", case, 1);
    let shown = cli(&["--json", "psbt", "show", s(&path), "--key", stranger]).ok();
    assert_eq!(shown["sign"], serde_json::json!([]));
    assert_eq!(shown["inputs"][0]["signed_by_us"], false);
    assert!(
        shown["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("signs no input")),
        "{shown}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The BIP373 field an invalid vector's case text names.
fn field_of(case: &str) -> &'static str {
    if case.contains("public nonce") {
        "PSBT_IN_MUSIG2_PUB_NONCE"
    } else if case.contains("partial sig") {
        "PSBT_IN_MUSIG2_PARTIAL_SIG"
    } else if case.contains("output") {
        "PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS"
    } else {
        "PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS"
    }
}

#[test]
fn invalid_psbts_and_garbage_are_refused_by_name() {
    let v = bip373();
    let dir = temp_dir("invalid");
    let key = &v.participants[0].pubkey;
    let invalid: Vec<&PsbtCase> = v.psbts.iter().filter(|c| !c.valid).collect();
    assert_eq!(invalid.len(), 10);
    for (n, case) in invalid.into_iter().enumerate() {
        // BIP373's "x-only output participant pubkey" case is byte for byte its "x-only
        // aggregate ... output" one (an erratum); both are output fields, named as such.
        let path = write_psbt(&dir, &format!("bad{n}"), case, n);
        let field = field_of(&case.case);
        for args in [
            vec!["psbt", "show", s(&path), "--key", key.as_str()],
            vec!["psbt", "finalize", s(&path)],
        ] {
            let out = cli(&args);
            assert_eq!(out.code, 2, "{}: {}", case.case, out.stderr);
            assert!(out.stderr.contains(field), "{}: {}", case.case, out.stderr);
        }
        let err = cli(&["--json", "psbt", "finalize", s(&path)]).error(2, "usage");
        assert_eq!(err["details"]["field"], field, "{}", case.case);
    }

    let garbage = dir.join("garbage");
    std::fs::write(&garbage, "this is not a PSBT\n").expect("write");
    let out = cli(&["psbt", "show", s(&garbage), "--key", key]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not a PSBT"), "{}", out.stderr);
    let out = cli(&["psbt", "finalize", s(&garbage)]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not a PSBT"), "{}", out.stderr);
    let missing = cli(&["psbt", "finalize", s(&dir.join("nope"))]);
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    let no_key = cli(&["psbt", "show", s(&garbage)]);
    assert_eq!(no_key.code, 2, "{}", no_key.stderr);
    let bad_key = cli(&["psbt", "show", s(&garbage), "--key", "02zz"]);
    assert_eq!(bad_key.code, 2, "{}", bad_key.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn address_reproduces_the_bip390_vectors() {
    let v: Bip390 = read_json("bip390/bip390-vectors.json");
    assert_eq!(v.valid.len(), 6);
    for case in &v.valid {
        for (index, script) in case.scripts.iter().enumerate() {
            let index = index.to_string();
            let out = cli(&[
                "--json",
                "address",
                "--descriptor",
                &case.descriptor,
                "--index",
                &index,
            ])
            .ok();
            assert_eq!(
                out["script_pubkey"], *script,
                "{} at {index}",
                case.descriptor
            );
            let address = bitcoin::Address::from_script(
                bitcoin::Script::from_bytes(&hex::decode(script).expect("hex")),
                Network::Bitcoin,
            )
            .expect("address");
            assert_eq!(out["address"], address.to_string());
            let text = cli(&[
                "address",
                "--descriptor",
                &case.descriptor,
                "--index",
                &index,
            ]);
            assert_eq!(text.stdout.trim(), address.to_string());
        }
        if case.scripts.len() == 1 {
            // Not ranged: index 0 only.
            let out = cli(&["address", "--descriptor", &case.descriptor, "--index", "1"]);
            assert_eq!(out.code, 2, "{}", case.descriptor);
            assert!(out.stderr.contains("not ranged"), "{}", out.stderr);
        }
    }
    // --change takes branch 1 of a multipath descriptor: the same as the `/1/*` one.
    let ranged = &v.valid[2].descriptor;
    assert!(ranged.contains(")/0/*"), "{ranged}");
    let multipath = ranged.replace(")/0/*", ")/<0;1>/*");
    let change_branch = ranged.replace(")/0/*", ")/1/*");
    for (args, same_as) in [(vec!["--change"], &change_branch), (vec![], ranged)] {
        let mut with = vec![
            "address",
            "--descriptor",
            multipath.as_str(),
            "--index",
            "2",
        ];
        with.extend(args);
        let got = cli(&with);
        let want = cli(&["address", "--descriptor", same_as, "--index", "2"]);
        assert_eq!(got.code, 0, "{}", got.stderr);
        assert_eq!(got.stdout, want.stdout);
    }
    let refused = cli(&["address", "--descriptor", ranged, "--change"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    for case in &v.invalid {
        let out = cli(&["address", "--descriptor", &case.descriptor]);
        assert_eq!(out.code, 2, "{}: {}", case.descriptor, out.stdout);
        assert!(out.stderr.contains("error:"), "{}", out.stderr);
    }
}

#[test]
fn descriptor_output_reparses_and_agrees_with_address() {
    let v = bip373();
    let keys: Vec<String> = v.participants.iter().map(|p| p.pubkey.clone()).collect();
    let mut args = vec!["--json", "descriptor", "--network", "testnet"];
    for k in &keys {
        args.extend(["--signer", k.as_str()]);
    }
    let set = cli(&args).ok();
    // The vectors' aggregate is KeyAgg of these keys, sorted.
    assert_eq!(set["aggregate_key"], format!("03{}", aggregate_xonly()));
    let receive = set["receive"].as_str().expect("receive");
    let change = set["change"].as_str().expect("change");
    assert!(
        receive.contains("tpub") && receive.contains(")/0/*)#"),
        "{receive}"
    );
    assert!(change.contains(")/1/*)#"), "{change}");
    let import = set["importdescriptors"].as_array().expect("import");
    assert_eq!(import.len(), 2);
    assert_eq!(import[0]["desc"], receive);
    assert_eq!(import[0]["internal"], false);
    assert_eq!(import[1]["desc"], change);
    assert_eq!(import[1]["internal"], true);
    assert_eq!(import[1]["range"], serde_json::json!([0, 999]));

    for (desc, other) in [(receive, change), (change, receive)] {
        let parsed: MusigDescriptor = desc.parse().expect("re-parses");
        assert!(parsed.is_ranged());
        let expected = parsed.address_at(0, 0, Network::Testnet).expect("address");
        let shown = cli(&["address", "--descriptor", desc, "--network", "testnet"]);
        assert_eq!(shown.code, 0, "{}", shown.stderr);
        assert_eq!(shown.stdout.trim(), expected.to_string());
        let other_address = cli(&["address", "--descriptor", other, "--network", "testnet"]);
        assert_ne!(
            other_address.stdout, shown.stdout,
            "receive and change differ"
        );
    }

    // The same set through config.toml: `self` from the key file, contacts, a group.
    let dir = temp_dir("descriptor");
    let (secret, _) = participant_keys(&v.participants[0]);
    std::fs::write(dir.join("signing.key"), secret).expect("key");
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[contacts.bob]\nkey = \"{}\"\n[contacts.carol]\nkey = \"{}\"\n\
             [groups]\ntreasury = [\"carol\", \"self\", \"bob\"]\n",
            keys[1], keys[2]
        ),
    )
    .expect("config");
    let by_group = cli_in(
        Some(&dir),
        &[
            "--json",
            "descriptor",
            "--group",
            "treasury",
            "--network",
            "testnet",
        ],
        None,
    )
    .ok();
    assert_eq!(by_group["receive"], receive);
    assert_eq!(by_group["signers"][1], keys[0]);
    let by_names = cli_in(
        Some(&dir),
        &[
            "--json",
            "descriptor",
            "--signer",
            "bob",
            "--signer",
            "self",
            "--signer",
            "carol",
            "--network",
            "testnet",
        ],
        None,
    )
    .ok();
    assert_eq!(by_names["change"], change);
    let unknown = cli_in(Some(&dir), &["descriptor", "--signer", "mallory"], None);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("mallory"), "{}", unknown.stderr);
    let mainnet = cli_in(
        Some(&dir),
        &["--json", "descriptor", "--group", "treasury"],
        None,
    )
    .ok();
    assert!(
        mainnet["receive"]
            .as_str()
            .is_some_and(|d| d.contains("xpub"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The library function for a signing session's result: final signatures in plan-entry
/// order are checked against each entry, added, finalized and extracted.
#[test]
fn finalize_with_signatures_checks_each_signature() {
    use musig2_node::NodeError;
    use musig2_node::bitcoin::finalize_with_signatures;
    let v = bip373();
    for case in spend_cases(&v, "With all partial signatures") {
        let psbt =
            musig2_bitcoin::parse_psbt(&hex::decode(&case.psbt_hex).expect("hex")).expect("psbt");
        let entries = musig2_bitcoin::finalizer_entries(&psbt).expect("entries");
        let signature = musig2_bitcoin::aggregate_input(&psbt, &entries[0])
            .expect("aggregate")
            .to_byte_array();

        let mut wrong = signature;
        wrong[63] ^= 1;
        match finalize_with_signatures(psbt.clone(), &entries, &[wrong]) {
            Err(NodeError::Bitcoin(musig2_bitcoin::Error::InvalidSignature(0))) => {}
            other => panic!("{}: {other:?}", case.case),
        }
        assert!(matches!(
            finalize_with_signatures(psbt.clone(), &entries, &[]),
            Err(NodeError::SignatureCount {
                entries: 1,
                signatures: 0
            })
        ));

        let (finalized, tx) =
            finalize_with_signatures(psbt.clone(), &entries, &[signature]).expect("finalize");
        assert!(finalized.inputs[0].final_script_witness.is_some());
        let prevouts = vec![psbt.inputs[0].witness_utxo.clone().expect("utxo")];
        let (key, msg, sig) = witness_key_and_sighash(&tx, &prevouts, 0);
        assert_eq!(sig.signature.serialize(), signature);
        assert_eq!(key.serialize(), entries[0].verify_key.to_byte_array());
        Secp256k1::verification_only()
            .verify_schnorr(&sig.signature, &msg, &key)
            .expect("valid");
    }
}
