//! The orchestrator on a real SQLite database, with the test playing the participants: it reads
//! the commands the orchestrator wrote to its outbox and answers them.

use std::time::Duration;

use flotilla_contracts::{refused, succeeded};
use flotilla_kit::clock::Clock;
use flotilla_messaging::{Message, outbox};
use flotilla_saga::{Command, Error, Handled, Orchestrator, Saga, Status, Step, Transition};
use flotilla_testkit::TempData;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::SqlitePool;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Trip {
    hotel: Option<String>,
    flight: Option<String>,
}

const TIMEOUT: Duration = Duration::from_millis(150);

fn command(topic: &str, kind: &str) -> Command {
    Command {
        topic: topic.into(),
        message_type: kind.into(),
        payload: json!({}),
    }
}

/// A step of the trip that sends `action`'s command: nothing to undo, nothing kept from its
/// reply, two attempts of [`TIMEOUT`] each.
fn step(name: &'static str, action: fn(&Trip) -> Command) -> Step<Trip> {
    Step {
        name,
        action,
        compensation: None,
        on_success: |_, _| {},
        timeout: TIMEOUT,
        attempts: 2,
        retriable: false,
    }
}

/// A step of the trip past its point of no return: sent again until it succeeds.
fn retried_step(name: &'static str, action: fn(&Trip) -> Command) -> Step<Trip> {
    Step {
        attempts: 1,
        retriable: true,
        ..step(name, action)
    }
}

struct TripSaga {
    steps: Vec<Step<Trip>>,
    concurrent_tail: bool,
    /// The instances the orchestrator reported moved at their deadline (`Saga::timed_out`).
    timed_out: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TripSaga {
    fn new() -> Self {
        Self {
            steps: vec![
                Step {
                    compensation: Some(|_| command("hotel.commands", "CancelHotel")),
                    on_success: |trip, reply| {
                        trip.hotel = reply["hotel_id"].as_str().map(str::to_owned)
                    },
                    ..step("book_hotel", |_| command("hotel.commands", "BookHotel"))
                },
                Step {
                    compensation: Some(|_| command("flight.commands", "CancelFlight")),
                    on_success: |trip, reply| {
                        trip.flight = reply["flight_id"].as_str().map(str::to_owned)
                    },
                    ..step("book_flight", |trip| Command {
                        topic: "flight.commands".into(),
                        message_type: "BookFlight".into(),
                        payload: json!({ "hotel": trip.hotel }),
                    })
                },
                step("charge_card", |_| command("card.commands", "ChargeCard")),
            ],
            concurrent_tail: false,
            timed_out: std::sync::Arc::default(),
        }
    }

    /// The trip with a last step past the point of no return: the tickets must go out.
    fn with_tickets() -> Self {
        let mut saga = Self::new();
        saga.steps.push(retried_step("send_tickets", |_| {
            command("mail.commands", "SendTickets")
        }));
        saga
    }

    /// The trip with two last steps past the point of no return, sent together.
    fn with_concurrent_tail() -> Self {
        let mut saga = Self::with_tickets();
        saga.steps.push(retried_step("earn_miles", |trip| Command {
            topic: "miles.commands".into(),
            message_type: "EarnMiles".into(),
            payload: json!({ "flight": trip.flight }),
        }));
        saga.concurrent_tail = true;
        saga
    }
}

impl Saga for TripSaga {
    type Data = Trip;

    fn name(&self) -> &'static str {
        "trip"
    }

    fn steps(&self) -> &[Step<Trip>] {
        &self.steps
    }

    fn reply_topic(&self) -> &str {
        "trip.replies"
    }

    fn concurrent_tail(&self) -> bool {
        self.concurrent_tail
    }

    fn timed_out(&self, saga_id: &str) {
        self.timed_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(saga_id.to_owned());
    }

    fn on_transition(
        &self,
        db: &rusqlite::Connection,
        saga_id: &str,
        data: &Trip,
        transition: &Transition,
    ) -> Result<Vec<Message>, Error> {
        let text = match transition {
            Transition::Started => "started".to_owned(),
            Transition::StepSucceeded { step } => format!("{step} ok"),
            Transition::StepFailed { step, .. } => format!("{step} failed"),
            Transition::Compensated { step } => format!("{step} undone"),
            Transition::Completed => format!("completed with {:?}", data.flight),
            Transition::Failed { reason } => format!("failed: {reason}"),
        };
        flotilla_sqlite::execute(
            db,
            "INSERT INTO trip_events (saga_id, event) VALUES ($1, $2)",
            &[&saga_id, &text],
        )
        .map_err(flotilla_sqlite::sqlx_error)?;
        // A notification when the trip ends, fire-and-forget.
        Ok(match transition {
            Transition::Completed | Transition::Failed { .. } => vec![Message::new(
                "trip.notifications",
                "TripEnded",
                saga_id,
                json!({}),
            )],
            _ => vec![],
        })
    }
}

