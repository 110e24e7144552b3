//! How an instance moves: failing a step and compensating the ones done, sending a step's
//! command, staging the saga's own messages, applying a transition's effects, loading and
//! writing the instance.

use std::time::Duration;

use flotilla_messaging::{Message, outbox};
use flotilla_sqlite::execute;
use serde_json::Value;

use super::definition::{Phase, Status, Transition};
use super::instance::{Instance, Row, SentCommand, failed};
use super::orchestrator::Orchestrator;
use crate::{Error, Saga};

impl<S: Saga> Orchestrator<S> {
    /// The action failed: compensate the steps below it that succeeded (and, `unanswered`, the
    /// step itself), or fail at once.
    pub(super) fn fail(
        &self,
        db: &rusqlite::Connection,
        instance: &mut Instance<S::Data>,
        reason: String,
        cause: Option<&Message>,
        unanswered: bool,
    ) -> Result<(), Error> {
        let name = self.saga.steps()[instance.step].name;
        instance.note(format!("{name} failed: {reason}"));
        self.effect(
            db,
            instance,
            &Transition::StepFailed {
                step: name,
                reason: reason.clone(),
            },
        )?;
        instance.reason = Some(reason);
        if unanswered && self.saga.steps()[instance.step].compensation.is_some() {
            instance.status = Status::Compensating;
            instance.attempt = 0;
            let deadline = self.send(instance, Phase::Compensation, cause)?;
            return self.write(db, instance, Some(deadline));
        }
        self.compensate_below(db, instance, cause)
    }

    /// Sends the compensation of the nearest step below the current one that has one, or ends
    /// the saga as failed.
    pub(super) fn compensate_below(
        &self,
        db: &rusqlite::Connection,
        instance: &mut Instance<S::Data>,
        cause: Option<&Message>,
    ) -> Result<(), Error> {
        let steps = self.saga.steps();
        let next = (0..instance.step)
            .rev()
            .find(|&j| steps[j].compensation.is_some());
        match next {
            Some(j) => {
                instance.status = Status::Compensating;
                instance.step = j;
                instance.attempt = 0;
                let deadline = self.send(instance, Phase::Compensation, cause)?;
                self.write(db, instance, Some(deadline))
            }
            None => {
                instance.status = Status::Failed;
                let reason = instance.reason.clone().unwrap_or_default();
                instance.note("failed");
                self.effect(db, instance, &Transition::Failed { reason })?;
                self.write(db, instance, Some(0))
            }
        }
    }

    /// Stages the command of the current step and phase (written with the instance by
    /// [`Orchestrator::write`]), or, at the start of a concurrent tail, the commands of every
    /// tail step not done yet; returns the deadline.
    pub(super) fn send(
        &self,
        instance: &mut Instance<S::Data>,
        phase: Phase,
        cause: Option<&Message>,
    ) -> Result<i64, Error> {
        let steps = self.saga.steps();
        let wait = if phase == Phase::Action && self.tail() == Some(instance.step) {
            let mut longest = Duration::ZERO;
            for (j, step) in steps.iter().enumerate().skip(instance.step) {
                if instance.done & (1 << j) == 0 {
                    self.stage(instance, j, phase, cause)?;
                    longest = longest.max(step.timeout);
                }
            }
            longest
        } else {
            self.stage(instance, instance.step, phase, cause)?;
            steps[instance.step].timeout
        };
        instance.attempt += 1;
        let wait = match phase {
            Phase::Action => wait,
            Phase::Compensation => {
                wait.saturating_mul(1 << instance.attempt.saturating_sub(1).min(5))
            }
        };
        Ok(self.clock.micros_after(wait))
    }

    /// The first step of the saga's concurrent tail ([`Saga::concurrent_tail`](crate::Saga::concurrent_tail)): the retriable
    /// steps that end the saga, when there are two or more and the saga runs them together.
    pub(super) fn tail(&self) -> Option<usize> {
        if !self.saga.concurrent_tail() {
            return None;
        }
        let steps = self.saga.steps();
        let first = steps.len() - steps.iter().rev().take_while(|s| s.retriable).count();
        // One bit per step in a signed 64-bit column: at most 63 steps.
        (steps.len() - first >= 2 && steps.len() < 64).then_some(first)
    }

