//! The orchestrator's public face: starting an instance, applying a reply, the timeouts pass,
//! and reading an instance's status and log. How an instance moves is in `moves`.

use std::time::Duration;

use flotilla_kit::clock::Clock;
use flotilla_messaging::Message;
use flotilla_sqlite::{execute, query_optional, transaction};
use serde_json::Value;
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

use super::definition::{Handled, Phase, Status, Transition};
use super::instance::{Instance, Row, SentRow, failed, row_at};
use crate::{Error, Saga};

/// Drives the instances of one saga definition.
#[derive(Debug)]
pub struct Orchestrator<S> {
    pub(super) saga: S,
    pub(super) pool: SqlitePool,
    /// The time deadlines are set by and compared with: the system's, or a test's.
    pub(super) clock: Clock,
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
    pub(super) fn on_tail_reply(
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
    pub(super) fn time_out(&self, db: &rusqlite::Connection, saga_id: &str) -> Result<bool, Error> {
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
}