struct World {
    pool: SqlitePool,
    trips: Orchestrator<TripSaga>,
    _data: TempData,
    /// The orchestrators' clock: tests move it past a step's timeout instead of sleeping.
    clock: Clock,
}

async fn world() -> World {
    world_with(TripSaga::new()).await
}

async fn world_with(saga: TripSaga) -> World {
    let data = TempData::new();
    let pool = data.pool("orchestrator").await;
    flotilla_messaging::migrate(&pool)
        .await
        .expect("messaging tables");
    flotilla_saga::migrate(&pool).await.expect("saga tables");
    sqlx::query("CREATE TABLE trip_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, saga_id TEXT, event TEXT)")
        .execute(&pool)
        .await
        .expect("table");
    let clock = Clock::manual_from_now();
    World {
        trips: Orchestrator::new(saga, pool.clone()).with_clock(clock.clone()),
        clock,
        pool,
        _data: data,
    }
}

impl World {
    /// What the saga was told moved at a deadline, so far.
    fn timed_out(&self) -> Vec<String> {
        self.trips
            .saga()
            .timed_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A write transaction on the world's database.
    async fn begin(&self) -> sqlx::Transaction<'static, sqlx::Sqlite> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .expect("begin")
    }

    async fn start(&self, saga_id: &str) {
        let mut tx = self.begin().await;
        flotilla_sqlite::direct(&mut tx, |db| {
            self.trips.start(db, saga_id, Trip::default(), None)
        })
        .await
        .expect("started");
        tx.commit().await.expect("commit");
    }

    /// Another orchestrator of `saga` on the world's database and clock, as after a crash.
    fn restarted(&self, saga: TripSaga) -> Orchestrator<TripSaga> {
        Orchestrator::new(saga, self.pool.clone()).with_clock(self.clock.clone())
    }

    /// The commands written since the last call (the test's "relay"): marked published as they
    /// are read, in the order written.
    async fn commands(&self) -> Vec<Message> {
        let mut rows: Vec<(i64, String)> = sqlx::query_as(
            "UPDATE messaging_outbox SET published_at = 1 \
             WHERE published_at IS NULL AND topic LIKE '%.commands' RETURNING seq, envelope",
        )
        .fetch_all(&self.pool)
        .await
        .expect("outbox");
        rows.sort_unstable_by_key(|(seq, _)| *seq);
        rows.into_iter()
            .map(|(_, envelope)| serde_json::from_str(&envelope).expect("a message"))
            .collect()
    }

    async fn one_command(&self, message_type: &str) -> Message {
        let commands = self.commands().await;
        assert_eq!(
            commands
                .iter()
                .map(|c| c.message_type.as_str())
                .collect::<Vec<_>>(),
            [message_type]
        );
        commands.into_iter().next().expect("one")
    }

    async fn answer(&self, reply: Option<Message>) -> Handled {
        self.answer_to(&self.trips, reply).await
    }

    /// `reply` handled by `orchestrator`, in a transaction of its own.
    async fn answer_to(
        &self,
        orchestrator: &Orchestrator<TripSaga>,
        reply: Option<Message>,
    ) -> Handled {
        let reply = reply.expect("the command asked for a reply");
        let mut tx = self.begin().await;
        let handled = flotilla_sqlite::direct(&mut tx, |db| orchestrator.on_reply(db, &reply))
            .await
            .expect("reply");
        tx.commit().await.expect("commit");
        handled
    }

    async fn ok(&self, command: &Message, data: Value) -> Handled {
        self.answer(succeeded(command, data)).await
    }

    async fn refuse(&self, command: &Message, reason: &str) -> Handled {
        self.answer(refused(command, reason)).await
    }

    /// Takes the one command written, of kind `kind`, and answers it a success with `data`.
    async fn succeed(&self, kind: &str, data: Value) -> Handled {
        let command = self.one_command(kind).await;
        self.ok(&command, data).await
    }

    /// [`World::succeed`] for each kind in turn.
    async fn succeed_each<const N: usize>(&self, replies: [(&str, Value); N]) {
        for (kind, data) in replies {
            self.succeed(kind, data).await;
        }
    }

