//! One shutdown signal for the whole process: the first SIGINT/SIGTERM cancels
//! the token (work in hand stops cleanly); a second one exits at once.

use tokio_util::sync::CancellationToken;

pub fn install() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_signal().await;
        tracing::warn!(
            "shutting down: finishing what is safe to finish (signal again to exit now)"
        );
        t.cancel();
        wait_signal().await;
        tracing::error!("second signal: exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
