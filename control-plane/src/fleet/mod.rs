//! Config distribution to the fleet: the replica's watch cache, node
//! streams, fleet membership and leader election. See ARCHITECTURE.md,
//! "Config distribution".

pub mod cache;
pub mod leader;
pub mod session;
