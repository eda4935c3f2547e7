//! The delivery workers' own thread.
//!
//! Ingest scrubs small envelopes on the runtime thread that read them (no hop to a blocking thread). Had the workers
//! shared that runtime, a CPU-bound relay would poll every connection's scrub between two steps of a delivery, so
//! ingest would outrun delivery until the queue filled and SDKs got 503 (issue #11). On their own thread, the kernel's
//! scheduler gives delivery its share of the CPU whatever ingest does.

use std::io;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A Tokio runtime on a dedicated OS thread; dropping it stops the thread (tasks still running there are cancelled).
pub(crate) struct DeliveryThread {
    handle: Handle,
    /// Dropped (with the `DeliveryThread`), it ends the thread. The thread is never joined: the drop may happen on a
    /// runtime thread, which must not block.
    _stop: oneshot::Sender<()>,
}

impl DeliveryThread {
    pub(crate) fn spawn() -> io::Result<DeliveryThread> {
        // One thread serves about 40,000 deliveries a second (about 25 µs of CPU each); a host fast enough to ingest
        // more than that has cores to spare for more.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() / 8).max(1);
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("delivery")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("delivery-main".into())
            .spawn(move || {
                // Ends when the sender is dropped.
                let _ = runtime.block_on(stopped);
                // Dropped here, outside any runtime, where a runtime may be dropped.
                drop(runtime);
            })?;
        Ok(DeliveryThread { handle, _stop: stop })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}
