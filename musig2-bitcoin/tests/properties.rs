//! Property tests (modest case counts): BIP373 fields round-trip through a serialized PSBT,
//! and the signer-set descriptor derives the scripts KeyAgg + BIP328 + BIP341 give.

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::taproot::TapLeafHash;
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, NetworkKind, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
};
use musig2_bitcoin::{
    ContributionKey, ParticipantPubkeys, input_partial_sigs, input_participants, input_pubnonces,
    output_participants, parse_psbt, set_input_participants, set_output_participants,
    set_partial_sig, set_pubnonce, signer_set_descriptors,
};
use musig2_core::secp256k1::{PublicKey, SecretKey};
use musig2_core::{AggregateXpub, KeyAggContext, PartialSignature, PubNonce, Tweak, key_sort};
use proptest::prelude::*;

fn key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>()
        .prop_filter_map("valid secret", |b| SecretKey::from_secret_bytes(b).ok())
        .prop_map(|sk| PublicKey::from_secret_key(&sk))
}

fn nonce() -> impl Strategy<Value = PubNonce> {
    (key(), key()).prop_map(|(a, b)| PubNonce::from_points(a, b))
}

fn psig() -> impl Strategy<Value = PartialSignature> {
    any::<[u8; 32]>().prop_filter_map("below n", |b| PartialSignature::from_bytes(&b).ok())
}

fn empty_psbt() -> Psbt {
    Psbt::from_unsigned_tx(Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(1),
            script_pubkey: ScriptBuf::new(),
        }],
    })
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn bip373_fields_round_trip(
        aggregate in key(),
        participants in prop::collection::vec(key(), 1..6),
        contributions in prop::collection::vec(
            (key(), key(), prop::option::of(any::<[u8; 32]>()), nonce(), psig()),
            0..4,
        ),
    ) {
        let set = ParticipantPubkeys { aggregate, participants };
        let mut psbt = empty_psbt();
        set_input_participants(&mut psbt.inputs[0], &set);
        set_output_participants(&mut psbt.outputs[0], &set);
        let mut want = Vec::new();
        for (participant, signing_key, leaf, n, s) in contributions {
            let key = ContributionKey {
                participant,
                signing_key,
                leaf_hash: leaf.map(TapLeafHash::from_byte_array),
            };
            set_pubnonce(&mut psbt.inputs[0], &key, &n);
            set_partial_sig(&mut psbt.inputs[0], &key, &s);
            want.push((key, n, s));
        }
        want.sort_by_key(|(k, _, _)| *k);
        want.dedup_by_key(|(k, _, _)| *k);

        let bytes = psbt.serialize();
        let back = parse_psbt(&bytes).unwrap();
        prop_assert_eq!(back.serialize(), bytes);
        prop_assert_eq!(input_participants(&back.inputs[0], 0).unwrap(), vec![set.clone()]);
        prop_assert_eq!(output_participants(&back.outputs[0], 0).unwrap(), vec![set]);
        let mut nonces = input_pubnonces(&back.inputs[0], 0).unwrap();
        let mut psigs = input_partial_sigs(&back.inputs[0], 0).unwrap();
        nonces.sort_by_key(|(k, _)| *k);
        psigs.sort_by_key(|(k, _)| *k);
        prop_assert_eq!(nonces.len(), want.len());
        prop_assert_eq!(psigs.len(), want.len());
        for ((k, n, s), ((kn, gn), (ks, gs))) in want.iter().zip(nonces.iter().zip(&psigs)) {
            prop_assert_eq!(k, kn);
            prop_assert_eq!(k, ks);
            prop_assert_eq!(n, gn);
            prop_assert_eq!(s, gs);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn signer_set_descriptor_matches_keyagg_bip328_bip341(
        keys in prop::collection::vec(key(), 1..5),
        index in 0u32..1000,
        branch in 0u32..2,
    ) {
        let descs = signer_set_descriptors(&keys, NetworkKind::Main).unwrap();
        let desc = &descs[branch as usize];
        // The checksummed form parses back to the same descriptor.
        let again: musig2_bitcoin::MusigDescriptor = desc.with_checksum().parse().unwrap();
        prop_assert_eq!(again.as_str(), desc.as_str());

        let mut sorted = keys.clone();
        key_sort(&mut sorted);
        let aggregate = KeyAggContext::new(&sorted).unwrap().aggregate_key();
        let (node, tweaks) = AggregateXpub::new(aggregate).derive_path(&[branch, index]).unwrap();
        let internal = node.public_key().x_only_public_key().0;
        let ctx = KeyAggContext::new(&sorted)
            .unwrap()
            .with_tweaks(&tweaks)
            .unwrap()
            .with_tweak(&Tweak::taproot(&internal, None).unwrap())
            .unwrap();
        let want = format!("5120{}", hex::encode(ctx.x_only_key().to_byte_array()));
        prop_assert_eq!(desc.script_pubkey(index).unwrap().to_hex_string(), want);
    }
}
