//! # ssm-macros
//!
//! The home of the ssm DSL (`#[ssm_block]`, scan-direction, reverse-attention, DMS and
//! LPR declarations). The declarations are not implemented yet: this crate currently
//! exports nothing. Their design and progress are tracked in the project's issues and
//! `docs/dsl.md` will describe them once they exist.
