//! `flotilla dlq`: the built binary against a temporary data directory whose service databases
//! hold real dead letters, made the way the relay makes them (a transport that is down, a
//! dead-letter limit of one attempt).

use std::path::Path;
use std::process::Output;

use flotilla_messaging::Message;
use flotilla_messaging::outbox;
use flotilla_testkit::TempData;
use serde_json::{Value, json};
use sqlx::SqlitePool;

/// Enqueues one message per key on `topic`, then lets a relay whose transport is down bury them
/// all after one attempt; returns them in enqueue order.
async fn dead_letters(pool: &SqlitePool, topic: &str, keys: &[&str]) -> Vec<Message> {
    let messages: Vec<Message> = keys
        .iter()
        .map(|key| Message::new(topic, "Tested", *key, json!({ "key": key })))
        .collect();
    flotilla_testkit::bury(pool, &messages).await;
    messages
}

/// The seq of each dead letter of `messages`, in their order.
async fn seqs_of(pool: &SqlitePool, messages: &[Message]) -> Vec<i64> {
    let letters = outbox::dead_letters(pool).await.expect("dead letters");
    messages
        .iter()
        .map(|message| {
            letters
                .iter()
                .find(|letter| letter.message_id == message.id.to_string())
                .map(|letter| letter.seq)
                .expect("a dead letter of the message")
        })
        .collect()
}

/// The outbox row of `message`: (pending, attempts), if there is one.
async fn outbox_row(pool: &SqlitePool, message: &Message) -> Option<(bool, i64)> {
    sqlx::query_as(
        "SELECT published_at IS NULL, attempts FROM messaging_outbox WHERE message_id = $1",
    )
    .bind(message.id.to_string())
    .fetch_optional(pool)
    .await
    .expect("outbox row")
}

/// Runs the built `flotilla dlq ARGS… --data-dir DATA_DIR`.
async fn dlq(data_dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("dlq")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("FLOTILLA_DATA_DIR")
        .output()
        .await
        .expect("run flotilla")
}

