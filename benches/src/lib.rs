//! Benchmarks of the musig2-p2p crates side by side with reference implementations.
