//! The control plane's moving parts: the reconciler that drives instances toward what
//! users asked for (`Control`), and the in-memory routing table the gateway reads on
//! every request.
//!
//! The API changes only `desired` (through `Control::start` / `Control::set_desired`,
//! or the store followed by `Control::nudge`); the reconciler moves `state`.

mod adopt;
mod autoscale;
mod backoff;
mod control;
mod error;
mod follow;
mod health;
mod idle;
mod leader;
mod reconcile;
mod resolver;
pub mod routing;
mod settings;
mod stats;
mod sweep;
mod wake;

pub use autoscale::ScalePolicy;
pub use control::Control;
pub use error::{Error, Result};
pub use leader::{LEADER_LEASE, Leadership, LeaseSettings, still_leads};
pub use resolver::{FileWeights, WeightsError, WeightsResolver};
pub use routing::{InFlight, InstanceRoute, ReplicaRoute, RoutingTable, pick};
pub use settings::{ControlSettings, HostCapacity};
pub use stats::{ControlStats, Histogram};