    /// Starts `saga_id` and answers the trip's own three steps a success: hotel `h` booked,
    /// flight `flight_id` booked, card charged.
    async fn booked_and_charged(&self, saga_id: &str, flight_id: &str) {
        self.start(saga_id).await;
        self.succeed_each([
            ("BookHotel", json!({ "hotel_id": "h" })),
            ("BookFlight", json!({ "flight_id": flight_id })),
            ("ChargeCard", json!({})),
        ])
        .await;
    }

    /// Refuses the one command of kind `kind` for `reason`, lets its timeout pass so that it is
    /// sent again, and answers the retry a success. Returns the instance's status while the
    /// refusal stood.
    async fn refused_then_retried(&self, saga_id: &str, kind: &str, reason: &str) -> Status {
        let command = self.one_command(kind).await;
        assert_eq!(self.refuse(&command, reason).await, Handled::Applied);
        let meanwhile = self.status(saga_id).await;
        self.pass_timeout();
        self.tick().await;
        self.succeed(kind, json!({})).await;
        meanwhile
    }

    /// Moves the orchestrators' clock past a step's timeout.
    fn pass_timeout(&self) {
        self.clock.advance(TIMEOUT + Duration::from_millis(50));
    }

    /// Runs the orchestrator's timer once: the number of instances it moved.
    async fn tick(&self) -> u32 {
        self.trips.tick().await.expect("tick")
    }

    async fn events(&self, saga_id: &str) -> Vec<String> {
        sqlx::query_scalar("SELECT event FROM trip_events WHERE saga_id = $1 ORDER BY seq")
            .bind(saga_id)
            .fetch_all(&self.pool)
            .await
            .expect("events")
    }

    /// The instance's status and, where it failed, why.
    async fn outcome(&self, saga_id: &str) -> (Status, Option<String>) {
        self.trips
            .status(saga_id)
            .await
            .expect("status")
            .expect("exists")
    }

    async fn status(&self, saga_id: &str) -> Status {
        self.outcome(saga_id).await.0
    }

    async fn log(&self, saga_id: &str) -> Vec<String> {
        self.trips.log_of(saga_id).await.expect("log")
    }
}

#[tokio::test]
async fn every_step_in_order_then_completed() {
    let w = world().await;
    w.start("t1").await;
    let hotel = w.one_command("BookHotel").await;
    assert_eq!(hotel.key, "t1");
    assert_eq!(hotel.reply_to.as_deref(), Some("trip.replies"));
    assert_eq!(hotel.correlation_id.as_deref(), Some("t1"));
    assert_eq!(hotel.payload["idempotency_key"], "t1:0:ACTION");
    let reply = succeeded(&hotel, json!({ "hotel_id": "h-7" })).expect("a reply");
    let reply_id = reply.id.to_string();
    assert_eq!(w.answer(Some(reply)).await, Handled::Applied);
    let flight = w.one_command("BookFlight").await;
    assert_eq!(
        flight.payload["hotel"], "h-7",
        "data from the first reply reaches the second step"
    );
    assert_eq!(flight.causation_id, Some(reply_id), "caused by the reply");
    assert_eq!(flight.correlation_id.as_deref(), Some("t1"));
    w.ok(&flight, json!({ "flight_id": "f-9" })).await;
    w.succeed("ChargeCard", json!({})).await;
    assert_eq!(w.status("t1").await, Status::Completed);
    assert_eq!(
        w.events("t1").await,
        [
            "started",
            "book_hotel ok",
            "book_flight ok",
            "charge_card ok",
            "completed with Some(\"f-9\")"
        ]
    );
    assert!(w.commands().await.is_empty(), "nothing more to do");
    let notifications = flotilla_testkit::number(
        &w.pool,
        "SELECT COUNT(*) FROM messaging_outbox WHERE topic = 'trip.notifications'",
    )
    .await;
    assert_eq!(notifications, 1);
}

#[tokio::test]
async fn a_late_failure_undoes_the_earlier_steps_latest_first() {
    let w = world().await;
    w.start("t2").await;
    w.succeed_each([
        ("BookHotel", json!({ "hotel_id": "h-1" })),
        ("BookFlight", json!({ "flight_id": "f-1" })),
    ])
    .await;
    let charge = w.one_command("ChargeCard").await;
    assert_eq!(w.refuse(&charge, "card declined").await, Handled::Applied);
    assert_eq!(w.status("t2").await, Status::Compensating);
    let cancel_flight = w.one_command("CancelFlight").await;
    assert_eq!(
        cancel_flight.payload["idempotency_key"],
        "t2:1:COMPENSATION"
    );
    w.ok(&cancel_flight, json!({})).await;
    w.succeed("CancelHotel", json!({})).await;
    let (status, reason) = w.outcome("t2").await;
    assert_eq!(
        (status, reason.as_deref()),
        (Status::Failed, Some("card declined"))
    );
    assert_eq!(
        w.events("t2").await,
        [
            "started",
            "book_hotel ok",
            "book_flight ok",
            "charge_card failed",
            "book_flight undone",
            "book_hotel undone",
            "failed: card declined"
        ]
    );
}

