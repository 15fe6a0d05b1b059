//! Everything the kernel program and the agent must agree on: map and program
//! names, `#[repr(C)]` map types and the pure functions both sides compute.
//!
//! This crate is `no_std` so the eBPF program can use it; the `user` feature
//! adds the `aya::Pod` impls the agent needs to read and write the maps.
#![no_std]

pub mod csum;
pub mod flow;
pub mod names;
pub mod packet;
pub mod service;
pub mod stats;

pub use flow::{flow_hash, FlowKey, FAMILY_V4, FAMILY_V6};
