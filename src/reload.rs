//! Hot reload of `rules.yaml`: [`Reloader::reload`] compiles the rules file again and hands the result to the server
//! state, triggered by SIGHUP ([`reload_on_sighup`]) or by a change to the file's contents ([`reload_on_change`]).
//!
//! A reload either replaces the whole rule set or changes nothing: the new file is read and compiled completely
//! before the swap, so an invalid file is refused (one warning with the cause and its line) and the old rules stay in
//! force. Requests hold an `Arc` of the rules they started with, so a swap never changes the rules under an envelope
//! that is being scrubbed, and nothing waits on a reload except the instant of the pointer swap.
//!
//! Why poll the file's contents as well as listen for SIGHUP: in Kubernetes a ConfigMap update reaches the mounted
//! file on its own, but nobody can send a signal to a distroless container (no shell, no `kill`), so the relay has to
//! notice by itself. Reading a few kilobytes every few seconds costs nothing, needs no file-notification crate, and
//! also sees the atomic symlink swap the kubelet does, which inotify watches on the file itself miss.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::rules::{CompiledRules, RulesError};

/// Knows the rules file and what was last read from it. One per relay, shared by the SIGHUP and polling tasks.
pub struct Reloader {
    path: PathBuf,
    /// Fingerprint of the contents of the last reload *attempt* (successful or not), so a file that fails to
    /// compile is reported once rather than at every poll. Also serialises reloads: it is held from read to swap.
    last_seen: Mutex<u64>,
}

impl Reloader {
    /// Reads and compiles the rules file at start. The same errors as a reload, but here they stop the relay
    /// before it binds a port.
    pub fn load(path: &Path) -> Result<(CompiledRules, Reloader), RulesError> {
        let text = read_rules_file(path)?;
        let rules = CompiledRules::from_yaml(&text)?;
        Ok((
            rules,
            Reloader {
                path: path.to_owned(),
                last_seen: Mutex::new(fingerprint(text.as_bytes())),
            },
        ))
    }

    /// The rules file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reloads the rules file now, whatever its contents. On success `install` receives the new rules and the new
    /// rules version is returned; on failure `install` is not called, so the old rules stay in force. Updates
    /// `rules_version`, `rules_reloads_total{result}` and `rules_last_reload_ok`, and logs one line either way.
    pub fn reload(&self, metrics: &Metrics, install: impl FnOnce(CompiledRules)) -> Result<u64, RulesError> {
        // Held across read, compile and install, so a SIGHUP and a poll racing each other cannot install an older
        // file after a newer one. The fingerprint is taken from the very bytes that get compiled.
        let mut last_seen = self.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = read_rules_file(&self.path).and_then(|text| {
            *last_seen = fingerprint(text.as_bytes());
            CompiledRules::from_yaml(&text)
        });
        let path = self.path.display();
        match outcome {
            // Metrics are not updated atomically together, so the order matters to a scrape that lands in
            // between: the flag first, the version (what a watcher waits for) last.
            Ok(rules) => {
                install(rules);
                metrics.rules_last_reload_ok.set(1);
                metrics.rules_reloads.with_label_values(&["ok"]).inc();
                metrics.rules_version.inc();
                let version = metrics.rules_version.get().max(0) as u64;
                tracing::info!(rules_version = version, path = %path, "rules reloaded");
                Ok(version)
            }
            Err(error) => {
                metrics.rules_last_reload_ok.set(0);
                metrics.rules_reloads.with_label_values(&["error"]).inc();
                tracing::warn!(
                    path = %path,
                    rules_version = metrics.rules_version.get(),
                    error = %error,
                    "rules reload refused; the previous rules stay in force"
                );
                Err(error)
            }
        }
    }

    /// Reloads when the file's contents differ from the last attempt. `None` when nothing changed, or when the file
    /// cannot be read right now (a ConfigMap swap or an editor's save can make it vanish for a moment).
    pub fn reload_if_changed(
        &self,
        metrics: &Metrics,
        install: impl FnOnce(CompiledRules),
    ) -> Option<Result<u64, RulesError>> {
        let current = std::fs::read(&self.path).ok().map(|bytes| fingerprint(&bytes))?;
        if *self.last_seen.lock().unwrap_or_else(PoisonError::into_inner) == current {
            return None;
        }
        Some(self.reload(metrics, install))
    }
}

/// Where reloaded rules go: the server state's rules slot (`AppState::replace_rules`).
pub type Install = Arc<dyn Fn(CompiledRules) + Send + Sync>;

