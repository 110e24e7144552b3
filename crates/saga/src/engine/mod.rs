//! The orchestrator: instances, transitions, commands, timeouts.
//!
//! Layout: `definition` (steps, commands, statuses, transitions), `instance` (an instance as
//! stored and as loaded), `orchestrator` (the public operations), `moves` (how an instance
//! moves), `replies` (the orchestrator as a message consumer).

mod definition;
mod instance;
mod moves;
mod orchestrator;
mod replies;

pub use definition::{Command, Handled, Status, Step, Transition};
pub use orchestrator::Orchestrator;
pub use replies::Replies;
