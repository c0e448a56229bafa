//! One way to run a pipeline's tasks, for `bridge`, `sink` and `run`.
//!
//! Every task is spawned into one [`Tasks`] set, named, and of one of two
//! kinds: a *finishing* task (the message path: MQTT session, journal
//! stages, forwarders, store writers) runs until it is told to stop and then
//! finishes its work; a *background* task (HTTP server, probes, gauges,
//! retention) runs until the end and is then aborted. [`supervise`] is the
//! only place that waits on them:
//!
//! 1. running: until the shutdown signal, or until any task ends — which is
//!    unexpected at that point and makes the run a failure;
//! 2. draining ([`Drain`] is set): no new input; wait until the pipeline
//!    says nothing is in flight, every finishing task has ended, or the grace
//!    period is over;
//! 3. stopping ([`Stop`] is set): finishing tasks wrap up within what is
//!    left of the grace period (at least a second); then everything still
//!    running is aborted.
//!
//! The run fails (and the process exits non-zero) when any task failed or
//! ended before it was asked to.
//!
//! A long start-up step (journal recovery) runs before these phases, in
//! [`start_up`], with the background tasks already serving (`/healthz`
//! answers, `/readyz` says why not ready): a task ending meanwhile fails the
//! start-up, and the shutdown signal abandons the step and ends the run
//! cleanly.

use super::PipelineError;
pub use crate::shutdown::{Drain, Signals, Stop};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;

/// How often the supervisor ticks: the MQTT ack retry interval.
pub const TICK: Duration = Duration::from_millis(5);

/// How a task is expected to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Ends by itself once `drain` or `stop` says so.
    Finishing,
    /// Runs until aborted.
    Background,
}