/// Runs `flotilla dlq ARGS` on `data_dir`, asserts that it succeeded (showing its stderr if
/// not), and returns what it printed on stdout.
async fn dlq_ok(data_dir: &Path, args: &[&str]) -> String {
    let output = dlq(data_dir, args).await;
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn list_shows_the_dead_letters_of_every_service_and_names_those_without_a_database() {
    let dir = TempData::new();
    let order = dir.messaging_pool("order").await;
    let placed = dead_letters(&order, "order.events", &["o-1"]).await;
    let payment = dir.messaging_pool("payment").await;
    let replies = dead_letters(&payment, "saga.replies", &["o-2", "o-3"]).await;
    // A stopped system: nothing holds the databases open.
    order.close().await;
    payment.close().await;

    let output = dlq(dir.path(), &["list", "--json"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let listed: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let listed = listed.as_array().expect("an array");
    let expected: Vec<(&str, &Message)> = std::iter::once(("order", &placed[0]))
        .chain(replies.iter().map(|message| ("payment", message)))
        .collect();
    assert_eq!(listed.len(), expected.len(), "{listed:?}");
    for (letter, (service, message)) in listed.iter().zip(&expected) {
        assert_eq!(letter["service"], *service, "{letter}");
        assert_eq!(letter["message_id"], message.id.to_string(), "{letter}");
        assert_eq!(letter["topic"], message.topic, "{letter}");
        assert_eq!(letter["key"], message.key, "{letter}");
        assert_eq!(letter["attempts"], 1, "{letter}");
        assert_eq!(letter["message_type"], "Tested", "{letter}");
        assert!(
            letter["dead_at"]
                .as_i64()
                .is_some_and(|at| at > 1_700_000_000_000_000),
            "{letter}"
        );
        assert!(letter["seq"].is_i64(), "{letter}");
        let error = letter["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("the broker is down"), "{letter}");
    }
    // The services that never ran there are named, and their databases are not created.
    let notes = stderr(&output);
    for service in ["inventory", "shipping"] {
        assert!(
            notes.contains(&format!("no {service} database")),
            "{service} named: {notes}"
        );
        assert!(!dir.path().join(format!("{service}.db")).exists());
    }

    // One service, as a table.
    let output = dlq(dir.path(), &["list", "--service", "payment"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let table = stdout(&output);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two letters:\n{table}");
    assert!(lines[0].starts_with("SERVICE"), "{table}");
    for (line, message) in lines[1..].iter().zip(&replies) {
        assert!(line.starts_with("payment"), "{table}");
        assert!(line.contains(&message.id.to_string()), "{table}");
        assert!(line.contains("saga.replies"), "{table}");
    }
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));
}

#[tokio::test]
async fn replay_puts_the_dead_letters_back_in_the_outbox_pending_again() {
    let dir = TempData::new();
    // A running service: its pool stays open while the command runs.
    let payment = dir.messaging_pool("payment").await;
    let messages = dead_letters(&payment, "saga.replies", &["o-1", "o-2", "o-3"]).await;
    let seqs = seqs_of(&payment, &messages).await;
    for message in &messages {
        assert_eq!(outbox_row(&payment, message).await, None, "buried");
    }

    let (first, third) = (seqs[0].to_string(), seqs[2].to_string());
    let said = dlq_ok(
        dir.path(),
        &["replay", "--service", "payment", &first, &third],
    )
    .await;
    assert!(
        said.contains("replayed 2 dead letter(s) of payment"),
        "{said}"
    );
    let left = outbox::dead_letters(&payment).await.expect("dead letters");
    assert_eq!(
        left.iter().map(|letter| letter.seq).collect::<Vec<_>>(),
        [seqs[1]]
    );
    for message in [&messages[0], &messages[2]] {
        assert_eq!(
            outbox_row(&payment, message).await,
            Some((true, 0)),
            "pending again, attempts reset"
        );
    }
    assert_eq!(outbox_row(&payment, &messages[1]).await, None);

    let said = dlq_ok(dir.path(), &["replay", "--service", "payment", "--all"]).await;
    assert!(
        said.contains("replayed 1 dead letter(s) of payment"),
        "{said}"
    );
    assert!(
        outbox::dead_letters(&payment)
            .await
            .expect("dead letters")
            .is_empty()
    );
    for message in &messages {
        assert_eq!(outbox_row(&payment, message).await, Some((true, 0)));
    }

    // Nothing left: fine, and said.
    let said = dlq_ok(dir.path(), &["replay", "--service", "payment", "--all"]).await;
    assert!(said.contains("nothing replayed"), "{said}");
}

#[tokio::test]
async fn replay_of_an_unknown_seq_fails_naming_it_and_changes_nothing() {
    let dir = TempData::new();
    let inventory = dir.messaging_pool("inventory").await;
    let messages = dead_letters(&inventory, "saga.replies", &["o-1", "o-2"]).await;
    let seqs = seqs_of(&inventory, &messages).await;
    let before = outbox::dead_letters(&inventory)
        .await
        .expect("dead letters");
    let unknown = (seqs[1] + 1000).to_string();

    let known = seqs[0].to_string();
    let output = dlq(
        dir.path(),
        &["replay", "--service", "inventory", &known, &unknown],
    )
    .await;
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(
        stderr(&output).contains(&format!("no dead letter with seq {unknown}")),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        outbox::dead_letters(&inventory)
            .await
            .expect("dead letters"),
        before,
        "the known seq was not replayed either"
    );
    for message in &messages {
        assert_eq!(outbox_row(&inventory, message).await, None);
    }
}

#[tokio::test]
async fn a_service_without_a_database_is_an_error_and_no_database_is_created() {
    let dir = TempData::new();
    for args in [
        &["list"][..],
        &["list", "--service", "shipping"],
        &["replay", "--service", "shipping", "--all"],
        &["replay", "--service", "shipping", "1"],
    ] {
        let output = dlq(dir.path(), args).await;
        assert!(!output.status.success(), "{args:?}: {}", stdout(&output));
        assert!(
            stderr(&output).contains("database") && stderr(&output).contains("--data-dir"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let created: Vec<_> = std::fs::read_dir(dir.path()).expect("data dir").collect();
    assert!(created.is_empty(), "{created:?}");

    // Replay needs seqs or --all, not both.
    for args in [
        &["replay", "--service", "shipping"][..],
        &["replay", "--service", "shipping", "--all", "1"],
    ] {
        let output = dlq(dir.path(), args).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}
