//! The signing pipeline's runtime: one relay task per branch, woken when a sale is accepted
//! (and every `poll` anyway, for backoff and for rows another replica gave back), a way for
//! an HTTP request to wait for its sale's phase 3 up to a deadline, and graceful shutdown.
//!
//! A relay task drains its branch as soon as it starts, so after a restart every pending
//! row is sent again, in invoice order, without anyone asking. Branches provisioned while
//! the pipeline runs join it with [`Pipeline::add_relay`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinSet;
use ushuru_store::{
    BranchId, OperationId, OperationRecord, OperationState, SaleId, SaleRecord, SaleStatus, Scope,
    Store, StoreError,
};

use crate::relay::{Relay, Step};

/// A sale that reached a final state (signed, failed, or needing reconciliation), or an
/// operation that did (synced or rejected).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub scope: Scope,
    pub work: Work,
    /// A signed sale as recorded, so that the request waiting for it need not read it.
    pub record: Option<Arc<SaleRecord>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Sale(SaleId),
    Operation(OperationId),
}

/// How a request reaches a branch's relay task.
struct Signals {
    /// Work was accepted (a sale, or an operation with `operations_due` raised).
    waker: Arc<Notify>,
    operations_due: Arc<AtomicBool>,
}

/// Why [`Pipeline::add_relay`] refused a relay.
#[derive(Debug, thiserror::Error)]
pub enum AddRelayError {
    #[error("branch {0} has a relay in this process already")]
    AlreadyServed(i64),
    #[error("the pipeline is shutting down")]
    Stopping,
}

/// The running relays.
pub struct Pipeline {
    store: Store,
    /// Read by every accepted sale, written only when a branch joins: an uncontended read
    /// lock is one atomic operation, and the map is never held across an await.
    signals: RwLock<HashMap<BranchId, Signals>>,
    settled: broadcast::Sender<Settled>,
    stop: watch::Sender<bool>,
    poll: Duration,
    /// The relay tasks. Locked only to add a task or, at shutdown, to take them all.
    tasks: Mutex<JoinSet<()>>,
}

impl Pipeline {
    /// Starts a task for each relay. `poll` bounds how long a branch waits without a wake.
    pub fn start(store: Store, relays: Vec<Relay>, poll: Duration) -> Pipeline {
        let (settled, _) = broadcast::channel(1024);
        let (stop, _) = watch::channel(false);
        let pipeline = Pipeline {
            store,
            signals: RwLock::new(HashMap::new()),
            settled,
            stop,
            poll,
            tasks: Mutex::new(JoinSet::new()),
        };
        for relay in relays {
            let branch = relay.scope().branch;
            // Two relays of one branch in the list: the second is a caller's mistake that
            // would only stand by behind the first, so it is dropped with a warning.
            if let Err(e) = pipeline.add_relay(relay) {
                tracing::warn!(error = %e, branch = branch.0, "relay not started");
            }
        }
        pipeline
    }

    /// Starts the relay of a branch that joined while the pipeline runs (provisioned through
    /// the admin API): from now on [`Pipeline::wake`] reaches it, and [`Pipeline::shutdown`]
    /// stops it with the others. Refused for a branch that has a relay here already (two
    /// relays of one branch in one process would only stand in each other's way) and once
    /// shutdown has begun.
    pub fn add_relay(&self, relay: Relay) -> Result<(), AddRelayError> {
        let branch = relay.scope().branch;
        // The task set's lock orders this against `shutdown`: either the relay is in the
        // set shutdown takes, or shutdown had begun and it is refused.
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        if *self.stop.borrow() {
            return Err(AddRelayError::Stopping);
        }
        let waker = {
            let mut signals = self.signals.write().unwrap_or_else(PoisonError::into_inner);
            if signals.contains_key(&branch) {
                return Err(AddRelayError::AlreadyServed(branch.0));
            }
            let waker = Arc::new(Notify::new());
            signals.insert(
                branch,
                Signals {
                    waker: Arc::clone(&waker),
                    operations_due: relay.operations_signal(),
                },
            );
            waker
        };
        tasks.spawn(run_branch(
            relay,
            waker,
            self.settled.clone(),
            self.stop.subscribe(),
            self.poll,
        ));
        Ok(())
    }