#[tokio::test]
async fn a_first_step_refused_fails_with_nothing_to_undo() {
    let w = world().await;
    w.start("t3").await;
    let hotel = w.one_command("BookHotel").await;
    w.refuse(&hotel, "no rooms").await;
    assert_eq!(w.status("t3").await, Status::Failed);
    assert!(w.commands().await.is_empty(), "no compensation sent");
}

#[tokio::test]
async fn stale_duplicate_and_unknown_replies_change_nothing() {
    let w = world().await;
    w.start("t4").await;
    let hotel = w.one_command("BookHotel").await;
    let reply = succeeded(&hotel, json!({ "hotel_id": "h-1" }));
    assert_eq!(w.answer(reply.clone()).await, Handled::Applied);
    // The same reply again (redelivered), and a contradicting late one: both stale.
    assert_eq!(w.answer(reply).await, Handled::Stale);
    assert_eq!(w.refuse(&hotel, "too late").await, Handled::Stale);
    let flight = w.one_command("BookFlight").await;
    assert_eq!(w.status("t4").await, Status::Running);
    let stranger = Message::new("trip.replies", "X", "t4", json!({ "ok": true }));
    assert_eq!(w.answer(Some(stranger)).await, Handled::Unknown);
    assert_eq!(w.events("t4").await, ["started", "book_hotel ok"]);
    drop(flight);
}

#[tokio::test]
async fn an_unanswered_step_is_sent_again_then_fails_after_its_attempts() {
    let w = world().await;
    w.start("t5").await;
    let first = w.one_command("BookHotel").await;
    assert_eq!(w.tick().await, 0, "not due yet");
    assert!(w.timed_out().is_empty(), "nothing moved, nothing reported");
    w.pass_timeout();
    assert_eq!(w.tick().await, 1);
    assert_eq!(w.timed_out(), ["t5"], "the resend reported once committed");
    let second = w.one_command("BookHotel").await;
    assert_ne!(second.id, first.id, "a new message");
    assert_eq!(
        second.payload["idempotency_key"], first.payload["idempotency_key"],
        "the same key"
    );
    w.pass_timeout();
    w.tick().await;
    // The step never answered: it may have happened, or may still happen when its command
    // arrives late, so it is undone too (a participant's compensation that finds nothing done
    // leaves a mark that refuses the late action).
    let (status, reason) = w.outcome("t5").await;
    assert_eq!(status, Status::Compensating);
    assert_eq!(w.timed_out(), ["t5", "t5"], "the failure reported too");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("book_hotel did not answer")),
        "{reason:?}"
    );
    let cancel = w.one_command("CancelHotel").await;
    // The participant answers the action at last: too late, stale.
    assert_eq!(w.ok(&first, json!({})).await, Handled::Stale);
    assert_eq!(w.ok(&cancel, json!({})).await, Handled::Applied);
    assert_eq!(w.status("t5").await, Status::Failed);
}

#[tokio::test]
async fn a_reply_to_an_earlier_attempt_still_counts() {
    let w = world().await;
    w.start("t6").await;
    let first = w.one_command("BookHotel").await;
    w.pass_timeout();
    w.tick().await;
    let _second = w.one_command("BookHotel").await;
    assert_eq!(
        w.ok(&first, json!({ "hotel_id": "h-3" })).await,
        Handled::Applied
    );
    let flight = w.one_command("BookFlight").await;
    assert_eq!(flight.payload["hotel"], "h-3");
}

#[tokio::test]
async fn a_new_orchestrator_resumes_what_a_crashed_one_left() {
    let w = world().await;
    w.start("t7").await;
    w.succeed("BookHotel", json!({ "hotel_id": "h-1" })).await;
    let lost = w.one_command("BookFlight").await;
    // The orchestrator process dies; the command it sent is lost on the way.
    drop(lost);
    let restarted = w.restarted(TripSaga::new());
    w.pass_timeout();
    assert_eq!(
        restarted.tick().await.expect("tick"),
        1,
        "the unfinished saga resumed"
    );
    let flight = w.one_command("BookFlight").await;
    let reply = succeeded(&flight, json!({ "flight_id": "f-2" }));
    assert_eq!(w.answer_to(&restarted, reply).await, Handled::Applied);
    w.succeed("ChargeCard", json!({})).await;
    assert_eq!(w.status("t7").await, Status::Completed);
}

