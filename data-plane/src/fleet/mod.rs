//! This node's side of config distribution: the agent that streams config
//! from the control plane, the snapshot the request path reads, the checks
//! only the node can make, and the last good config on disk. See
//! ARCHITECTURE.md, "Config distribution".

pub mod agent;
pub mod checks;
pub mod persist;
pub mod snapshot;

#[cfg(test)]
pub(crate) mod testing;

pub use agent::Agent;
pub use checks::Host;
pub use snapshot::{Applied, NodeConfig, NodeConfigHandle, PushOutcome, ResourceKey, apply_push};
