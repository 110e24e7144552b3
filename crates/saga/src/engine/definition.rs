//! The vocabulary of a saga definition and of its instances: a step and the command it sends,
//! an instance's status, the transitions a saga is told of, what a reply did, and the phase of
//! a command (action or compensation).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A command a step sends to a participant.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The participant's command topic, such as `payment.commands`.
    pub topic: String,
    /// What to do, such as `AuthorizePayment`.
    pub message_type: String,
    /// With what.
    pub payload: Value,
}

/// One step of a saga.
pub struct Step<D> {
    /// Its name, in logs and transitions.
    pub name: &'static str,
    /// The command that does it.
    pub action: fn(&D) -> Command,
    /// The command that undoes it, if it can be undone.
    pub compensation: Option<fn(&D) -> Command>,
    /// Records what the participant answered (ids) in the saga's data.
    pub on_success: fn(&mut D, &Value),
    /// How long to wait for a reply before sending the command again.
    pub timeout: Duration,
    /// Attempts of the action before it counts as failed (compensations are retried until
    /// they succeed).
    pub attempts: u32,
    /// A step after the saga's point of no return (its *pivot*): it must eventually succeed,
    /// so a refusal or a timeout sends it again (with backoff) instead of compensating, and
    /// `attempts` does not apply. Capturing a payment after every check passed is one.
    pub retriable: bool,
}

impl<D> std::fmt::Debug for Step<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Where a saga instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Running its steps forward.
    Running,
    /// Undoing the steps that succeeded.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and the others were undone.
    Failed,
}

impl Status {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Compensating => "COMPENSATING",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
        }
    }

    pub(super) fn parse(name: &str) -> Option<Self> {
        match name {
            "RUNNING" => Some(Status::Running),
            "COMPENSATING" => Some(Status::Compensating),
            "COMPLETED" => Some(Status::Completed),
            "FAILED" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// A change of a saga instance, handed to [`Saga::on_transition`](crate::Saga::on_transition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The saga started.
    Started,
    /// A step's action succeeded.
    StepSucceeded {
        /// The step.
        step: &'static str,
    },
    /// A step's action failed (refused, or timed out every attempt): compensation starts.
    StepFailed {
        /// The step.
        step: &'static str,
        /// Why.
        reason: String,
    },
    /// A step was undone.
    Compensated {
        /// The step.
        step: &'static str,
    },
    /// Every step succeeded.
    Completed,
    /// The saga failed; every step that had succeeded was undone.
    Failed {
        /// Why the failing step failed.
        reason: String,
    },
}

/// What became of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// It moved the saga.
    Applied,
    /// It answers a step or phase the saga has left (late or redelivered): ignored.
    Stale,
    /// It answers no command of this orchestrator (another saga's, or none).
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Action,
    Compensation,
}

impl Phase {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "ACTION",
            Phase::Compensation => "COMPENSATION",
        }
    }
}