#[tokio::test]
async fn a_refused_compensation_is_retried_until_it_succeeds() {
    let w = world().await;
    w.start("t8").await;
    w.succeed("BookHotel", json!({})).await;
    let flight = w.one_command("BookFlight").await;
    w.refuse(&flight, "sold out").await;
    let meanwhile = w
        .refused_then_retried("t8", "CancelHotel", "hotel system down")
        .await;
    assert_eq!(meanwhile, Status::Compensating, "still undoing");
    assert_eq!(w.status("t8").await, Status::Failed);
    let log = w.log("t8").await;
    assert!(
        log.iter().any(|l| l.contains("compensation refused")),
        "{log:?}"
    );
    // Starting the same saga twice is refused.
    let mut tx = w.begin().await;
    assert!(matches!(
        flotilla_sqlite::direct(&mut tx, |db| w.trips.start(db, "t8", Trip::default(), None)).await,
        Err(Error::Exists(_))
    ));
    // What is left in the outbox are notifications only.
    let pending = outbox::dead_letters(&w.pool).await.expect("dead letters");
    assert!(pending.is_empty());
}

#[tokio::test]
async fn a_step_past_the_point_of_no_return_is_retried_never_compensated() {
    let w = world_with(TripSaga::with_tickets()).await;
    w.booked_and_charged("t9", "f").await;
    // Its one attempt is used, yet a timeout sends it again rather than failing.
    let meanwhile = w
        .refused_then_retried("t9", "SendTickets", "mail server down")
        .await;
    assert_eq!(meanwhile, Status::Running, "not compensating");
    assert_eq!(w.status("t9").await, Status::Completed);
    assert!(!w.events("t9").await.iter().any(|e| e.contains("undone")));
}

#[tokio::test]
async fn a_concurrent_tail_goes_out_together_and_completes_when_every_step_succeeded() {
    let w = world_with(TripSaga::with_concurrent_tail()).await;
    w.booked_and_charged("t20", "f-20").await;
    // Both tail steps at once, each with its own idempotency key, caused by the last reply.
    let tail = w.commands().await;
    let kinds: Vec<&str> = tail.iter().map(|c| c.message_type.as_str()).collect();
    assert_eq!(kinds, ["SendTickets", "EarnMiles"]);
    let (tickets, miles) = (&tail[0], &tail[1]);
    assert_eq!(tickets.payload["idempotency_key"], "t20:3:ACTION");
    assert_eq!(miles.payload["idempotency_key"], "t20:4:ACTION");
    assert_eq!(miles.payload["flight"], "f-20");

    // A refusal is retried later, never compensated; a success is kept; a repeat is stale.
    assert_eq!(w.refuse(miles, "busy").await, Handled::Applied);
    assert_eq!(w.ok(tickets, json!({})).await, Handled::Applied);
    assert_eq!(w.ok(tickets, json!({})).await, Handled::Stale);
    assert_eq!(w.status("t20").await, Status::Running, "miles still owed");

    // At the deadline only the step not done is sent again, by a restarted orchestrator too.
    w.pass_timeout();
    let restarted = w.restarted(TripSaga::with_concurrent_tail());
    assert_eq!(restarted.tick().await.expect("tick"), 1);
    let again = w.one_command("EarnMiles").await;
    assert_eq!(again.payload["idempotency_key"], "t20:4:ACTION");
    assert_eq!(w.ok(&again, json!({})).await, Handled::Applied);
    assert_eq!(w.status("t20").await, Status::Completed);
    // The first attempt's late answer changes nothing.
    assert_eq!(w.ok(miles, json!({})).await, Handled::Stale);
    assert_eq!(
        w.events("t20").await,
        [
            "started",
            "book_hotel ok",
            "book_flight ok",
            "charge_card ok",
            "send_tickets ok",
            "earn_miles ok",
            "completed with Some(\"f-20\")"
        ]
    );
    assert!(w.commands().await.is_empty(), "nothing more to do");
    let log = w.log("t20").await;
    assert!(
        log.iter()
            .any(|entry| entry == "earn_miles timed out; sending again"),
        "the log names the step sent again: {log:?}"
    );
}

#[tokio::test]
async fn without_a_concurrent_tail_the_last_steps_go_one_after_the_other() {
    let mut saga = TripSaga::with_concurrent_tail();
    saga.concurrent_tail = false;
    let w = world_with(saga).await;
    w.booked_and_charged("t21", "f").await;
    w.succeed_each([("SendTickets", json!({})), ("EarnMiles", json!({}))])
        .await;
    assert_eq!(w.status("t21").await, Status::Completed);
}
