//! The memory budget: one count, in bytes, of what the relay holds for requests (bodies being received, decoded
//! buffers, scrubbed copies in processing), with a share per client address, so a burst of large bodies or a
//! compression bomb waits briefly and is then refused with 503 instead of growing the process towards the OOM killer.
//!
//! A request holds a [`Charge`] that grows as its buffers grow and gives everything back when dropped. Waiting is
//! not first come, first served: whoever fits when memory is released goes ahead, so a small envelope never queues
//! behind a large one that cannot fit yet (the large one gives up after the bounded wait).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// Why a charge could not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    /// The relay's budget stayed full for the whole wait.
    #[error("the relay's memory budget is exhausted")]
    Relay,
    /// This client address already holds its share of the budget.
    #[error("this client's share of the memory budget is exhausted")]
    Client,
    /// The request needs more than the whole budget (or the client's whole share): waiting cannot help.
    #[error("the request needs more memory than the budget allows")]
    TooLarge { limit: usize },
}

/// The relay's memory budget. Shared as `Arc<Budget>`.
pub struct Budget {
    total: usize,
    /// Most bytes one client address may hold; `total` when there is no per-client share.
    per_client: usize,
    wait: Duration,
    state: Mutex<State>,
    released: Notify,
    metrics: Option<Arc<Metrics>>,
}

#[derive(Default)]
struct State {
    used: usize,
    /// The most ever held at once.
    peak: usize,
    clients: HashMap<IpAddr, usize>,
}

impl Budget {
    /// A budget of `total` bytes, at most `per_client` of it (0: no share) for one client address; a charge that
    /// does not fit waits at most `wait` for memory to be released.
    pub fn new(total: usize, per_client: usize, wait: Duration, metrics: Option<Arc<Metrics>>) -> Arc<Budget> {
        if let Some(metrics) = &metrics {
            metrics
                .memory_budget_bytes
                .set(i64::try_from(total).unwrap_or(i64::MAX));
        }
        let per_client = if per_client == 0 { total } else { per_client.min(total) };
        Arc::new(Budget {
            total,
            per_client,
            wait,
            state: Mutex::new(State::default()),
            released: Notify::new(),
            metrics,
        })
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes held right now, by every charge.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    /// The most bytes ever held at once since the start.
    pub fn peak(&self) -> usize {
        self.lock().peak
    }

    /// A charge of nothing yet, for `client` (`None`: not counted against any client's share).
    pub fn charge(self: &Arc<Self>, client: Option<IpAddr>) -> Charge {
        Charge {
            budget: self.clone(),
            client,
            bytes: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two counters updated together under the lock; a panic cannot leave them half-written.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn try_take(&self, client: Option<IpAddr>, held: usize, bytes: usize) -> Result<(), Exhausted> {
        let wanted = held.saturating_add(bytes);
        if wanted > self.total {
            return Err(Exhausted::TooLarge { limit: self.total });
        }
        if client.is_some() && wanted > self.per_client {
            return Err(Exhausted::TooLarge { limit: self.per_client });
        }
        let mut state = self.lock();
        if state.used + bytes > self.total {
            return Err(Exhausted::Relay);
        }
        if let Some(client) = client {
            let share = state.clients.get(&client).copied().unwrap_or(0);
            if share + bytes > self.per_client {
                return Err(Exhausted::Client);
            }
            *state.clients.entry(client).or_insert(0) += bytes;
        }
        state.used += bytes;
        state.peak = state.peak.max(state.used);
        self.publish(state.used);
        Ok(())
    }

    fn give_back(&self, client: Option<IpAddr>, bytes: usize) {
        if bytes == 0 {
            return;
        }
        {
            let mut state = self.lock();
            state.used = state.used.saturating_sub(bytes);
            if let Some(client) = client
                && let Some(share) = state.clients.get_mut(&client)
            {
                *share = share.saturating_sub(bytes);
                if *share == 0 {
                    state.clients.remove(&client);
                }
            }
            self.publish(state.used);
        }
        self.released.notify_waiters();
    }

    fn publish(&self, used: usize) {
        if let Some(metrics) = &self.metrics {
            metrics
                .memory_budget_used_bytes
                .set(i64::try_from(used).unwrap_or(i64::MAX));
        }
    }
}

/// What one request holds of the budget; released when dropped.
pub struct Charge {
    budget: Arc<Budget>,
    client: Option<IpAddr>,
    bytes: usize,
}

impl Charge {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows the charge by `bytes` if that fits now.
    pub fn try_grow(&mut self, bytes: usize) -> Result<(), Exhausted> {
        self.budget.try_take(self.client, self.bytes, bytes)?;
        self.bytes += bytes;
        Ok(())
    }

    /// Grows the charge by `bytes`, waiting up to the budget's wait for other requests to release memory.
    pub async fn grow(&mut self, bytes: usize) -> Result<(), Exhausted> {
        let budget = self.budget.clone();
        let deadline = tokio::time::Instant::now() + budget.wait;
        loop {
            // Registered before trying, so a release between the try and the wait is not missed.
            let released = budget.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.try_grow(bytes) {
                Ok(()) => return Ok(()),
                Err(error @ Exhausted::TooLarge { .. }) => return Err(error),
                Err(error) => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// [`Charge::grow`] from a blocking thread (the decoders run on one).
    pub fn grow_blocking(&mut self, bytes: usize, runtime: &tokio::runtime::Handle) -> Result<(), Exhausted> {
        match self.try_grow(bytes) {
            Ok(()) => Ok(()),
            Err(error @ Exhausted::TooLarge { .. }) => Err(error),
            Err(_) => runtime.block_on(self.grow(bytes)),
        }
    }

    /// Gives `bytes` back (a buffer was freed) while keeping the rest.
    pub fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.budget.give_back(self.client, bytes);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.client, self.bytes);
    }
}

/// The memory limit of the container the relay runs in (cgroup v2, then v1), when one is set.
pub fn cgroup_memory_limit() -> Option<usize> {
    const FILES: [&str; 2] = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ];
    FILES
        .iter()
        .find_map(|path| parse_cgroup_limit(&std::fs::read_to_string(path).ok()?))
}

/// `max`, and v1's "no limit" (a page-rounded `i64::MAX`), mean unlimited.
fn parse_cgroup_limit(text: &str) -> Option<usize> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 60).then(|| usize::try_from(bytes).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    const OTHER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));

