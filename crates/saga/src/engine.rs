//! The orchestrator: instances, transitions, commands, timeouts.

use flotilla_kit::clock::Clock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

use flotilla_messaging::inbox::{Handler, HandlerError};
use flotilla_messaging::{Message, outbox};
use flotilla_sqlite::{execute, query_optional, sqlx_error, transaction};

use crate::{Error, Saga};

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
    fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Compensating => "COMPENSATING",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "RUNNING" => Some(Status::Running),
            "COMPENSATING" => Some(Status::Compensating),
            "COMPLETED" => Some(Status::Completed),
            "FAILED" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// A change of a saga instance, handed to [`Saga::on_transition`].
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
enum Phase {
    Action,
    Compensation,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "ACTION",
            Phase::Compensation => "COMPENSATION",
        }
    }
}

/// A command sent and the instance it belongs to.
struct SentRow {
    sent_step: i64,
    phase: String,
    row: Row,
}

/// An instance as stored.
struct Row {
    saga_id: String,
    data: String,
    status: String,
    step: i64,
    attempt: i64,
    reason: Option<String>,
    done: i64,
}

/// Drives the instances of one saga definition.
#[derive(Debug)]
pub struct Orchestrator<S> {
    saga: S,
    pool: SqlitePool,
    /// The time deadlines are set by and compared with: the system's, or a test's.
    clock: Clock,
}

/// A saga instance as loaded.
struct Instance<D> {
    saga_id: String,
    data: D,
    status: Status,
    step: usize,
    attempt: u32,
    reason: Option<String>,
    /// The steps of a concurrent tail that succeeded, one bit each ([`Saga::concurrent_tail`]).
    done: u64,
    /// Log entries of this transition, written with the instance ([`Orchestrator::write`]).
    journal: Vec<String>,
    /// The commands this transition sent, recorded with the instance.
    sent: Vec<SentCommand>,
    /// Messages of this transition (its command, the saga's own), written to the outbox with
    /// the instance, in this order.
    outgoing: Vec<outbox::Staged>,
}

/// A command written to the outbox, to be recorded in `saga_commands`.
struct SentCommand {
    message_id: String,
    step: i64,
    phase: &'static str,
}

impl<D> Instance<D> {
    /// Adds `entry` to the instance's log.
    fn note(&mut self, entry: impl Into<String>) {
        self.journal.push(entry.into());
    }
}

/// A direct SQLite call's error as the saga's.
fn failed(error: rusqlite::Error) -> Error {
    Error::Database(sqlx_error(error))
}

/// An instance row: `saga_id, data, status, step, attempt, reason, done` from column `first`
/// on.
fn row_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Row> {
    Ok(Row {
        saga_id: row.get(first)?,
        data: row.get(first + 1)?,
        status: row.get(first + 2)?,
        step: row.get(first + 3)?,
        attempt: row.get(first + 4)?,
        reason: row.get(first + 5)?,
        done: row.get(first + 6)?,
    })
}

impl<S: Saga> Orchestrator<S> {
    /// An orchestrator of `saga` whose instances live in `pool` (migrated with
    /// [`crate::migrate`]).
    pub fn new(saga: S, pool: SqlitePool) -> Self {
        Self {
            saga,
            pool,
            clock: Clock::system(),
        }
    }

    /// The orchestrator on `clock` instead of the system's (tests move a manual clock past a
    /// step's timeout instead of sleeping through it).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The definition.
    pub fn saga(&self) -> &S {
        &self.saga
    }