    /// Stages the command of step `j` in `phase`.
    pub(super) fn stage(
        &self,
        instance: &mut Instance<S::Data>,
        j: usize,
        phase: Phase,
        cause: Option<&Message>,
    ) -> Result<(), Error> {
        let step = &self.saga.steps()[j];
        let build = match phase {
            Phase::Action => step.action,
            Phase::Compensation => step
                .compensation
                .ok_or_else(|| Error::Transition(format!("{} has no compensation", step.name)))?,
        };
        let command = build(&instance.data);
        let mut payload = match command.payload {
            Value::Object(map) => map,
            other => {
                let mut map = serde_json::Map::new();
                map.insert("value".into(), other);
                map
            }
        };
        payload.insert(
            "idempotency_key".into(),
            format!("{}:{}:{}", instance.saga_id, j, phase.as_str()).into(),
        );
        let mut message = Message::new(
            command.topic,
            command.message_type,
            instance.saga_id.clone(),
            Value::Object(payload),
        )
        .replying_to(self.saga.reply_topic());
        message = match cause {
            Some(cause) => message.caused_by(cause),
            None => message,
        };
        if message.correlation_id.is_none() {
            message.correlation_id = Some(instance.saga_id.clone());
        }
        instance.outgoing.push(outbox::Staged::new(&message)?);
        instance.sent.push(SentCommand {
            message_id: message.id.to_string(),
            step: i64::try_from(j).unwrap_or(i64::MAX),
            phase: phase.as_str(),
        });
        Ok(())
    }

    pub(super) fn effect(
        &self,
        db: &rusqlite::Connection,
        instance: &mut Instance<S::Data>,
        transition: &Transition,
    ) -> Result<(), Error> {
        let messages =
            self.saga
                .on_transition(db, &instance.saga_id, &instance.data, transition)?;
        for message in &messages {
            instance.outgoing.push(outbox::Staged::new(message)?);
        }
        metrics::counter!("saga_transitions_total", "saga" => self.saga.name(), "transition" => match transition {
            Transition::Started => "started",
            Transition::StepSucceeded { .. } => "step_succeeded",
            Transition::StepFailed { .. } => "step_failed",
            Transition::Compensated { .. } => "compensated",
            Transition::Completed => "completed",
            Transition::Failed { .. } => "failed",
        })
        .increment(1);
        Ok(())
    }

    pub(super) fn instance(&self, row: Row) -> Result<Instance<S::Data>, Error> {
        let saga_id = row.saga_id.as_str();
        let steps = self.saga.steps().len();
        let step = usize::try_from(row.step).unwrap_or(0);
        if step >= steps.max(1) {
            return Err(Error::Transition(format!(
                "saga `{saga_id}` is at step {step} of {steps}"
            )));
        }
        Ok(Instance {
            saga_id: row.saga_id,
            data: serde_json::from_str(&row.data)?,
            status: Status::parse(&row.status)
                .ok_or_else(|| Error::Transition(format!("unknown status {}", row.status)))?,
            step,
            attempt: u32::try_from(row.attempt).unwrap_or(u32::MAX),
            reason: row.reason,
            done: u64::try_from(row.done).unwrap_or(0),
            journal: Vec::new(),
            sent: Vec::new(),
            outgoing: Vec::new(),
        })
    }

    /// Writes what a transition did: unless `deadline` is `None` (nothing moved) the instance,
    /// then the command it sent (`saga_commands`), its messages (the outbox) and its log
    /// entries (in the instance's row). Direct calls, each statement prepared once per
    /// connection.
    pub(super) fn write(
        &self,
        db: &rusqlite::Connection,
        instance: &mut Instance<S::Data>,
        deadline: Option<i64>,
    ) -> Result<(), Error> {
        let at = self.clock.now_micros();
        if let Some(deadline) = deadline {
            execute(
                db,
                "UPDATE saga_instances SET data = $2, status = $3, step = $4, attempt = $5, \
                 deadline = $6, reason = $7, updated_at = $8, done = $9 WHERE saga_id = $1",
                &[
                    &instance.saga_id,
                    &serde_json::to_string(&instance.data)?,
                    &instance.status.as_str(),
                    &i64::try_from(instance.step).unwrap_or(i64::MAX),
                    &i64::from(instance.attempt),
                    &deadline,
                    &instance.reason,
                    &at,
                    &i64::try_from(instance.done).unwrap_or(0),
                ],
            )
            .map_err(failed)?;
        }
        for sent in std::mem::take(&mut instance.sent) {
            execute(
                db,
                "INSERT INTO saga_commands (message_id, saga_id, step, phase, sent_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &sent.message_id,
                    &instance.saga_id,
                    &sent.step,
                    &sent.phase,
                    &at,
                ],
            )
            .map_err(failed)?;
        }
        for staged in std::mem::take(&mut instance.outgoing) {
            staged.insert(db)?;
        }
        // The log lives in the instance's row, whose page the transition writes anyway.
        for entry in std::mem::take(&mut instance.journal) {
            execute(
                db,
                "UPDATE saga_instances SET log = json_insert(log, '$[#]', \
                 json_object('at', $3, 'entry', $2)) WHERE saga_id = $1",
                &[&instance.saga_id, &entry, &at],
            )
            .map_err(failed)?;
        }
        Ok(())
    }
}
