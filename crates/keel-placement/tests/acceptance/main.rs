//! Acceptance tests for keel-placement: the figures the crate promises, over many seeds.
//!
//! Every scenario is generated from a seed (`support::Stream`), so a failure names the seed
//! that reproduces it.

mod assignments;
mod balance;
mod churn;
mod determinism;
mod domains;
mod repair;
mod replacement;
mod ring;
mod support;
