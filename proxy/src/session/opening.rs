//! The budget of connections that have not yet sent their startup packet, kept apart from
//! the sessions' budget: a crowd of silent sockets must not keep real clients out. When the
//! budget is full, a new connection closes the oldest one still waiting (it had the longest
//! time to speak), so a client that sends its startup packet promptly always gets in.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// The connections still opening, oldest first.
pub struct OpeningSlots {
    max: usize,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    next: u64,
    by_age: BTreeMap<u64, CancellationToken>,
}

/// One connection's place in [`OpeningSlots`]; leaves it when dropped.
pub struct OpeningSlot<'a> {
    slots: &'a OpeningSlots,
    id: u64,
    /// Cancelled when a newer connection needs the place.
    pub evicted: CancellationToken,
}

impl OpeningSlots {
    /// A budget of `max` (at least 1) opening connections.
    pub fn new(max: usize) -> Self {
        OpeningSlots {
            max: max.max(1),
            waiting: Mutex::new(Waiting::default()),
        }
    }

    /// Takes a place, closing the oldest opening connection when all are taken.
    pub fn enter(&self) -> OpeningSlot<'_> {
        let evicted = CancellationToken::new();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        while waiting.by_age.len() >= self.max {
            match waiting.by_age.pop_first() {
                Some((_, oldest)) => oldest.cancel(),
                None => break,
            }
        }
        let id = waiting.next;
        waiting.next += 1;
        waiting.by_age.insert(id, evicted.clone());
        OpeningSlot {
            slots: self,
            id,
            evicted,
        }
    }

    /// Connections opening now.
    pub fn len(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_age
            .len()
    }

    /// True when no connection is opening.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for OpeningSlot<'_> {
    fn drop(&mut self) {
        let mut waiting = self.slots.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.by_age.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_makes_room_and_leaving_frees_a_place() {
        let slots = OpeningSlots::new(2);
        let a = slots.enter();
        let b = slots.enter();
        assert!(!a.evicted.is_cancelled());
        let c = slots.enter();
        assert!(a.evicted.is_cancelled(), "the oldest is closed");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        assert_eq!(slots.len(), 2);
        drop(b);
        let d = slots.enter();
        assert!(!c.evicted.is_cancelled() && !d.evicted.is_cancelled());
        drop(a);
        assert_eq!(
            slots.len(),
            2,
            "an evicted slot leaving frees nothing twice"
        );
    }
}
