//! `once`: run an action at most once per key to completion, and replay its outcome to every
//! duplicate.
//!
//! ```text
//! CheckAndClaim ─┬─ COMPLETED   → Once::Duplicate(stored outcome)      (action not run)
//!                ├─ IN_PROGRESS → Err(OnceError::InProgress{owner, retry_after, ..})
//!                └─ CLAIMED     → action(ClaimContext{token, ..}) while a task extends the lease
//!                                  ├─ Ok(payload)                 → Complete(SUCCEEDED) → Once::Ran
//!                                  ├─ Err(Failure::Retryable)     → Release(RETRYABLE)      → Err(Action)
//!                                  ├─ Err(Failure::EffectUnknown) → Release(EFFECT_UNKNOWN) → Err(Action)
//!                                  └─ Err(Failure::Final)         → Complete(FAILED_FINAL)  → Err(Final)
//! ```
//!
//! **In-flight duplicates wait server-side.** The claim asks the server to park it for
//! [`OnceOptions::wait`] (default [`ONCE_WAIT_DEFAULT`]) while someone else holds the key: it
//! returns the stored outcome as soon as the holder completes, claims the key if the holder
//! releases it or its lease lapses, and only when the wait ends returns
//! [`OnceError::InProgress`] with the holder and the time until its lease lapses. No polling.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::types::*;
use crate::DedupClient;
use crate::Error;
use crate::ReleaseReason;

/// The lease is extended every `lease / LEASE_EXTEND_DIVISOR` while the action runs, so two
/// extensions in a row may fail before it lapses.
pub const LEASE_EXTEND_DIVISOR: u32 = 3;
/// The shortest interval between two extensions.
const EXTEND_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// Options of [`DedupClient::once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnceOptions {
    /// Who runs the action (free text, recorded with the claim).
    pub owner: String,
    /// Lease of the claim; it is kept alive while the action runs, so this bounds how long a
    /// crashed runner blocks the key, not how long the action may take.
    pub lease: Duration,
    /// Digest of the action's input: a duplicate with a different one is refused
    /// (`Error::FingerprintMismatch`).
    pub fingerprint: Option<Vec<u8>>,
    /// How long the outcome is kept; `None`: the cluster default (24 h).
    pub retention: Option<Duration>,
    /// Id of this logical call, for retrying `once` itself after a lost claim answer; `None`: a
    /// fresh id per `once` call.
    pub claim_request_id: Option<String>,
    /// How long to wait server-side on an in-flight duplicate (at most 30 s); zero: not at all.
    pub wait: Duration,
}

/// How long `once` waits on an in-flight duplicate by default.
pub const ONCE_WAIT_DEFAULT: Duration = Duration::from_secs(10);

impl OnceOptions {
    pub fn new(owner: impl Into<String>) -> OnceOptions {
        OnceOptions {
            owner: owner.into(),
            lease: LEASE_DEFAULT,
            fingerprint: None,
            retention: None,
            claim_request_id: None,
            wait: ONCE_WAIT_DEFAULT,
        }
    }

    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    pub fn with_fingerprint(mut self, fingerprint: impl Into<Vec<u8>>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    pub fn with_claim_request_id(mut self, id: impl Into<String>) -> Self {
        self.claim_request_id = Some(id.into());
        self
    }
}

/// How an action failed. `?` on the action's own error type `E` makes a `Retryable` failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<E> {
    /// The effect did not happen; the claim is released RETRYABLE and a retry may run at once.
    Retryable(E),
    /// The effect may or may not have happened (a timeout against a foreign system); the claim
    /// is released EFFECT_UNKNOWN and the next claimant sees that in `previous`.
    EffectUnknown(E),
    /// The action failed for good and must not run again: `payload` is stored as a FAILED_FINAL
    /// outcome and replayed to every duplicate.
    Final { payload: Vec<u8>, error: E },
}

impl<E> From<E> for Failure<E> {
    fn from(error: E) -> Self {
        Failure::Retryable(error)
    }
}

impl<E> Failure<E> {
    /// A final failure whose stored outcome is `payload`.
    pub fn final_with(payload: impl Into<Vec<u8>>, error: E) -> Self {
        Failure::Final { payload: payload.into(), error }
    }
}

