//! The node task's sessions, with their timers in a heap: finding the next deadline and the
//! sessions due costs O(log n) per change instead of a scan of every session per event, so
//! ten thousand sessions in flight cost what two hundred do.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use musig2_proto::SessionId;

use crate::machine::SessionMachine;

/// Sessions by id. Every mutable access marks the session so its deadline is rescheduled
/// before the next question about deadlines; the heap may hold stale entries, which are
/// skipped (an entry counts only while it matches `scheduled`).
#[derive(Default)]
pub(crate) struct SessionTable {
    /// Boxed: a machine is a few KiB, and the map moves its values when it grows.
    sessions: HashMap<SessionId, Box<SessionMachine>>,
    timers: BinaryHeap<Reverse<(u64, SessionId)>>,
    /// The deadline each session has in `timers` (the live entry).
    scheduled: HashMap<SessionId, u64>,
    /// Sessions changed since their deadline was last read.
    touched: Vec<SessionId>,
}

impl SessionTable {
    pub(crate) fn get(&self, id: &SessionId) -> Option<&SessionMachine> {
        self.sessions.get(id).map(|m| &**m)
    }

    pub(crate) fn get_mut(&mut self, id: &SessionId) -> Option<&mut SessionMachine> {
        let machine = self.sessions.get_mut(id)?;
        self.touched.push(*id);
        Some(&mut **machine)
    }

    pub(crate) fn insert(&mut self, id: SessionId, machine: SessionMachine) {
        self.touched.push(id);
        self.sessions.insert(id, Box::new(machine));
    }

    pub(crate) fn remove(&mut self, id: &SessionId) -> Option<Box<SessionMachine>> {
        self.scheduled.remove(id);
        self.sessions.remove(id)
    }

    pub(crate) fn contains_key(&self, id: &SessionId) -> bool {
        self.sessions.contains_key(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &SessionMachine> {
        self.sessions.values().map(|m| &**m)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&SessionId, &SessionMachine)> {
        self.sessions.iter().map(|(id, m)| (id, &**m))
    }

    /// Reschedules the sessions changed since the last call.
    fn reschedule(&mut self) {
        // Taken and given back, so the buffer is not allocated anew on every event.
        let mut touched = std::mem::take(&mut self.touched);
        for id in touched.drain(..) {
            let deadline = self.sessions.get(&id).and_then(|m| m.next_deadline());
            match deadline {
                Some(d) if self.scheduled.get(&id) != Some(&d) => {
                    self.scheduled.insert(id, d);
                    self.timers.push(Reverse((d, id)));
                }
                Some(_) => {}
                None => {
                    self.scheduled.remove(&id);
                }
            }
        }
        self.touched = touched;
        // Stale entries are dropped as they surface; keep the heap from outgrowing the live
        // ones by much when deadlines move often without surfacing.
        if self.timers.len() > 2 * self.scheduled.len() + 64 {
            self.timers = self
                .scheduled
                .iter()
                .map(|(id, d)| Reverse((*d, *id)))
                .collect();
        }
    }

    /// Drops stale entries at the top of the heap.
    fn skip_stale(&mut self) {
        while let Some(Reverse((d, id))) = self.timers.peek() {
            if self.scheduled.get(id) == Some(d) {
                return;
            }
            self.timers.pop();
        }
    }

    /// The earliest deadline of any session.
    pub(crate) fn next_deadline(&mut self) -> Option<u64> {
        self.reschedule();
        self.skip_stale();
        self.timers.peek().map(|Reverse((d, _))| *d)
    }

    /// The sessions whose deadline is at or before `now`, earliest first; each leaves the
    /// schedule until it is touched again (ticking it does).
    pub(crate) fn due(&mut self, now: u64) -> Vec<SessionId> {
        self.reschedule();
        let mut due = Vec::new();
        loop {
            self.skip_stale();
            match self.timers.peek() {
                Some(Reverse((d, id))) if *d <= now => {
                    due.push(*id);
                    self.scheduled.remove(id);
                    self.timers.pop();
                }
                _ => return due,
            }
        }
    }
}