    /// Starts instance `saga_id` with `data`, within the caller's transaction (with the state
    /// change that asked for it): sends the first step's command.
    pub fn start(
        &self,
        db: &rusqlite::Connection,
        saga_id: &str,
        data: S::Data,
        cause: Option<&Message>,
    ) -> Result<(), Error> {
        let at = self.clock.now_micros();
        let inserted = execute(
            db,
            "INSERT INTO saga_instances (saga_id, saga_type, data, status, step, attempt, deadline, created_at, updated_at)
             VALUES ($1, $2, $3, 'RUNNING', 0, 0, 0, $4, $4) ON CONFLICT (saga_id) DO NOTHING",
            &[&saga_id, &self.saga.name(), &serde_json::to_string(&data)?, &at],
        )
        .map_err(failed)?;
        if inserted == 0 {
            return Err(Error::Exists(saga_id.to_owned()));
        }
        let mut instance = Instance {
            saga_id: saga_id.to_owned(),
            data,
            status: Status::Running,
            step: 0,
            attempt: 0,
            reason: None,
            done: 0,
            journal: Vec::new(),
            sent: Vec::new(),
            outgoing: Vec::new(),
        };
        instance.note("started");
        self.effect(db, &mut instance, &Transition::Started)?;
        let deadline = if self.saga.steps().is_empty() {
            instance.status = Status::Completed;
            self.effect(db, &mut instance, &Transition::Completed)?;
            0
        } else {
            self.send(&mut instance, Phase::Action, cause)?
        };
        self.write(db, &mut instance, Some(deadline))
    }

    /// Applies a participant's reply within the caller's transaction.
    pub fn on_reply(&self, db: &rusqlite::Connection, reply: &Message) -> Result<Handled, Error> {
        let Some(command_id) = reply.causation_id.as_deref() else {
            return Ok(Handled::Unknown);
        };
        // Several sagas may share a reply topic: each orchestrator answers only its own. The
        // command and its instance come in one query.
        let sent: Option<SentRow> = query_optional(
            db,
            "SELECT c.step AS sent_step, c.phase, i.saga_id, i.data, i.status, i.step, i.attempt, i.reason, i.done
             FROM saga_commands c JOIN saga_instances i ON i.saga_id = c.saga_id
             WHERE c.message_id = $1 AND i.saga_type = $2",
            &[&command_id, &self.saga.name()],
            |row| {
                Ok(SentRow {
                    sent_step: row.get(0)?,
                    phase: row.get(1)?,
                    row: row_at(row, 2)?,
                })
            },
        )
        .map_err(failed)?;
        let Some(sent) = sent else {
            return Ok(Handled::Unknown);
        };
        let (step, phase) = (sent.sent_step, sent.phase);
        let mut instance = self.instance(sent.row)?;
        let phase = if phase == "ACTION" {
            Phase::Action
        } else {
            Phase::Compensation
        };
        let current = match instance.status {
            Status::Running => Phase::Action,
            Status::Compensating => Phase::Compensation,
            Status::Completed | Status::Failed => return Ok(Handled::Stale),
        };
        let Ok(step) = usize::try_from(step) else {
            return Ok(Handled::Stale);
        };
        // In a concurrent tail every step not done yet is current; else only the one under way.
        let in_tail = phase == Phase::Action
            && current == Phase::Action
            && self.tail() == Some(instance.step)
            && step >= instance.step
            && step < self.saga.steps().len();
        if in_tail {
            if instance.done & (1 << step) != 0 {
                return Ok(Handled::Stale);
            }
            return self.on_tail_reply(db, &mut instance, step, reply);
        }
        if step != instance.step || phase != current {
            return Ok(Handled::Stale);
        }
        let ok = reply
            .payload
            .get("ok")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let reason = reply
            .payload
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("no reason given")
            .to_owned();
        let steps = self.saga.steps();
        let name = steps[instance.step].name;
        match (phase, ok) {
            (Phase::Action, true) => {
                (steps[instance.step].on_success)(&mut instance.data, &reply.payload);
                instance.note(format!("{name} succeeded"));
                self.effect(db, &mut instance, &Transition::StepSucceeded { step: name })?;
                if instance.step + 1 == steps.len() {
                    instance.status = Status::Completed;
                    instance.note("completed");
                    self.effect(db, &mut instance, &Transition::Completed)?;
                    self.write(db, &mut instance, Some(0))?;
                } else {
                    instance.step += 1;
                    instance.attempt = 0;
                    let deadline = self.send(&mut instance, Phase::Action, Some(reply))?;
                    self.write(db, &mut instance, Some(deadline))?;
                }
            }
            (Phase::Action, false) if steps[instance.step].retriable => {
                // Past the point of no return: try again at the deadline.
                instance.note(format!("{name} refused ({reason}); will retry"));
                self.write(db, &mut instance, None)?;
            }
            (Phase::Action, false) => {
                // Refused: the step did nothing, only the steps before it are undone.
                self.fail(db, &mut instance, reason, Some(reply), false)?;
            }
            (Phase::Compensation, true) => {
                instance.note(format!("{name} compensated"));
                self.effect(db, &mut instance, &Transition::Compensated { step: name })?;
                self.compensate_below(db, &mut instance, Some(reply))?;
            }
            (Phase::Compensation, false) => {
                // A compensation must succeed: try it again at its next deadline.
                instance.note(format!(
                    "{name} compensation refused ({reason}); will retry"
                ));
                self.write(db, &mut instance, None)?;
            }
        }
        Ok(Handled::Applied)
    }

