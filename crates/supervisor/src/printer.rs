//! The children's log lines, prefixed with their process (pretty, coloured on a terminal) or
//! tagged with it (JSON), and the supervisor's own lines, written to standard error or a file.
//!
//! It does not read the children's streams' meaning, except for the one announcement line of
//! a child's address, which the reader hands back instead of printing.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Where the lines go.
#[derive(Debug, Clone)]
enum Sink {
    Stderr,
    File(Arc<Mutex<std::fs::File>>),
}

/// Writes children's lines, prefixed (pretty) or tagged (JSON).
#[derive(Debug, Clone)]
pub(crate) struct Printer {
    json: bool,
    colour: bool,
    sink: Sink,
}

/// What the printer needs to know of a child.
#[derive(Debug, Clone)]
pub(crate) struct Tag {
    /// `inventory.2`.
    pub label: String,
    /// The role's name.
    pub role: &'static str,
    /// The ANSI colour of its prefix.
    pub colour: &'static str,
}

impl Printer {
    /// Lines to standard error.
    pub fn stderr(json: bool, colour: bool) -> Self {
        Self {
            json,
            colour,
            sink: Sink::Stderr,
        }
    }

    /// Lines appended to the file at `path` (never coloured).
    pub fn file(json: bool, path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            json,
            colour: false,
            sink: Sink::File(Arc::new(Mutex::new(file))),
        })
    }

    /// Writes one line, ignoring a closed stream (`eprintln!` would panic).
    pub fn emit(&self, line: &str) {
        match &self.sink {
            Sink::Stderr => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            Sink::File(file) => {
                if let Ok(mut file) = file.lock() {
                    let _ = writeln!(file, "{line}");
                }
            }
        }
    }

    /// Prints every line of `stream`; an announcement of the child's address is sent to
    /// `announced` instead.
    pub async fn forward(
        self,
        tag: Tag,
        stream: impl AsyncRead + Unpin,
        announced: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    ) {
        let mut announced = announced;
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if announced.is_some()
                && let Some(address) = crate::announced(&line)
            {
                if let Some(sender) = announced.take() {
                    let _ = sender.send(address);
                }
                continue;
            }
            self.line(&tag, &line);
        }
    }

    fn line(&self, tag: &Tag, line: &str) {
        if self.json {
            let mut value = match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => {
                    let mut map = serde_json::Map::new();
                    map.insert("message".into(), line.into());
                    map
                }
            };
            value.insert("process".into(), tag.label.clone().into());
            self.emit(&serde_json::Value::Object(value).to_string());
        } else if self.colour {
            self.emit(&format!(
                "\x1b[{}m{:>12} |\x1b[0m {line}",
                tag.colour, tag.label
            ));
        } else {
            self.emit(&format!("{:>12} | {line}", tag.label));
        }
    }

    /// A line from the supervisor about a child.
    pub fn say(&self, tag: &Tag, message: &str) {
        if self.json {
            let value = serde_json::json!({"process": "supervisor", "child": tag.label, "role": tag.role, "message": message});
            self.emit(&value.to_string());
        } else {
            self.emit(&format!(
                "{:>12} | supervisor: {} {message}",
                "flotilla", tag.label
            ));
        }
    }
}
