//! One cancellation token for the whole process, fired by Ctrl-C, SIGTERM or, for a process the
//! supervisor started, the end of its standard input (the supervisor is gone).

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first shutdown signal.
pub fn signal(supervised: bool) -> CancellationToken {
    let token = CancellationToken::new();
    let fired = token.clone();
    tokio::spawn(async move {
        let reason = tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = terminate() => "SIGTERM",
            _ = parent_gone(supervised) => "supervisor gone",
        };
        fired.cancel();
        tracing::info!(reason, "shutting down");
    });
    token
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}

/// Completes when standard input reaches its end; never when not supervised.
async fn parent_gone(supervised: bool) {
    if !supervised {
        return std::future::pending().await;
    }
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    loop {
        match stdin.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
