#![doc = include_str!("../README.md")]

mod bip373;
mod convert;
mod descriptor;
mod digest;
mod error;
mod finalize;
#[cfg(feature = "fixtures")]
pub mod fixtures;
mod plan;
mod prepare;

pub use bip373::{
    ContributionKey, PSBT_IN_MUSIG2_PARTIAL_SIG, PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS,
    PSBT_IN_MUSIG2_PUB_NONCE, PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS, ParticipantPubkeys,
    input_partial_sigs, input_participants, input_pubnonces, output_participants, parse_psbt,
    set_input_participants, set_output_participants, set_partial_sig, set_pubnonce, validate,
};
pub use convert::{from_btc_pubkey, from_btc_xonly, to_btc_pubkey, to_btc_signature, to_btc_xonly};
pub use descriptor::{MusigDescriptor, signer_set_descriptors, with_checksum};
pub use digest::psbt_digest;
pub use error::{Bip373Field, Bip390Rule, Error, FieldFault, Location, Result};
pub use finalize::{
    add_signature, aggregate_input, extract, finalize, finalize_input, read_partial_sigs,
    read_pubnonces, write_partial_sig, write_pubnonce,
};
pub use plan::{
    Approval, InputSummary, OutputSummary, PlanEntry, SigningPlan, SpendPath, finalizer_entries,
    signing_plan,
};
pub use prepare::{prepare_input, prepare_output};
