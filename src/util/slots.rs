//! A count of slots (client connections per listener, upstream connections per backend) that a
//! reload can resize in place without touching the connections already holding one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::lock;

/// Up to `max` holders at a time; a holder keeps its slot until it drops its permit.
#[derive(Debug)]
pub(crate) struct Slots {
    sem: Arc<Semaphore>,
    /// The current size; only resizes take this lock, never holders.
    max: std::sync::Mutex<usize>,
    /// Slots a shrink still has to take out as holders leave. A growth pays this off first,
    /// so a shrink still in progress never swallows the permits of a later growth.
    owed: Arc<AtomicUsize>,
}

impl Slots {
    pub(crate) fn new(max: usize) -> Slots {
        Slots {
            sem: Arc::new(Semaphore::new(max)),
            max: std::sync::Mutex::new(max),
            owed: Arc::default(),
        }
    }

    /// A slot, waiting for one to free up if all are taken.
    pub(crate) async fn acquire(&self) -> OwnedSemaphorePermit {
        self.sem
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// A slot if one is free now.
    pub(crate) fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_owned().ok()
    }

    /// Free slots right now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Change the size. Growing takes effect at once; shrinking as soon as enough holders have
    /// left (holders are never cut for it). Needs a tokio runtime when it shrinks below what is
    /// held: a task collects the rest as holders leave.
    pub(crate) fn resize(&self, max: usize) {
        let mut current = lock(&self.max);
        if max > *current {
            let mut grow = max - *current;
            // Cancel what a pending shrink has not taken yet, then add the rest.
            let _ = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                    Some(owed - owed.min(grow))
                })
                .map(|owed| grow -= owed.min(grow));
            self.sem.add_permits(grow);
        } else if max < *current {
            let excess = *current - max;
            let forgotten = self.sem.forget_permits(excess);
            let still = excess - forgotten;
            if still > 0 && self.owed.fetch_add(still, Ordering::AcqRel) == 0 {
                // Take the rest one slot at a time as holders leave.
                let (sem, owed) = (self.sem.clone(), self.owed.clone());
                tokio::spawn(async move {
                    while owed.load(Ordering::Acquire) > 0 {
                        let Ok(permit) = sem.clone().acquire_owned().await else {
                            return;
                        };
                        let took = owed
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1))
                            .is_ok();
                        if took {
                            permit.forget();
                        } // else: a growth cancelled the debt meanwhile; the permit goes back
                    }
                });
            }
        }
        *current = max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn shrinks_and_grows_in_place() {
        let s = Slots::new(4);
        s.resize(2);
        assert_eq!(s.available(), 2);
        s.resize(5);
        assert_eq!(s.available(), 5);
    }

    #[tokio::test]
    async fn a_shrink_waiting_for_busy_slots_does_not_eat_a_later_growth() {
        let s = Slots::new(4);
        // All four slots busy, as if four clients were connected.
        let busy = s.sem.clone().acquire_many_owned(4).await.unwrap();
        s.resize(2); // owes 2, taken as holders leave
        s.resize(4); // back to 4 before any left: the debt is cancelled
        drop(busy);
        settle().await;
        assert_eq!(s.available(), 4);

        let busy = s.sem.clone().acquire_many_owned(4).await.unwrap();
        s.resize(1); // owes 3
        drop(busy);
        settle().await;
        assert_eq!(s.available(), 1, "the debt was collected as slots freed");
    }
}
