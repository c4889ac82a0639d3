//! The outbound worker: sends what requests queued in the store's outbound job queue
//! (mail now; webhook deliveries can be another `kind` of the same queue and worker
//! loop). Jobs are claimed with a lease (`Store::claim_jobs`), so several `corral serve`
//! sharing one store never send the same job at the same time; a failed attempt is
//! retried with exponential back-off (`after_failure`) and recorded with its error; a job
//! that keeps failing ends `failed`.

use chrono::{DateTime, Duration, Utc};
use corral_store::{JobOutcome, OutboundJob};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::mail::{MAIL_JOB, MailJob};
use crate::state::AppState;

/// How long a claim holds a job: longer than a send can take (SMTP's own timeout is one
/// minute), so a live worker never loses its job to another.
const LEASE: Duration = Duration::minutes(5);
/// Jobs claimed at once.
const BATCH: u32 = 10;
/// How often the queue is read when nothing woke the worker: the delay for jobs queued
/// by another server, and for retries that came due.
const POLL: std::time::Duration = std::time::Duration::from_secs(1);
/// Attempts before a job is given up.
pub const MAX_ATTEMPTS: u32 = 8;
/// The first retry's delay; each further one doubles, up to `MAX_DELAY`.
const FIRST_DELAY: Duration = Duration::seconds(30);
const MAX_DELAY: Duration = Duration::hours(1);

/// What becomes of a job whose attempt number `attempts` (1 for the first) failed with
/// `error`: another try after a delay that doubles each time (30 s, 1 min, 2 min, … at
/// most an hour), or `Failed` after `MAX_ATTEMPTS`, or at once when retrying cannot help.
pub fn after_failure(
    attempts: u32,
    now: DateTime<Utc>,
    error: String,
    permanent: bool,
) -> JobOutcome {
    if permanent || attempts >= MAX_ATTEMPTS {
        return JobOutcome::Failed { error };
    }
    let doublings = attempts.saturating_sub(1).min(16);
    let delay = (FIRST_DELAY * 2_i32.pow(doublings)).min(MAX_DELAY);
    JobOutcome::Retry {
        at: now + delay,
        error,
    }
}

/// The running worker; `stop` ends it after the job in hand.
pub struct Worker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Worker {
    pub fn start(state: AppState) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                let busy = run_once(&state).await;
                if busy {
                    continue;
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = state.outbound_wakeup.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
        Worker { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "outbound worker ended abnormally");
        }
    }
}

/// Claims and works one batch of due jobs; true if there were any (more may be due).
async fn run_once(state: &AppState) -> bool {
    let now = Utc::now();
    let jobs = match state.store.claim_jobs(MAIL_JOB, now, LEASE, BATCH).await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::error!(error = %e, "outbound queue: could not claim jobs");
            return false;
        }
    };
    for job in &jobs {
        let outcome = attempt(state, job).await;
        let Some(claim) = job.claim_id else { continue };
        match state
            .store
            .finish_job(job.id, claim, &outcome, Utc::now())
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(job = %job.id, "outbound job: the lease ended first"),
            Err(e) => tracing::error!(job = %job.id, error = %e, "outbound job: not recorded"),
        }
    }
    !jobs.is_empty()
}

/// One attempt at a mail job.
async fn attempt(state: &AppState, job: &OutboundJob) -> JobOutcome {
    let mail: MailJob = match serde_json::from_str(&job.payload) {
        Ok(mail) => mail,
        Err(e) => {
            return JobOutcome::Failed {
                error: format!("unreadable mail job: {e}"),
            };
        }
    };
    let sent = async {
        let Some(rendered) = crate::handlers::render_mail(state, &mail).await? else {
            return Ok(false);
        };
        state
            .mailer
            .send(
                state.store.as_ref(),
                &rendered.to,
                &rendered.subject,
                &rendered.body,
            )
            .await?;
        Ok::<_, ApiError>(true)
    };
    match sent.await {
        Ok(true) => JobOutcome::Sent,
        Ok(false) => JobOutcome::Dropped,
        Err(e) => {
            tracing::warn!(job = %job.id, attempt = job.attempts, error = %e, "mail not sent");
            // A malformed address stays malformed; anything else (SMTP down, store
            // busy) may pass later.
            let permanent = matches!(e, ApiError::BadRequest { .. });
            after_failure(job.attempts, Utc::now(), e.to_string(), permanent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_then_gives_up() {
        let now = Utc::now();
        let delay = |attempts| match after_failure(attempts, now, "x".into(), false) {
            JobOutcome::Retry { at, .. } => Some(at - now),
            _ => None,
        };
        assert_eq!(delay(1), Some(Duration::seconds(30)));
        assert_eq!(delay(2), Some(Duration::minutes(1)));
        assert_eq!(delay(3), Some(Duration::minutes(2)));
        assert_eq!(delay(7), Some(Duration::minutes(32)));
        assert_eq!(delay(MAX_ATTEMPTS), None, "given up");
        assert!(matches!(
            after_failure(1, now, "bad address".into(), true),
            JobOutcome::Failed { .. }
        ));
    }

    #[test]
    fn delay_is_capped() {
        let now = Utc::now();
        match after_failure(7, now, "x".into(), false) {
            JobOutcome::Retry { at, .. } => assert!(at - now <= MAX_DELAY),
            other => panic!("{other:?}"),
        }
        // Beyond the cap (were MAX_ATTEMPTS raised), still an hour.
        let doublings = 20_u32.saturating_sub(1).min(16);
        assert_eq!(
            (FIRST_DELAY * 2_i32.pow(doublings)).min(MAX_DELAY),
            MAX_DELAY
        );
    }
}
