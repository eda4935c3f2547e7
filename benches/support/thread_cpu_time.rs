//! Criterion's measurement of CPU time of the benchmark thread, shared by `scrub.rs` and `codec.rs`.

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};

/// CPU time of the benchmark thread (`CLOCK_THREAD_CPUTIME_ID`) instead of wall time. The bench machine is shared
/// (2 cores, several builds and test runs at once), so wall time measures the scheduler as much as the code; CPU
/// time gives the per-core figure the target is stated in. Set `SCRUB_BENCH_WALL_TIME=1` for wall time.
pub struct ThreadCpuTime;

fn thread_cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

static WALL_TIME: WallTime = WallTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }

    fn end(&self, started: Duration) -> Duration {
        thread_cpu_now().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, exactly what the wall-time formatter expects.
        WALL_TIME.formatter()
    }
}
