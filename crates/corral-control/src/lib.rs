//! The control plane's moving parts: the reconciler that drives instances toward what
//! users asked for, and the in-memory routing table the gateway reads on every request.

pub mod routing;

pub use routing::{InstanceRoute, ReplicaRoute, RoutingTable};