    /// Whether a relay signs for the branch in this process.
    pub fn serves(&self, branch: BranchId) -> bool {
        self.signals
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&branch)
    }

    /// Tells a branch's relay there is work (a sale was accepted).
    pub fn wake(&self, branch: BranchId) {
        if let Some(signals) = self
            .signals
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&branch)
        {
            signals.waker.notify_one();
        }
    }

    /// Tells a branch's relay an operation (stock, item, customer) was queued.
    pub fn wake_operations(&self, branch: BranchId) {
        if let Some(signals) = self
            .signals
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&branch)
        {
            signals.operations_due.store(true, Ordering::Release);
            signals.waker.notify_one();
        }
    }

    /// Waits until the sale is settled or `deadline` passes, and returns it as it then is
    /// (PENDING_SYNC or OUTCOME_UNKNOWN when the deadline won).
    pub async fn wait_for(
        &self,
        scope: Scope,
        sale: SaleId,
        deadline: Duration,
    ) -> Result<SaleRecord, StoreError> {
        // Subscribe before looking, so a settlement between the look and the wait is seen.
        let events = self.settled.subscribe();
        self.wait_with(events, true, scope, sale, deadline).await
    }

    /// Settlements from now on: subscribe before accepting a sale, then
    /// [`Pipeline::wait_for_accepted`], and no settlement can be missed.
    pub fn settlements(&self) -> broadcast::Receiver<Settled> {
        self.settled.subscribe()
    }

    /// [`Pipeline::wait_for`] for a sale accepted after `events` was subscribed: it cannot
    /// have settled unseen, so the first look at the store is saved.
    pub async fn wait_for_accepted(
        &self,
        events: broadcast::Receiver<Settled>,
        scope: Scope,
        sale: SaleId,
        deadline: Duration,
    ) -> Result<SaleRecord, StoreError> {
        self.wait_with(events, false, scope, sale, deadline).await
    }

    async fn wait_with(
        &self,
        mut events: broadcast::Receiver<Settled>,
        mut look: bool,
        scope: Scope,
        sale: SaleId,
        deadline: Duration,
    ) -> Result<SaleRecord, StoreError> {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            if look {
                let record = self
                    .store
                    .sale(scope, sale)
                    .await?
                    .ok_or(StoreError::NotFound("sale"))?;
                if is_final(record.status) {
                    return Ok(record);
                }
            }
            look = true;
            // Other sales' settlements pass by without a look at the store: with many
            // requests waiting, looking on every settlement would cost each settlement a
            // read per waiting request.
            loop {
                match tokio::time::timeout_at(give_up, events.recv()).await {
                    // The deadline: the sale as it is now, not as it was when the wait began.
                    Err(_) => {
                        return self
                            .store
                            .sale(scope, sale)
                            .await?
                            .ok_or(StoreError::NotFound("sale"));
                    }
                    Ok(Ok(event)) if event.work != Work::Sale(sale) => {}
                    // Ours, signed: the relay recorded it just now.
                    Ok(Ok(Settled {
                        record: Some(record),
                        ..
                    })) => return Ok(SaleRecord::clone(&record)),
                    // Ours, or events were missed (lagged): look again.
                    Ok(_) => break,
                }
            }
        }
    }

    /// Waits until the operation is synced or rejected or `deadline` passes, and returns it
    /// as it then is.
    pub async fn wait_for_operation(
        &self,
        scope: Scope,
        operation: OperationId,
        deadline: Duration,
    ) -> Result<OperationRecord, StoreError> {
        let mut events = self.settled.subscribe();
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            let record = self
                .store
                .operation_by_id(scope, operation)
                .await?
                .ok_or(StoreError::NotFound("operation"))?;
            if record.state != OperationState::Pending {
                return Ok(record);
            }
            loop {
                match tokio::time::timeout_at(give_up, events.recv()).await {
                    Err(_) => {
                        return self
                            .store
                            .operation_by_id(scope, operation)
                            .await?
                            .ok_or(StoreError::NotFound("operation"));
                    }
                    // Others' settlements pass by without a look at the store.
                    Ok(Ok(event)) if event.work != Work::Operation(operation) => {}
                    Ok(_) => break,
                }
            }
        }
    }

    /// Stops the relays after the step each is in; no call is cut off halfway. A relay
    /// added afterwards is refused.
    pub async fn shutdown(&self) {
        let mut tasks = {
            let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
            self.stop.send_replace(true);
            std::mem::take(&mut *tasks)
        };
        while tasks.join_next().await.is_some() {}
    }
}

fn is_final(status: SaleStatus) -> bool {
    matches!(
        status,
        SaleStatus::Signed | SaleStatus::Failed | SaleStatus::ReconciliationRequired
    )
}

async fn run_branch(
    relay: Relay,
    waker: Arc<Notify>,
    settled: broadcast::Sender<Settled>,
    mut stop: watch::Receiver<bool>,
    poll: Duration,
) {
    let scope = relay.scope();
    let operations_due = relay.operations_signal();
    loop {
        if *stop.borrow() {
            return;
        }
        match relay.step().await {
            Ok(Step::Idle) => {
                if !wait_for_work(&waker, &operations_due, &mut stop, poll).await {
                    return;
                }
            }
            Ok(Step::Signed { sale, .. }) => {
                let _ = settled.send(Settled {
                    scope,
                    work: Work::Sale(sale),
                    record: relay.take_signed().map(Arc::new),
                });
                // Nothing was ready when the receipt was recorded: a look now would most
                // likely find nothing again, so wait as an idle relay does (a sale accepted
                // since has woken, or will wake, the relay; operations raise their flag).
                if !relay.has_next()
                    && !operations_due.load(Ordering::Acquire)
                    && !wait_for_work(&waker, &operations_due, &mut stop, poll).await
                {
                    return;
                }
            }
            Ok(
                Step::Failed { sale, .. } | Step::Unresolved { sale } | Step::Quarantined { sale },
            ) => {
                let _ = settled.send(Settled {
                    scope,
                    work: Work::Sale(sale),
                    record: None,
                });
            }
            Ok(Step::Operation { operation, .. }) => {
                let _ = settled.send(Settled {
                    scope,
                    work: Work::Operation(operation),
                    record: None,
                });
            }
            // Backing off: the claim says when; the poll brings the relay back then.
            Ok(Step::Retrying { .. } | Step::OperationRetrying { .. }) => {}
            Err(e) => {
                // The store is unreachable or refused: say so, and try again after a poll.
                tracing::error!(error = %e, branch = scope.branch.0, "relay step failed");
                tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// Waits for a wake, the poll or the stop; `false` when stopping. The poll raises the
/// operations flag: operations given back with a backoff, or queued by another replica, are
/// looked for again.
async fn wait_for_work(
    waker: &Notify,
    operations_due: &AtomicBool,
    stop: &mut watch::Receiver<bool>,
    poll: Duration,
) -> bool {
    tokio::select! {
        () = waker.notified() => true,
        () = tokio::time::sleep(poll) => {
            operations_due.store(true, Ordering::Release);
            true
        }
        _ = stop.changed() => false,
    }
}