/// What the action is given: the claim it runs under.
#[derive(Debug)]
pub struct ClaimContext {
    /// The fencing token: pass it to downstream systems that can check it.
    pub token: u64,
    pub attempt: u32,
    /// How the attempt before this one ended, when there was one. If
    /// [`PreviousAttempt::may_have_taken_effect`], reconcile before acting.
    pub previous: Option<PreviousAttempt>,
    lease: watch::Receiver<LeaseState>,
}

#[derive(Debug, Clone)]
struct LeaseState {
    deadline_ms: u64,
    lost: Option<Error>,
}

impl ClaimContext {
    /// The lease deadline (ledger time) as last extended.
    pub fn lease_deadline_ms(&self) -> u64 {
        self.lease.borrow().deadline_ms
    }

    /// Why the lease was lost, once the background extension was refused (FENCED, LEASE_LAPSED,
    /// NOT_CLAIMED): someone else may be running the action. Check before an irreversible step.
    pub fn lease_lost(&self) -> Option<Error> {
        self.lease.borrow().lost.clone()
    }

    /// Resolves when the lease is lost (see [`ClaimContext::lease_lost`]); pending forever
    /// otherwise. Race it against the action's work with `tokio::select!` to stop early.
    pub async fn lease_lost_signal(&self) -> Error {
        let mut lease = self.lease.clone();
        let lost = match lease.wait_for(|state| state.lost.is_some()).await {
            Ok(state) => state.lost.clone(),
            Err(_) => None,
        };
        match lost {
            Some(error) => error,
            // The extender is gone without a verdict: the action has ended; nothing to report.
            None => std::future::pending().await,
        }
    }
}

/// A finished `once`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once {
    /// This call ran the action and stored its outcome.
    Ran { claim: Claimed, outcome: Outcome, ack: CompleteAck },
    /// The key was already completed: the action did not run here; this is the stored outcome
    /// (which may be FAILED_FINAL).
    Duplicate(Completed),
}

impl Once {
    pub fn outcome(&self) -> &Outcome {
        match self {
            Once::Ran { outcome, .. } => outcome,
            Once::Duplicate(completed) => &completed.outcome,
        }
    }

    pub fn is_duplicate(&self) -> bool {
        matches!(self, Once::Duplicate(_))
    }
}

/// Why `once` did not produce an outcome.
#[derive(Debug, thiserror::Error)]
pub enum OnceError<E> {
    /// Someone else holds a live claim on the key. Retry after `retry_after` (the lease lapses
    /// then, unless its holder extends it); `owner` says who holds it.
    #[error("IN_PROGRESS: {} holds the key (attempt {}); retry after {} ms", .0.owner, .0.attempt, .0.retry_after.as_millis())]
    InProgress(InProgress),
    /// The claim itself failed (unavailable, fingerprint mismatch, invalid argument, ...).
    #[error("{0}")]
    Claim(Error),
    /// The action failed; the claim was released with `reason` (or, when `release_error` is
    /// set, could not be, and the key stays blocked until the lease lapses).
    #[error("action failed: {error} (claim released {}{})", reason.as_str_name(), suffix("release failed", release_error))]
    Action { error: E, reason: ReleaseReason, release_error: Option<Error> },
    /// The action failed for good; `outcome` (FAILED_FINAL) was stored, unless `store_error`.
    #[error("action failed for good: {error}{}", suffix("storing FAILED_FINAL failed", store_error))]
    Final { error: E, outcome: Outcome, store_error: Option<Error> },
    /// The action succeeded, so its effect happened, but the outcome could not be recorded
    /// (`error`): a later claim will see the lapsed attempt in `previous` and must reconcile.
    #[error("the action ran but its outcome could not be recorded: {error}")]
    NotRecorded { payload: Vec<u8>, error: Error },
}

fn suffix(what: &str, error: &Option<Error>) -> String {
    match error {
        Some(error) => format!("; {what}: {error}"),
        None => String::new(),
    }
}

/// Releases a claim (EFFECT_UNKNOWN) if `once` is dropped or panics while the action runs, and
/// stops the lease extension in every case.
struct ClaimGuard {
    client: DedupClient,
    namespace: String,
    key: Vec<u8>,
    token: u64,
    armed: bool,
    extender: Option<JoinHandle<()>>,
}

impl ClaimGuard {
    fn stop_extending(&mut self) {
        if let Some(extender) = self.extender.take() {
            extender.abort();
        }
    }

