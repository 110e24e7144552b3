//! The system over NATS JetStream (`FLOTILLA_TEST_NATS_URL`; required in CI, skipped elsewhere
//! without a server): every saga path, and kill -9 of each service in both styles.

use flotilla_system_tests::System;
use flotilla_system_tests::nats::NatsStream;
use flotilla_system_tests::scenarios::{every_path_in_both_styles, sagas_survive_kill_9};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sagas_over_nats_survive_kill_9_of_each_service_in_both_styles() {
    let Some(nats) = NatsStream::open().await else {
        return;
    };
    for style in ["orchestration", "choreography"] {
        let stream = nats.unique(&format!("KILL_{style}"), "kill");
        sagas_survive_kill_9(style, &stream.environment()).await;
        stream.delete(&nats).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_runs_over_nats_jetstream_too() {
    let Some(nats) = NatsStream::open().await else {
        return;
    };
    // A stream of this run's own, so that nothing of another run is delivered here.
    let stream = nats.unique("SYSTEM", "system");
    let environment = stream.environment();
    let environment: Vec<(&str, &str)> = environment
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let system = System::start_env(&environment).await;
    every_path_in_both_styles(&system).await;
    drop(system);
    stream.delete(&nats).await;
}
