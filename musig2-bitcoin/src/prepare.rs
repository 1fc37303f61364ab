//! Filling in a PSBT for a signer set's own descriptor (what a BIP373 creator or updater does).

use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint};
use bitcoin::psbt::{Input, Output};
use musig2_core::secp256k1::PublicKey;
use musig2_core::{AggregateXpub, KeyAggContext, key_sort};

use crate::bip373::{ParticipantPubkeys, set_input_participants, set_output_participants};
use crate::convert::to_btc_xonly;
use crate::error::Result;

/// The sorted participants, their aggregate, and the internal key derived along `path` with
/// its BIP32 origin (BIP328 fingerprint, path).
fn derived(
    signers: &[PublicKey],
    path: &[u32],
) -> Result<(
    ParticipantPubkeys,
    bitcoin::secp256k1::XOnlyPublicKey,
    (Fingerprint, DerivationPath),
)> {
    let mut participants = signers.to_vec();
    key_sort(&mut participants);
    let aggregate = KeyAggContext::new(&participants)?.aggregate_key();
    let xpub = AggregateXpub::new(aggregate);
    let (node, _) = xpub.derive_path(path)?;
    let internal = to_btc_xonly(&node.public_key().x_only_public_key().0);
    let steps: Vec<ChildNumber> = path
        .iter()
        .map(|i| ChildNumber::Normal { index: *i })
        .collect();
    let origin = (
        Fingerprint::from(xpub.fingerprint()),
        DerivationPath::from(steps),
    );
    Ok((
        ParticipantPubkeys {
            aggregate,
            participants,
        },
        internal,
        origin,
    ))
}

/// Fills an input that spends the key path of `tr(musig(signers)/path)` (as
/// [`signer_set_descriptors`](crate::signer_set_descriptors) makes, e.g. `path = [0, index]`):
/// `PSBT_IN_TAP_INTERNAL_KEY`, its `PSBT_IN_TAP_BIP32_DERIVATION` from the BIP328 synthetic
/// xpub, and `PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS`. Signers are KeySorted, as BIP390 does.
/// The witness UTXO is the caller's to set.
pub fn prepare_input(input: &mut Input, signers: &[PublicKey], path: &[u32]) -> Result<()> {
    let (set, internal, origin) = derived(signers, path)?;
    input.tap_internal_key = Some(internal);
    input.tap_key_origins.insert(internal, (Vec::new(), origin));
    set_input_participants(input, &set);
    Ok(())
}

/// Fills an output paying to `tr(musig(signers)/path)` (e.g. change, `path = [1, index]`):
/// internal key, its BIP32 origin and `PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS`, so that signers
/// recognize it as change.
pub fn prepare_output(output: &mut Output, signers: &[PublicKey], path: &[u32]) -> Result<()> {
    let (set, internal, origin) = derived(signers, path)?;
    output.tap_internal_key = Some(internal);
    output
        .tap_key_origins
        .insert(internal, (Vec::new(), origin));
    set_output_participants(output, &set);
    Ok(())
}