    fn disarm(&mut self) {
        self.stop_extending();
        self.armed = false;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.stop_extending();
        if !self.armed {
            return;
        }
        // Cancelled mid-action: whether the effect happened is unknown.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let request = ReleaseRequest::new(
                std::mem::take(&mut self.namespace),
                std::mem::take(&mut self.key),
                self.token,
                ReleaseReason::EffectUnknown,
            );
            runtime.spawn(async move {
                if let Err(error) = client.release(&request).await {
                    tracing::warn!(token = request.token, %error, "releasing an abandoned claim failed");
                }
            });
        }
    }
}

async fn keep_lease(client: DedupClient, request: ExtendRequest, lease: watch::Sender<LeaseState>) {
    let interval = (request.lease / LEASE_EXTEND_DIVISOR).max(EXTEND_INTERVAL_MIN);
    loop {
        tokio::time::sleep(interval).await;
        match client.extend_lease_within(&request, interval).await {
            Ok(ack) => lease.send_modify(|state| state.deadline_ms = state.deadline_ms.max(ack.lease_deadline_ms)),
            Err(error) if error.is_rejection() || error.code() == tonic::Code::InvalidArgument => {
                tracing::warn!(token = request.token, %error, "lease lost while the action runs");
                lease.send_modify(|state| state.lost = Some(error));
                return;
            }
            // Transient: the lease still has time left; try again at the next tick.
            Err(error) => tracing::debug!(token = request.token, %error, "extending the lease failed; will retry"),
        }
    }
}

impl DedupClient {
    /// Runs `action` at most once to completion for `(namespace, key)`; see the module docs of
    /// [`crate::once`] for every branch.
    ///
    /// While the action runs, a background task extends the lease every third of it and stops
    /// when the action returns. If the extension is refused (someone took the key over), the
    /// action is not cancelled — dropping it mid-effect would be worse — but
    /// [`ClaimContext::lease_lost`] tells it. If the `once` future itself is dropped or the
    /// action panics, the claim is released EFFECT_UNKNOWN in the background.
    ///
    /// An in-flight duplicate is parked server-side for `options.wait`; it returns
    /// [`OnceError::InProgress`] only if the key is still held when the wait ends.
    pub async fn once<F, Fut, E>(
        &self,
        namespace: impl Into<String>,
        key: impl Into<Vec<u8>>,
        options: OnceOptions,
        action: F,
    ) -> Result<Once, OnceError<E>>
    where
        F: FnOnce(ClaimContext) -> Fut,
        Fut: Future<Output = Result<Vec<u8>, Failure<E>>>,
    {
        let namespace = namespace.into();
        let key = key.into();
        let request = ClaimRequest {
            namespace: namespace.clone(),
            key: key.clone(),
            owner: options.owner,
            lease: options.lease,
            fingerprint: options.fingerprint,
            claim_request_id: options.claim_request_id,
            retention: options.retention,
            wait: (!options.wait.is_zero()).then_some(options.wait),
        };
        let claim = match self.check_and_claim(&request).await.map_err(OnceError::Claim)? {
            ClaimAnswer::Completed(completed) => return Ok(Once::Duplicate(completed)),
            ClaimAnswer::InProgress(in_progress) => return Err(OnceError::InProgress(in_progress)),
            ClaimAnswer::Claimed(claim) => claim,
        };

        let (lease_tx, lease_rx) = watch::channel(LeaseState { deadline_ms: claim.lease_deadline_ms, lost: None });
        let extend = ExtendRequest::new(namespace.clone(), key.clone(), claim.token, options.lease);
        let extender = tokio::spawn(keep_lease(self.clone(), extend, lease_tx));
        let mut guard = ClaimGuard {
            client: self.clone(),
            namespace: namespace.clone(),
            key: key.clone(),
            token: claim.token,
            armed: true,
            extender: Some(extender),
        };
        let context = ClaimContext {
            token: claim.token,
            attempt: claim.attempt,
            previous: claim.previous.clone(),
            lease: lease_rx,
        };

        let result = action(context).await;
        guard.disarm();

        let token = claim.token;
        match result {
            Ok(payload) => {
                let outcome = Outcome::succeeded(payload);
                match self.record_outcome(&namespace, &key, token, outcome.clone(), options.retention).await {
                    Ok(ack) => Ok(Once::Ran { claim, outcome, ack }),
                    Err(error) => Err(OnceError::NotRecorded { payload: outcome.payload, error }),
                }
            }
            Err(Failure::Final { payload, error }) => {
                let outcome = Outcome::failed_final(payload);
                let store_error =
                    self.record_outcome(&namespace, &key, token, outcome.clone(), options.retention).await.err();
                Err(OnceError::Final { error, outcome, store_error })
            }
            Err(Failure::Retryable(error)) => {
                Err(self.release_after(error, namespace, key, token, ReleaseReason::Retryable).await)
            }
            Err(Failure::EffectUnknown(error)) => {
                Err(self.release_after(error, namespace, key, token, ReleaseReason::EffectUnknown).await)
            }
        }
    }

