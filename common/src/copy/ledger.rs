//! Which blobs are present in, or on their way to, which repository.
//!
//! Concurrent re-links of one blob into one repository corrupt distribution
//! 2.8's link files (manifests then fail with `MANIFEST_BLOB_UNKNOWN`), and
//! moving a base layer once per tag wastes the fleet's bandwidth. So every
//! upload or mount is claimed here first: one task does it, the others wait
//! for its outcome, and a blob known present is never written again. Child
//! manifests, pushed by digest, are claimed the same way (`copy::tree`): a
//! manifest is stored as a blob too, and tags of one image copied at once
//! into one repository would otherwise PUT each child once per tag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::oci::digest::Digest;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey {
    pub registry: String,
    pub repository: String,
    pub digest: Digest,
}

#[derive(Debug)]
enum Slot {
    Present,
    InFlight(watch::Receiver<Option<bool>>),
}

#[derive(Debug, Default, Clone)]
pub struct Ledger {
    slots: Arc<Mutex<HashMap<BlobKey, Slot>>>,
}

/// The outcome of a claim.
#[derive(Debug)]
pub enum Claim {
    /// Known present; nothing to do.
    Present,
    /// Another task is writing it; wait and claim again.
    Wait(Waiter),
    /// Ours to write; complete the guard on success.
    Mine(Guard),
}

#[derive(Debug)]
pub struct Waiter(watch::Receiver<Option<bool>>);

impl Waiter {
    /// True when the other task succeeded.
    pub async fn wait(mut self) -> bool {
        match self.0.wait_for(|v| v.is_some()).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        }
    }
}

/// Held while writing a blob; dropping it without [`Guard::complete`] releases
/// the claim so a waiter can try itself.
#[derive(Debug)]
pub struct Guard {
    key: BlobKey,
    slots: Arc<Mutex<HashMap<BlobKey, Slot>>>,
    tx: watch::Sender<Option<bool>>,
    done: bool,
}

impl Guard {
    pub fn complete(mut self) {
        self.done = true;
        lock(&self.slots).insert(self.key.clone(), Slot::Present);
        let _ = self.tx.send(Some(true));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.slots).remove(&self.key);
            let _ = self.tx.send(Some(false));
        }
    }
}

fn lock(m: &Mutex<HashMap<BlobKey, Slot>>) -> std::sync::MutexGuard<'_, HashMap<BlobKey, Slot>> {
    // A panic elsewhere cannot leave the map half-updated: every change is one insert or remove.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ledger {
    pub fn claim(&self, key: BlobKey) -> Claim {
        let mut slots = lock(&self.slots);
        match slots.get(&key) {
            Some(Slot::Present) => Claim::Present,
            Some(Slot::InFlight(rx)) => Claim::Wait(Waiter(rx.clone())),
            None => {
                let (tx, rx) = watch::channel(None);
                slots.insert(key.clone(), Slot::InFlight(rx));
                Claim::Mine(Guard {
                    key,
                    slots: self.slots.clone(),
                    tx,
                    done: false,
                })
            }
        }
    }

    /// Claim `key`, waiting out another task's write: `None` when the blob
    /// is (or has just been made) present, else the guard to write it under.
    pub async fn acquire(&self, key: BlobKey) -> Option<Guard> {
        loop {
            match self.claim(key.clone()) {
                Claim::Present => return None,
                Claim::Wait(w) => {
                    if w.wait().await {
                        return None;
                    }
                }
                Claim::Mine(g) => return Some(g),
            }
        }
    }

    /// Forget that a blob is present (a registry said otherwise).
    pub fn forget(&self, key: &BlobKey) {
        let mut slots = lock(&self.slots);
        if matches!(slots.get(key), Some(Slot::Present)) {
            slots.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BlobKey {
        BlobKey {
            registry: "r".into(),
            repository: "a".into(),
            digest: Digest::sha256_of(b"x"),
        }
    }

    #[tokio::test]
    async fn one_writer_others_wait() {
        let l = Ledger::default();
        let Claim::Mine(g) = l.claim(key()) else {
            panic!("first claim is not ours")
        };
        let Claim::Wait(w) = l.claim(key()) else {
            panic!("second claim does not wait")
        };
        let waiting = tokio::spawn(w.wait());
        g.complete();
        assert!(waiting.await.unwrap());
        assert!(matches!(l.claim(key()), Claim::Present));
        l.forget(&key());
        assert!(matches!(l.claim(key()), Claim::Mine(_)));
    }

    #[tokio::test]
    async fn dropped_claim_lets_a_waiter_retry() {
        let l = Ledger::default();
        let Claim::Mine(g) = l.claim(key()) else {
            panic!()
        };
        let Claim::Wait(w) = l.claim(key()) else {
            panic!()
        };
        drop(g);
        assert!(!w.wait().await);
        assert!(matches!(l.claim(key()), Claim::Mine(_)));
    }
}
