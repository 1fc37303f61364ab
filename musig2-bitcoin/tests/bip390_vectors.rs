//! Every BIP390 vector: the 6 valid descriptors produce their scripts (indices 0, 1, 2 for
//! ranged ones), the 14 invalid ones are refused with the rule their reason names.

use musig2_bitcoin::{Bip390Rule, Error, MusigDescriptor};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Vectors {
    #[allow(dead_code)]
    source: String,
    #[allow(dead_code)]
    note: String,
    valid: Vec<Valid>,
    invalid: Vec<Invalid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Valid {
    descriptor: String,
    scripts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Invalid {
    reason: String,
    descriptor: String,
}

fn vectors() -> Vectors {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/bip390/bip390-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn valid_descriptors_produce_their_scripts() {
    let v = vectors();
    assert_eq!(v.valid.len(), 6);
    for case in &v.valid {
        let desc: MusigDescriptor = case
            .descriptor
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", case.descriptor));
        assert_eq!(
            desc.is_ranged(),
            case.scripts.len() > 1,
            "{}",
            case.descriptor
        );
        for (i, want) in case.scripts.iter().enumerate() {
            let got = desc.script_pubkey(i as u32).unwrap().to_hex_string();
            assert_eq!(&got, want, "{} at {i}", case.descriptor);
        }
        // The checksum we write is one we accept.
        let again: MusigDescriptor = desc.with_checksum().parse().unwrap();
        assert_eq!(again.as_str(), desc.as_str());
    }
}

/// The rule each vector's `reason` names.
fn expected_rule(reason: &str) -> Bip390Rule {
    if let Some(ctx) = reason
        .strip_prefix("musig() is not allowed in ")
        .map(|r| r.trim_start_matches("top-level "))
    {
        let top = ctx.split('(').next().unwrap().to_string();
        return Bip390Rule::OnlyInTaproot { context: top };
    }
    match reason {
        "Ranged musig() requires all participants to be xpubs" => Bip390Rule::DerivationNeedsXpubs,
        "Cannot have ranged participants if musig() is also ranged" => {
            Bip390Rule::RangedParticipantsInRangedMusig
        }
        "Cannot have multipath participants if musig() is also multipath" => {
            Bip390Rule::MultipathParticipantsInMultipathMusig
        }
        "musig() cannot have hardened derivation steps" => Bip390Rule::HardenedStep,
        "musig() cannot have hardened child derivation" => Bip390Rule::HardenedWildcard,
        "musig() cannot have participants with child derivation when musig() has derivation steps" => {
            Bip390Rule::ParticipantChildDerivation
        }
        other => panic!("no rule for reason {other:?}"),
    }
}

#[test]
fn invalid_descriptors_are_refused_naming_the_rule() {
    let v = vectors();
    assert_eq!(v.invalid.len(), 14);
    for case in &v.invalid {
        let err = case.descriptor.parse::<MusigDescriptor>().unwrap_err();
        let Error::Bip390(rule) = err else {
            panic!("{}: expected a BIP390 rule, got {err}", case.reason);
        };
        assert_eq!(rule, expected_rule(&case.reason), "{}", case.reason);
    }
}
