//! Shutdown as an input: the OS signals that end the relay, and the readiness latch that load balancers read.
//!
//! `server::run` takes any future as its shutdown trigger; the binary passes [`signal`], tests pass a oneshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::Metrics;

/// Completes on SIGTERM or SIGINT (Ctrl-C), logging which one arrived.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
                }
            }
            _ => {
                // Without signal handlers the relay can still be stopped, just not gracefully.
                tracing::error!("could not install signal handlers; graceful shutdown is unavailable");
                std::future::pending::<()>().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!(signal = "ctrl-c", "shutting down");
    }
}

/// Whether the relay takes traffic: true once serving, false from the moment shutdown begins. Mirrored in the
/// `scrub_relay_ready` gauge.
#[derive(Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Readiness {
    pub fn new(metrics: Arc<Metrics>) -> Readiness {
        Readiness {
            ready: Arc::new(AtomicBool::new(false)),
            metrics,
        }
    }

    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        self.metrics.ready.set(i64::from(ready));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}