    async fn record_outcome(
        &self,
        namespace: &str,
        key: &[u8],
        token: u64,
        outcome: Outcome,
        retention: Option<Duration>,
    ) -> Result<CompleteAck, Error> {
        let request =
            CompleteRequest { namespace: namespace.to_string(), key: key.to_vec(), token, outcome, retention };
        self.complete(&request).await
    }

    async fn release_after<E>(
        &self,
        error: E,
        namespace: String,
        key: Vec<u8>,
        token: u64,
        reason: ReleaseReason,
    ) -> OnceError<E> {
        let release_error = self.release(&ReleaseRequest::new(namespace, key, token, reason)).await.err();
        OnceError::Action { error, reason, release_error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_mark_on_the_action_error_is_a_retryable_failure() {
        fn action() -> Result<Vec<u8>, Failure<std::io::Error>> {
            Err(std::io::Error::other("down"))?;
            Ok(vec![])
        }
        assert!(matches!(action(), Err(Failure::Retryable(_))));
        assert!(
            matches!(Failure::final_with("bad card", "e"), Failure::Final { payload, error: "e" } if payload == b"bad card")
        );
    }

    #[test]
    fn once_errors_say_what_happened() {
        let busy: OnceError<String> = OnceError::InProgress(InProgress {
            owner: "worker-b".into(),
            lease_deadline_ms: 10_000,
            attempt: 1,
            retry_after: Duration::from_millis(2500),
            applied_index: 7,
            ledger_time_ms: 7_500,
        });
        assert_eq!(busy.to_string(), "IN_PROGRESS: worker-b holds the key (attempt 1); retry after 2500 ms");

        let failed: OnceError<String> =
            OnceError::Action { error: "card declined".into(), reason: ReleaseReason::Retryable, release_error: None };
        assert_eq!(failed.to_string(), "action failed: card declined (claim released RETRYABLE)");

        let stuck: OnceError<String> = OnceError::Action {
            error: "x".into(),
            reason: ReleaseReason::EffectUnknown,
            release_error: Some(Error::Timeout { elapsed: Duration::from_secs(15), attempts: 9, last: None }),
        };
        assert_eq!(
            stuck.to_string(),
            "action failed: x (claim released EFFECT_UNKNOWN; release failed: TIMEOUT: no answer after 9 attempt(s) in 15000 ms)"
        );
    }

    #[test]
    fn once_outcome_is_the_same_accessor_for_both_branches() {
        let completed = Completed {
            outcome: Outcome::succeeded("shipped"),
            completed_at_ms: 1,
            token: 2,
            attempt: 1,
            retained_until_ms: 3,
            applied_index: 4,
            ledger_time_ms: 5,
        };
        let once = Once::Duplicate(completed);
        assert!(once.is_duplicate());
        assert_eq!(once.outcome().payload, b"shipped");
    }

    #[tokio::test]
    async fn the_context_reports_a_lost_lease() {
        let (tx, rx) = watch::channel(LeaseState { deadline_ms: 100, lost: None });
        let context = ClaimContext { token: 5, attempt: 1, previous: None, lease: rx };
        assert_eq!(context.lease_lost().map(|e| e.reason().to_string()), None);
        tx.send_modify(|s| s.deadline_ms = 200);
        assert_eq!(context.lease_deadline_ms(), 200);
        let fenced = Error::Fenced { message: "taken over".into(), record: None };
        tx.send_modify(|s| s.lost = Some(fenced));
        let lost = tokio::time::timeout(Duration::from_secs(1), context.lease_lost_signal()).await.unwrap();
        assert_eq!(lost.reason(), "FENCED");
        assert_eq!(context.lease_lost().unwrap().reason(), "FENCED");
    }
}
