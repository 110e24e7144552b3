//! The two ways a saga's steps can be coordinated, as named in settings (`saga_style`), in the
//! order service's `X-Saga-Style` header and on the benchmark's command line.

use serde::{Deserialize, Serialize};

/// How a saga's steps are coordinated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SagaStyle {
    /// A persistent orchestrator sends each step's command and waits for its reply.
    #[default]
    Orchestration,
    /// The participants react to each other's events; nobody coordinates.
    Choreography,
}

impl SagaStyle {
    /// Its name, as in settings and the `X-Saga-Style` header.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStyle::Orchestration => "orchestration",
            SagaStyle::Choreography => "choreography",
        }
    }

    /// The style named `name` (case-insensitive).
    ///
    /// ```
    /// use flotilla_saga::SagaStyle;
    /// assert_eq!(SagaStyle::parse("Choreography"), Some(SagaStyle::Choreography));
    /// assert_eq!(SagaStyle::parse("both"), None);
    /// ```
    pub fn parse(name: &str) -> Option<Self> {
        [SagaStyle::Orchestration, SagaStyle::Choreography]
            .into_iter()
            .find(|style| style.as_str().eq_ignore_ascii_case(name.trim()))
    }
}
