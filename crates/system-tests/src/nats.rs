//! A JetStream stream of a test's own on the machine's NATS server (`FLOTILLA_TEST_NATS_URL`,
//! by default `nats://127.0.0.1:4222`): required in CI; elsewhere, when unreachable, the test skips
//! saying so in a `skipped:` line (`flotilla_testkit::NATS`).

/// A connection to the test NATS server.
pub struct NatsStream {
    /// Its URL.
    pub url: String,
    /// The connection.
    pub client: async_nats::Client,
}

/// The settings that put a system on stream `stream` with subject prefix `prefix`.
pub struct StreamSettings {
    url: String,
    /// The stream's name.
    pub stream: String,
    /// The subjects' prefix.
    pub prefix: String,
}

impl NatsStream {
    /// Connects; `None` (the test skips, saying so) when no server answers outside CI.
    pub async fn open() -> Option<Self> {
        flotilla_testkit::NATS
            .reach(|url| async move {
                let client = async_nats::connect(url.as_str()).await?;
                Ok::<_, async_nats::ConnectError>(Self { url, client })
            })
            .await
    }

    /// A new stream name (`PREFIX_TAG_UNIQUE`) and subject prefix (`subjects` + unique).
    pub fn unique(&self, stream: &str, subjects: &str) -> StreamSettings {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        StreamSettings {
            url: self.url.clone(),
            stream: format!("{stream}_{unique}").to_uppercase(),
            prefix: format!("{subjects}{unique}"),
        }
    }
}

impl StreamSettings {
    /// The `FLOTILLA_MESSAGING__*` variables of a system on this stream.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FLOTILLA_MESSAGING__TRANSPORT", "nats".to_owned()),
            ("FLOTILLA_MESSAGING__NATS_URL", self.url.clone()),
            ("FLOTILLA_MESSAGING__NATS_STREAM", self.stream.clone()),
            (
                "FLOTILLA_MESSAGING__NATS_SUBJECT_PREFIX",
                self.prefix.clone(),
            ),
        ]
    }

    /// Deletes the stream (a failure is only reported).
    pub async fn delete(&self, nats: &NatsStream) {
        let jetstream = async_nats::jetstream::new(nats.client.clone());
        if let Err(error) = jetstream.delete_stream(&self.stream).await {
            eprintln!("could not delete test stream {}: {error}", self.stream);
        }
    }
}