/// Installs the SIGHUP handler and returns the task that reloads the rules on every SIGHUP, for the caller to
/// spawn. `reloader` is `None` when the relay runs on the built-in rules: a SIGHUP is then logged and ignored
/// rather than left to its default action, which would terminate the relay.
///
/// The handler is installed when this function returns, not when the task first runs: call it (inside the runtime)
/// before the relay binds and reports ready.
pub fn reload_on_sighup(
    reloader: Option<Arc<Reloader>>,
    metrics: Arc<Metrics>,
    install: Install,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangups.recv().await.is_some() {
            match &reloader {
                Some(reloader) => {
                    tracing::info!("SIGHUP received; reloading the rules");
                    // The outcome is logged and counted inside; nothing more to do with it here.
                    let _ = reloader.reload(&metrics, |rules| install(rules));
                }
                None => tracing::info!("SIGHUP received, but the relay runs on the built-in rules; nothing to reload"),
            }
        }
    })
}

/// Runs until the process ends: every `interval`, reloads the rules file if its contents changed.
pub async fn reload_on_change(reloader: Arc<Reloader>, metrics: Arc<Metrics>, install: Install, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let mut ticks = tokio::time::interval(interval);
    // After a stall (a suspended laptop, a paused container) one look is enough, not a burst of them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let _ = reloader.reload_if_changed(&metrics, |rules| install(rules));
    }
}

fn read_rules_file(path: &Path) -> Result<String, RulesError> {
    std::fs::read_to_string(path).map_err(|source| RulesError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Not a security hash: it only tells "same file as last time" apart from "changed".
fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "version: 1\n";
    const INVALID: &str = "version: 1\nno_such_field: true\n";
    const DRY_RUN: &str = "version: 1\ndry_run: true\n";

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write the rules file");
    }

    /// A rules file in a temporary directory, loaded.
    fn loaded(text: &str) -> (tempfile::TempDir, PathBuf, CompiledRules, Reloader) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("rules.yaml");
        write(&path, text);
        let (rules, reloader) = Reloader::load(&path).expect("valid rules");
        (dir, path, rules, reloader)
    }

    #[test]
    fn a_valid_file_is_installed_and_counted() {
        let (_dir, path, rules, reloader) = loaded(VALID);
        assert!(!rules.dry_run());
        let metrics = Metrics::new();
        write(&path, DRY_RUN);
        let mut installed = None;
        assert_eq!(reloader.reload(&metrics, |rules| installed = Some(rules)).unwrap(), 2);
        assert!(installed.expect("new rules installed").dry_run());
        assert_eq!(metrics.rules_version.get(), 2);
        assert_eq!(metrics.rules_reloads.with_label_values(&["ok"]).get(), 1);
        assert_eq!(metrics.rules_last_reload_ok.get(), 1);
    }

    #[test]
    fn an_invalid_file_installs_nothing() {
        let (_dir, path, _rules, reloader) = loaded(VALID);
        let metrics = Metrics::new();
        write(&path, INVALID);
        let error = reloader
            .reload(&metrics, |_| panic!("an invalid file must not be installed"))
            .unwrap_err();
        assert!(
            error.to_string().contains("line 2"),
            "the cause names its line: {error}"
        );
        assert_eq!(metrics.rules_version.get(), 1);
        assert_eq!(metrics.rules_reloads.with_label_values(&["error"]).get(), 1);
        assert_eq!(metrics.rules_last_reload_ok.get(), 0);

        // Fixing the file recovers the flag.
        write(&path, VALID);
        assert_eq!(reloader.reload(&metrics, drop).unwrap(), 2);
        assert_eq!(metrics.rules_last_reload_ok.get(), 1);
    }

    #[test]
    fn polling_reloads_only_changed_contents() {
        let (_dir, path, _rules, reloader) = loaded(VALID);
        let metrics = Metrics::new();

        assert!(
            reloader.reload_if_changed(&metrics, drop).is_none(),
            "unchanged since start"
        );
        write(&path, INVALID);
        assert!(matches!(reloader.reload_if_changed(&metrics, drop), Some(Err(_))));
        assert!(
            reloader.reload_if_changed(&metrics, drop).is_none(),
            "a bad file is reported once, not per poll"
        );
        assert_eq!(metrics.rules_reloads.with_label_values(&["error"]).get(), 1);
        write(&path, DRY_RUN);
        assert!(matches!(reloader.reload_if_changed(&metrics, drop), Some(Ok(2))));
        std::fs::remove_file(&path).unwrap();
        assert!(
            reloader.reload_if_changed(&metrics, drop).is_none(),
            "a vanished file is waited for"
        );
        assert_eq!(metrics.rules_version.get(), 2);
    }

    #[test]
    fn a_missing_file_at_start_is_an_error_naming_the_path() {
        let error = Reloader::load(Path::new("/nonexistent/rules.yaml"))
            .err()
            .expect("missing file");
        assert!(error.to_string().contains("/nonexistent/rules.yaml"), "{error}");
    }
}