    /// A reply to step `j` of the concurrent tail: a success marks the step done, and the saga
    /// completes once every tail step is; a refusal is tried again at the deadline, as for any
    /// retriable step.
    fn on_tail_reply(
        &self,
        db: &rusqlite::Connection,
        instance: &mut Instance<S::Data>,
        j: usize,
        reply: &Message,
    ) -> Result<Handled, Error> {
        let steps = self.saga.steps();
        let name = steps[j].name;
        let ok = reply
            .payload
            .get("ok")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !ok {
            let reason = reply
                .payload
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            instance.note(format!("{name} refused ({reason}); will retry"));
            self.write(db, instance, None)?;
            return Ok(Handled::Applied);
        }
        (steps[j].on_success)(&mut instance.data, &reply.payload);
        instance.done |= 1 << j;
        instance.note(format!("{name} succeeded"));
        self.effect(db, instance, &Transition::StepSucceeded { step: name })?;
        let all = (instance.step..steps.len()).all(|k| instance.done & (1 << k) != 0);
        let deadline = if all {
            instance.status = Status::Completed;
            instance.note("completed");
            self.effect(db, instance, &Transition::Completed)?;
            0
        } else {
            // The steps still under way keep their time from now.
            let pending = (instance.step..steps.len()).filter(|k| instance.done & (1 << k) == 0);
            self.clock
                .micros_after(pending.map(|k| steps[k].timeout).max().unwrap_or_default())
        };
        self.write(db, instance, Some(deadline))?;
        Ok(Handled::Applied)
    }