    #[test]
    fn charges_are_counted_and_given_back_on_drop() {
        let budget = Budget::new(100, 0, Duration::ZERO, None);
        let mut a = budget.charge(CLIENT);
        a.try_grow(60).unwrap();
        let mut b = budget.charge(OTHER);
        assert_eq!(b.try_grow(50), Err(Exhausted::Relay));
        b.try_grow(40).unwrap();
        assert_eq!(budget.used(), 100);
        a.shrink(10);
        assert_eq!(budget.used(), 90);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert_eq!(
            b.try_grow(61),
            Err(Exhausted::TooLarge { limit: 100 }),
            "more than the whole budget"
        );
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn one_client_cannot_take_more_than_its_share() {
        let budget = Budget::new(100, 30, Duration::ZERO, None);
        let mut first = budget.charge(CLIENT);
        first.try_grow(20).unwrap();
        let mut second = budget.charge(CLIENT);
        assert_eq!(second.try_grow(20), Err(Exhausted::Client));
        assert_eq!(second.try_grow(31), Err(Exhausted::TooLarge { limit: 30 }));
        let mut other = budget.charge(OTHER);
        other.try_grow(30).unwrap();
        drop(first);
        second.try_grow(20).unwrap();
    }

    #[tokio::test]
    async fn a_waiting_charge_goes_ahead_when_memory_is_released() {
        let budget = Budget::new(100, 0, Duration::from_secs(3600), None);
        let mut big = budget.charge(CLIENT);
        big.try_grow(100).unwrap();
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut small = budget.charge(OTHER);
                small.grow(10).await.map(|()| small.bytes())
            })
        };
        tokio::task::yield_now().await;
        drop(big);
        assert_eq!(waiter.await.unwrap(), Ok(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_charge_that_never_fits_gives_up_after_the_wait() {
        let budget = Budget::new(100, 0, Duration::from_millis(500), None);
        let mut held = budget.charge(CLIENT);
        held.try_grow(95).unwrap();
        let mut waiting = budget.charge(OTHER);
        assert_eq!(waiting.grow(10).await, Err(Exhausted::Relay));
        assert_eq!(waiting.bytes(), 0);
    }

    #[test]
    fn cgroup_limits() {
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(parse_cgroup_limit("536870912\n"), Some(512 * 1024 * 1024));
    }
}
