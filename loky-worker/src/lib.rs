//! Worker runtime and wire protocol of loky, the robust process pool.
//!
//! This crate is shared by both sides of the process boundary: the parent
//! (the `loky` crate) speaks [`protocol`], and a worker process, which is a
//! re-executed copy of the user's own binary, runs [`main_loop`] from a
//! constructor that takes over before `main` (see [`entry`]).
//!
//! Users do not depend on this crate directly: `loky` re-exports what they need.
//!
//! # Stability
//!
//! This crate's API and its wire protocol ([`protocol`]) are not a semver
//! promise. They are loky's implementation details and change whenever loky
//! needs them to, in any release. `loky` depends on this crate's exact
//! version (`=x.y.z`), so a `loky` release always runs with the
//! `loky-worker` it was tested with. The types `loky` re-exports from here
//! (`RemotePanic`, `Stage`) are part of `loky`'s API and follow its semver. A
//! parent and a worker that were built from different versions (the binary
//! changed on disk) find out at the handshake, from
//! [`protocol::PROTOCOL_VERSION`], and fail with a clear error.
//!
//! The modules stay documented, not `#[doc(hidden)]`: they are the map of
//! the worker side for whoever works on loky.

mod batch;
pub mod entry;
pub mod fault;
pub mod invoke;
mod logs;
pub mod main_loop;
pub mod memory;
mod output;
pub mod panic;
pub mod protocol;
pub mod region_pool;
pub mod registry;
pub mod shared_bytes;
pub mod shared_slice;
pub mod spin;
