//! Descriptor behaviour beyond the BIP390 vectors: multipath, ranged participants, rawtr with
//! derivation, checksums, nesting, private participants, and the signer-set builder.

use bitcoin::{Network, NetworkKind};
use musig2_bitcoin::{Bip390Rule, Error, MusigDescriptor, signer_set_descriptors, with_checksum};
use musig2_core::secp256k1::Keypair;

const XPUB_A: &str = "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL";
const XPUB_B: &str = "xpub68NZiKmJWnxxS6aaHmn81bvJeTESw724CRDs6HbuccFQN9Ku14VQrADWgqbhhTHBaohPX4CjNLf9fq9MYo6oDaPPLPxSb7gwQN3ih19Zm4Y";

fn parse(s: &str) -> Result<MusigDescriptor, Error> {
    s.parse()
}

fn rule(s: &str) -> Bip390Rule {
    match parse(s).unwrap_err() {
        Error::Bip390(r) => r,
        other => panic!("{s}: {other}"),
    }
}

#[test]
fn multipath_musig_equals_its_two_single_path_descriptors() {
    let multi = parse(&format!("tr(musig({XPUB_A},{XPUB_B})/<0;1>/*)")).unwrap();
    assert_eq!(multi.branches(), 2);
    for branch in 0..2u32 {
        let single = parse(&format!("tr(musig({XPUB_A},{XPUB_B})/{branch}/*)")).unwrap();
        for i in 0..3 {
            assert_eq!(
                multi.script_pubkey_at(branch as usize, i).unwrap(),
                single.script_pubkey(i).unwrap()
            );
        }
    }
    // The BIP390 rawtr vector is the receive branch of the multipath rawtr.
    let raw = parse(&format!("rawtr(musig({XPUB_A},{XPUB_B})/<0;1>/*)")).unwrap();
    assert_eq!(
        raw.script_pubkey_at(0, 0).unwrap().to_hex_string(),
        "51209508c08832f3bb9d5e8baf8cb5cfa3669902e2f2da19acea63ff47b93faa9bfc"
    );
}

#[test]
fn ranged_participants_without_musig_derivation() {
    let ranged = parse(&format!("tr(musig({XPUB_A}/*,{XPUB_B}/*))")).unwrap();
    assert!(ranged.is_ranged());
    for i in 0..3 {
        let fixed = parse(&format!("tr(musig({XPUB_A}/{i},{XPUB_B}/{i}))")).unwrap();
        assert_eq!(
            ranged.script_pubkey(i).unwrap(),
            fixed.script_pubkey(0).unwrap()
        );
    }
    let multi = parse(&format!("tr(musig({XPUB_A}/<0;1>,{XPUB_B}/<0;1>))")).unwrap();
    assert_eq!(multi.branches(), 2);
    let one = parse(&format!("tr(musig({XPUB_A}/1,{XPUB_B}/1))")).unwrap();
    assert_eq!(
        multi.script_pubkey_at(1, 0).unwrap(),
        one.script_pubkey(0).unwrap()
    );
}

#[test]
fn rawtr_with_derivation_has_no_taptweak() {
    let raw = parse(&format!("rawtr(musig({XPUB_A},{XPUB_B})/0/*)")).unwrap();
    // rawtr: the derived key itself; tr(): the same key tweaked. They differ.
    let tr = parse(&format!("tr(musig({XPUB_A},{XPUB_B})/0/*)")).unwrap();
    assert_ne!(raw.script_pubkey(1).unwrap(), tr.script_pubkey(1).unwrap());
    assert!(
        raw.address_at(0, 1, Network::Bitcoin)
            .unwrap()
            .to_string()
            .starts_with("bc1p")
    );
}

#[test]
fn checksums_are_checked() {
    let text = format!("tr(musig({XPUB_A},{XPUB_B})/0/*)");
    let good = with_checksum(&text);
    assert_eq!(parse(&good).unwrap().as_str(), text);
    let mut bad = good.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == 'q' { 'p' } else { 'q' });
    assert!(matches!(parse(&bad), Err(Error::Descriptor(_))));
}

#[test]
fn further_rules_are_named() {
    let k = "02f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9";
    let x = "f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9";
    assert_eq!(
        rule(&format!("tr(musig(musig({k}),{k}))")),
        Bip390Rule::Nested
    );
    assert_eq!(rule("tr(musig())"), Bip390Rule::NoParticipants);
    assert!(matches!(
        rule(&format!("tr(musig({k},{x}))")),
        Bip390Rule::InvalidParticipant { index: 1, .. }
    ));
    assert!(matches!(
        rule(&format!("tr(musig({k},nonsense))")),
        Bip390Rule::InvalidParticipant { index: 1, .. }
    ));
    assert_eq!(
        rule(&format!("tr(musig({XPUB_A}/<0;1>,{XPUB_B}/<0;1;2>))")),
        Bip390Rule::MultipathLengthMismatch
    );
    assert!(matches!(
        rule(&format!("tr(musig({XPUB_A},{XPUB_B})/*/0)")),
        Bip390Rule::MalformedDerivation(_)
    ));
    // Repeated participants are allowed (BIP390 as amended).
    parse(&format!("tr(musig({k},{k}))")).unwrap();
}

#[test]
fn signer_set_descriptors_are_valid_bip390_for_watch_only_wallets() {
    let mut rng = rand::rng();
    let keys: Vec<_> = (0..3)
        .map(|_| Keypair::new(&mut rng).public_key())
        .collect();
    let [receive, change] = signer_set_descriptors(&keys, NetworkKind::Test).unwrap();
    assert!(receive.as_str().starts_with("tr(musig(tpub"));
    assert!(receive.as_str().ends_with(")/0/*)"));
    assert!(change.as_str().ends_with(")/1/*)"));
    assert!(receive.with_checksum().contains('#'));
    // Order of the signers does not matter (BIP390 sorts).
    let mut reversed = keys.clone();
    reversed.reverse();
    let [receive2, _] = signer_set_descriptors(&reversed, NetworkKind::Test).unwrap();
    assert_eq!(
        receive.script_pubkey(7).unwrap(),
        receive2.script_pubkey(7).unwrap()
    );
    let addr = receive.address_at(0, 7, Network::Regtest).unwrap();
    assert!(addr.to_string().starts_with("bcrt1p"));
}