    /// Resends the command of every unfinished instance past its deadline (timeouts, and the
    /// recovery after a crash); an action that used all its attempts fails its step. Returns
    /// how many instances it moved.
    pub async fn tick(&self) -> Result<u32, Error> {
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT saga_id FROM saga_instances
             WHERE status IN ('RUNNING', 'COMPENSATING') AND saga_type = $1 AND deadline <= $2
             ORDER BY deadline LIMIT 256",
        )
        .bind(self.saga.name())
        .bind(self.clock.now_micros())
        .fetch_all(&self.pool)
        .await?;
        let mut moved = 0;
        for saga_id in due {
            // One write transaction of direct calls (nothing written when it was not due).
            if transaction(&self.pool, |db| self.time_out(db, &saga_id)).await? {
                self.saga.timed_out(&saga_id);
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Moves instance `saga_id` if it is still past its deadline (a reply may have moved it
    /// since the due list was read): sends its command again, or fails the step whose attempts
    /// are spent. False if it was not due any more.
    fn time_out(&self, db: &rusqlite::Connection, saga_id: &str) -> Result<bool, Error> {
        let row: Option<(Row, i64)> = query_optional(
            db,
            "SELECT saga_id, data, status, step, attempt, reason, done, deadline FROM saga_instances WHERE saga_id = $1",
            &[&saga_id],
            |row| Ok((row_at(row, 0)?, row.get(7)?)),
        )
        .map_err(failed)?;
        let (row, deadline) = row.ok_or_else(|| Error::NotFound(saga_id.to_owned()))?;
        if deadline > self.clock.now_micros()
            || !matches!(row.status.as_str(), "RUNNING" | "COMPENSATING")
        {
            return Ok(false);
        }
        let mut instance = self.instance(row)?;
        let step = &self.saga.steps()[instance.step];
        match instance.status {
            Status::Running if !step.retriable && instance.attempt >= step.attempts => {
                let reason = format!(
                    "{} did not answer within {:?}, {} attempts",
                    step.name, step.timeout, step.attempts
                );
                // Unanswered: the step may have happened, or may still happen (its command
                // delivered late), so it is undone too; a compensation that finds nothing done
                // leaves a mark that refuses the action when it comes.
                self.fail(db, &mut instance, reason, None, true)?;
            }
            Status::Running => {
                let names = match self.tail() {
                    Some(first) if first == instance.step => (first..self.saga.steps().len())
                        .filter(|k| instance.done & (1 << k) == 0)
                        .map(|k| self.saga.steps()[k].name)
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => step.name.to_owned(),
                };
                instance.note(format!("{names} timed out; sending again"));
                let deadline = self.send(&mut instance, Phase::Action, None)?;
                self.write(db, &mut instance, Some(deadline))?;
            }
            _ => {
                let deadline = self.send(&mut instance, Phase::Compensation, None)?;
                self.write(db, &mut instance, Some(deadline))?;
            }
        }
        Ok(true)
    }

    /// Runs [`Orchestrator::tick`] every `interval` until `shutdown`.
    pub async fn run_timeouts(&self, interval: Duration, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.tick().await {
                tracing::warn!(saga = self.saga.name(), %error, "saga timeouts pass failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// The status of instance `saga_id`, with the reason it failed or is compensating.
    pub async fn status(&self, saga_id: &str) -> Result<Option<(Status, Option<String>)>, Error> {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, reason FROM saga_instances WHERE saga_id = $1")
                .bind(saga_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(status, reason)| Status::parse(&status).map(|s| (s, reason))))
    }

    /// The log of instance `saga_id`, oldest first.
    pub async fn log_of(&self, saga_id: &str) -> Result<Vec<String>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT entry.value ->> 'entry' FROM saga_instances, \
                 json_each(saga_instances.log) AS entry \
                 WHERE saga_id = $1 ORDER BY entry.key",
        )
        .bind(saga_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The action failed: compensate the steps below it that succeeded (and, `unanswered`, the
    /// step itself), or fail at once.
    fn fail(
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
    fn compensate_below(
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
    fn send(
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

    /// The first step of the saga's concurrent tail ([`Saga::concurrent_tail`]): the retriable
    /// steps that end the saga, when there are two or more and the saga runs them together.
    fn tail(&self) -> Option<usize> {
        if !self.saga.concurrent_tail() {
            return None;
        }
        let steps = self.saga.steps();
        let first = steps.len() - steps.iter().rev().take_while(|s| s.retriable).count();
        // One bit per step in a signed 64-bit column: at most 63 steps.
        (steps.len() - first >= 2 && steps.len() < 64).then_some(first)
    }

    /// Stages the command of step `j` in `phase`.
    fn stage(
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

    fn effect(
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

    fn instance(&self, row: Row) -> Result<Instance<S::Data>, Error> {
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
    fn write(
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

/// The orchestrator as the consumer of its reply topic
/// ([`flotilla_messaging::inbox::Consumer`]): each reply is applied in the consumer's
/// transaction, with the inbox row that makes a redelivered reply a no-op.
#[derive(Debug)]
pub struct Replies<S>(pub std::sync::Arc<Orchestrator<S>>);

impl<S: Saga> Handler for Replies<S> {
    fn handle(
        &self,
        db: &rusqlite::Connection,
        message: &Message,
    ) -> Result<Vec<Message>, HandlerError> {
        let orchestrator = &self.0;
        match orchestrator.on_reply(db, message) {
            Ok(handled) => {
                if handled != Handled::Applied {
                    tracing::debug!(saga = orchestrator.saga.name(), message_id = %message.id, ?handled, "reply not applied");
                }
                Ok(Vec::new())
            }
            Err(Error::Database(error)) => Err(HandlerError::Database(error)),
            Err(error) => Err(HandlerError::Reject(error.to_string())),
        }
    }
}
