//! Worker runtime and wire protocol of loky, the robust process pool.
//!
//! This crate is shared by both sides of the process boundary: the parent
//! (the `loky` crate) speaks [`protocol`], and a worker process, which is a
//! re-executed copy of the user's own binary, runs [`main_loop`] from a
//! constructor that takes over before `main` (see [`entry`]).
//!
//! Users do not depend on this crate directly: `loky` re-exports what they need.

pub mod entry;
pub mod fault;
pub mod invoke;
mod logs;
pub mod main_loop;
pub mod memory;
mod output;
pub mod panic;
pub mod protocol;
pub mod registry;