/// A task that cannot fail (it retries what fails, like the demo's fleet)
/// still ends the run if it ends or panics.
impl From<std::convert::Infallible> for PipelineError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// The tasks of one pipeline.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<Result<(), PipelineError>>,
    names: HashMap<Id, (&'static str, Kind)>,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// A task of the message path: it ends by itself when told to.
    pub fn finishing<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<PipelineError>,
    {
        self.spawn(name, Kind::Finishing, task);
    }

    /// A task that runs until the end and is then aborted.
    pub fn background<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<PipelineError>,
    {
        self.spawn(name, Kind::Background, task);
    }

    fn spawn<F, E>(&mut self, name: &'static str, kind: Kind, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<PipelineError>,
    {
        let handle = self.set.spawn(async move { task.await.map_err(Into::into) });
        self.names.insert(handle.id(), (name, kind));
    }

    fn finishing_left(&self) -> usize {
        self.names.values().filter(|(_, k)| *k == Kind::Finishing).count()
    }

    /// The next task to end: its name, kind and outcome (a panic is a failure).
    async fn next(&mut self) -> Option<(&'static str, Kind, Result<(), PipelineError>)> {
        let joined = self.set.join_next_with_id().await?;
        let (id, result) = match joined {
            Ok((id, r)) => (id, r),
            Err(e) => {
                let message = if e.is_panic() { "panicked".to_string() } else { "was cancelled".to_string() };
                (e.id(), Err(PipelineError::Panicked { message }))
            }
        };
        let (name, kind) = self.names.remove(&id).unwrap_or(("unknown", Kind::Background));
        Some((name, kind, result))
    }
}

/// Bind the HTTP endpoints now (a wrong or taken address stops start-up) and
/// serve them as the background task `http`. An empty `listen` serves nothing.
pub async fn serve_http(
    tasks: &mut Tasks,
    listen: &str,
    metrics: std::sync::Arc<crate::telemetry::Exposition>,
    health: std::sync::Arc<crate::health::Health>,
    extra: axum::Router,
) -> Result<(), PipelineError> {
    if listen.is_empty() {
        return Ok(());
    }
    let server = crate::http::Server::bind(listen, metrics, health, extra)
        .await
        .map_err(|source| PipelineError::Http { listen: listen.to_string(), source })?;
    tasks.background("http", async move { server.serve().await.map_err(PipelineError::HttpServe) });
    Ok(())
}

/// Run a start-up `step` (journal recovery) while the tasks spawned so far
/// (the HTTP server, probes) run. `Ok(Some(value))` once the step is done;
/// `Ok(None)` when the shutdown signal came first: the step is abandoned
/// where it stands, so it must be one a crash may interrupt (it is done
/// again on the next start), and the caller returns without starting the
/// rest. A step that fails, or a task that ends meanwhile, fails the
/// start-up. In both of those cases the tasks are stopped before returning.
pub async fn start_up<T, S>(
    tasks: &mut Tasks,
    shutdown: &mut Pin<&mut S>,
    what: &'static str,
    step: impl Future<Output = Result<T, PipelineError>>,
) -> Result<Option<T>, PipelineError>
where
    S: Future<Output = ()>,
{
    tokio::pin!(step);
    let outcome = tokio::select! {
        biased;
        r = &mut step => match r {
            Ok(value) => return Ok(Some(value)),
            Err(error) => Err(error),
        },
        Some((task, _, result)) = tasks.next() => {
            let error = match result {
                Ok(()) => PipelineError::Ended { task },
                Err(error) => PipelineError::Failed { task, source: Box::new(error) },
            };
            tracing::error!(task, %error, what, "A pipeline task ended during start-up; shutting down.");
            Err(error)
        }
        () = shutdown.as_mut() => {
            tracing::info!(what, "Shutting down during start-up: nothing was taken in yet; it starts over next time.");
            Ok(None)
        }
    };
    tasks.set.shutdown().await;
    tasks.names.clear();
    outcome
}

/// What the supervisor needs to know of the pipeline it runs.
pub struct Plan<D: Fn() -> bool, T: FnMut()> {
    /// Longest drain after the shutdown signal (or a failure).
    pub grace: Duration,
    /// True once nothing is in flight any more (the drain may end early).
    pub drained: D,
    /// Run on every tick (the MQTT ack retry).
    pub tick: T,
}

/// Run `tasks` through the three phases; `Err` names the first task that
/// failed or ended before its time.
pub async fn supervise<D: Fn() -> bool, T: FnMut()>(
    tasks: &mut Tasks,
    signals: &Signals,
    health: &crate::health::Health,
    shutdown: impl Future<Output = ()>,
    mut plan: Plan<D, T>,
) -> Result<(), PipelineError> {
    tokio::pin!(shutdown);
    let mut failure: Option<PipelineError> = None;
    let mut deadline: Option<Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let begin_drain = |deadline: &mut Option<Instant>| {
        if deadline.is_none() {
            health.set_draining();
            signals.set_drain();
            *deadline = Some(Instant::now() + plan.grace);
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {
                (plan.tick)();
                if let Some(d) = deadline {
                    if (plan.drained)() || tasks.finishing_left() == 0 || Instant::now() >= d {
                        break;
                    }
                }
            }
            Some((task, kind, result)) = tasks.next() => {
                let draining = deadline.is_some();
                match result {
                    Ok(()) if draining && kind == Kind::Finishing => {}
                    Ok(()) => {
                        tracing::error!(task, "A pipeline task stopped unexpectedly; shutting down.");
                        failure.get_or_insert(PipelineError::Ended { task });
                    }
                    Err(error) => {
                        tracing::error!(task, %error, "A pipeline task failed; shutting down.");
                        failure.get_or_insert(PipelineError::Failed { task, source: Box::new(error) });
                    }
                }
                begin_drain(&mut deadline);
            }
            () = &mut shutdown, if deadline.is_none() => {
                tracing::info!(grace = ?plan.grace, "Shutting down: no new input; finishing what is in flight.");
                begin_drain(&mut deadline);
            }
        }
    }
    signals.set_stop();
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or_default();
    let until = Instant::now() + left.max(Duration::from_secs(1));
    while tasks.finishing_left() > 0 {
        let Ok(Some((task, kind, result))) = tokio::time::timeout_at(until, tasks.next()).await else {
            tracing::warn!(tasks = tasks.finishing_left(), "Grace period over; stopping what is still running.");
            break;
        };
        match result {
            Err(error) => {
                tracing::error!(task, %error, "A pipeline task failed while stopping.");
                failure.get_or_insert(PipelineError::Failed { task, source: Box::new(error) });
            }
            // A background task ends here when what fed it has stopped (the
            // topic creator once the last topic request sender is dropped):
            // expected while stopping, not a failure of the run.
            Ok(()) => {
                if kind == Kind::Background {
                    tracing::debug!(task, "A background task ended while stopping.");
                }
            }
        }
    }
    tasks.set.shutdown().await;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Health, Parts};

    fn plan(grace: Duration) -> Plan<impl Fn() -> bool, impl FnMut()> {
        Plan { grace, drained: || false, tick: || {} }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_early_fails_the_run_after_the_drain() {
        let signals = Signals::default();
        let health = Health::new(Parts::default());
        let mut tasks = Tasks::new();
        tasks.background("reader", async { Ok::<(), PipelineError>(()) });
        let mut stop = signals.stop();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tasks.finishing("writer", async move {
            stop.until_set().await;
            let _ = done_tx.send(());
            Ok::<(), PipelineError>(())
        });
        let r = supervise(&mut tasks, &signals, &health, std::future::pending(), plan(Duration::from_secs(2))).await;
        assert!(matches!(r, Err(PipelineError::Ended { task: "reader" })), "{r:?}");
        assert!(done_rx.await.is_ok(), "the finishing task was told to stop and finished");
        assert!(health.draining());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_reported_with_its_task_and_cause() {
        let signals = Signals::default();
        let health = Health::new(Parts::default());
        let mut tasks = Tasks::new();
        tasks.finishing("journal-reader", async { Err::<(), _>(crate::journal::JournalError::BadRecord("test")) });
        let r = supervise(&mut tasks, &signals, &health, std::future::pending(), plan(Duration::from_secs(1))).await;
        let text = r.unwrap_err().to_string();
        assert!(text.contains("journal-reader") && text.contains("test"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drains_then_stops_and_aborts_background_tasks() {
        let signals = Signals::default();
        let health = Health::new(Parts::default());
        let mut tasks = Tasks::new();
        tasks.background("probe", async {
            std::future::pending::<()>().await;
            Ok::<(), PipelineError>(())
        });
        let mut drain = signals.drain();
        tasks.finishing("session", async move {
            drain.until_set().await;
            Ok::<(), PipelineError>(())
        });
        let r = supervise(&mut tasks, &signals, &health, async {}, plan(Duration::from_secs(30))).await;
        assert!(r.is_ok(), "{r:?}");
        assert!(tasks.set.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn start_up_returns_the_step_with_the_tasks_still_running() {
        let mut tasks = Tasks::new();
        tasks.background("http", std::future::pending::<Result<(), PipelineError>>());
        let shutdown = std::future::pending::<()>();
        tokio::pin!(shutdown);
        let step = async {
            tokio::time::sleep(Duration::from_secs(100)).await;
            Ok(7)
        };
        let r = start_up(&mut tasks, &mut shutdown, "recovery", step).await;
        assert_eq!(r.ok().flatten(), Some(7));
        assert_eq!(tasks.set.len(), 1, "the background task goes on");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_start_up_abandons_the_step_and_stops_the_tasks() {
        let mut tasks = Tasks::new();
        tasks.background("http", std::future::pending::<Result<(), PipelineError>>());
        let shutdown = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(shutdown);
        let step = std::future::pending::<Result<(), PipelineError>>();
        let r = start_up(&mut tasks, &mut shutdown, "recovery", step).await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        assert!(tasks.set.is_empty() && tasks.names.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_during_start_up_fails_it() {
        let mut tasks = Tasks::new();
        tasks.background("http", async { Err::<(), _>(PipelineError::HttpServe(std::io::ErrorKind::Other.into())) });
        let shutdown = std::future::pending::<()>();
        tokio::pin!(shutdown);
        let step = std::future::pending::<Result<(), PipelineError>>();
        let r = start_up(&mut tasks, &mut shutdown, "recovery", step).await;
        assert!(matches!(r, Err(PipelineError::Failed { task: "http", .. })), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_stop_is_aborted_after_the_grace_period() {
        let signals = Signals::default();
        let health = Health::new(Parts::default());
        let mut tasks = Tasks::new();
        tasks.finishing("stuck", async {
            std::future::pending::<()>().await;
            Ok::<(), PipelineError>(())
        });
        let started = tokio::time::Instant::now();
        let r = supervise(&mut tasks, &signals, &health, async {}, plan(Duration::from_secs(3))).await;
        assert!(r.is_ok());
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_background_task_whose_input_closes_while_stopping_is_not_a_failure() {
        let signals = Signals::default();
        let health = Health::new(Parts::default());
        let mut tasks = Tasks::new();
        // The topic creator's shape: it ends when the last sender is gone,
        // and the sender lives in a finishing task that ends on stop.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tasks.background("topic-creator", async move {
            while rx.recv().await.is_some() {}
            Ok::<(), PipelineError>(())
        });
        let mut stop = signals.stop();
        tasks.finishing("forwarder", async move {
            stop.until_set().await;
            drop(tx);
            // Still finishing when the background task ends.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<(), PipelineError>(())
        });
        let r = supervise(&mut tasks, &signals, &health, async {}, plan(Duration::from_secs(5))).await;
        assert!(r.is_ok(), "{r:?}");
    }
}
