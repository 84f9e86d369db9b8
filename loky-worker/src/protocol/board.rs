//! The board: one page of shared memory per worker, written by both sides
//! with atomic operations, so that the parent and the worker agree on which
//! calls started without a message per call.
//!
//! Layout (every field a little-endian `u64` word):
//!
//! ```text
//! word 0 .. SLOTS            claim words, one per call in flight: seq << 2 | state
//! word SLOTS + CHUNK_SEQ      the chunk whose progress follows (its seq + 1; 0: none)
//! word SLOTS + CHUNK_STARTED  elements of that chunk started so far
//! word SLOTS + ARENA_FIRST    index of the first element whose outcome is in the arena
//! word SLOTS + ARENA_COUNT    outcomes in the arena (published last)
//! word SLOTS + ARENA_BYTES    bytes of the arena in use
//! word SLOTS + OUTBOX_BYTES   bytes of the outbox in use
//! word SLOTS + SENT           `Calls` messages the parent has sent (the doorbell)
//! word SLOTS + WATCH          the call whose outcome a caller watches for: seq << 2 | stage
//! word SLOTS + CALLER_CPU     the CPU that caller last watched from, plus one (0: none yet)
//! word SLOTS + BOX_SHUT       1 once the reply box is closed for good (`close_box`)
//! byte HEADER ..              the arena: encoded `ChunkItem`s, one after the other
//! byte HEADER + ARENA ..      the outbox: encoded `SettledCall`s, one after the other
//! byte HEADER + ARENA + OUTBOX .. the reply box: a length word, then one encoded `SettledCall`
//! ```
//!
//! **Claims.** The parent writes `seq, QUEUED` into slot `seq % SLOTS`
//! before it sends call `seq`. Before running it, the worker moves the word
//! from `seq, QUEUED` to `seq, STARTED`; the parent takes a call back (to
//! cancel it or give it to an idle worker) by moving the same word from
//! `seq, QUEUED` to `seq, REVOKED`. Both are compare-and-swaps on one word:
//! exactly one side wins, so a call that was taken back never starts and a
//! call that started is known to have started. A worker that finds any
//! other word in the slot (revoked, or reused for a later call after a
//! revocation) skips the call without a reply.
//!
//! **Chunks.** A worker running a chunk counts the elements it starts and
//! appends each element's encoded outcome to the arena; when the arena is
//! full it sends what it holds as a `FromWorker::Items` message first. So
//! when a worker dies in a chunk, the parent reads, from memory that
//! outlives the process, which element was running and the outcomes of
//! those that finished.
//!
//! **Doorbell.** The parent counts the `Calls` messages it has sent to the
//! worker, after sending each. A worker with nothing to run compares the
//! count with the messages it received, without a system call, while it
//! spins before sleeping (`crate::spin`). It is a hint, never a claim: the
//! socket still carries every call.
//!
//! **Reply box.** A caller waiting for a single call's outcome may watch
//! for it here instead of waiting for the parent's results thread to pass it
//! on: one thread hand-off fewer. It moves `WATCH` from 0 to `seq,
//! WATCHING`. A worker that finishes call `seq` while it is watched writes
//! the outcome into the box, then moves the word to `seq, READY` (instead
//! of sending it). Whoever moves it from `seq, READY` to `seq, TAKEN`
//! delivers the outcome: the caller, or when the worker died the parent's
//! manager; a taker that is done moves it back to 0. A caller that stops
//! watching moves the word from `seq, WATCHING` back to 0; if that fails,
//! the outcome is in the box. Each move is a compare-and-swap, so exactly
//! one side delivers, and the box is written only while watched, when no
//! one reads it.
//!
//! **Held-back outcomes.** A worker holds the outcomes of single calls back
//! briefly, to send many in one message (`loky-worker/src/batch.rs`); it
//! keeps them in the outbox meanwhile, so when it dies the parent reads
//! them there: a call whose outcome is in the outbox finished.

use ipc_channel::ipc::IpcSharedMemory;
use std::sync::atomic::{AtomicU64, Ordering};

/// Claim slots: at most this many calls are in flight on one worker.
pub const SLOTS: usize = 256;
const CHUNK_SEQ: usize = SLOTS;
const CHUNK_STARTED: usize = SLOTS + 1;
const ARENA_FIRST: usize = SLOTS + 2;
const ARENA_COUNT: usize = SLOTS + 3;
const ARENA_BYTES: usize = SLOTS + 4;
const OUTBOX_BYTES: usize = SLOTS + 5;
const SENT: usize = SLOTS + 6;
const WATCH: usize = SLOTS + 7;
const CALLER_CPU: usize = SLOTS + 8;
const BOX_SHUT: usize = SLOTS + 9;
/// Bytes before the arena.
const HEADER: usize = (SLOTS + 10) * 8;
/// Bytes of chunk outcomes the arena holds before a flush.
pub const ARENA: usize = 64 * 1024;
/// Bytes of held-back outcomes the outbox holds before they are sent.
const OUTBOX: usize = 64 * 1024;
/// Bytes of the reply box, its length word included.
const REPLY_BOX: usize = 4096;
/// Where the reply box starts.
const REPLY_AT: usize = HEADER + ARENA + OUTBOX;
/// The board's size in bytes.
pub const BOARD_BYTES: usize = REPLY_AT + REPLY_BOX;

/// `WATCH` once the box is closed: no stage, and no call's number.
const CLOSED: u64 = !3;
const WATCHING: u64 = 1;
const READY: u64 = 2;
const TAKEN: u64 = 3;

const QUEUED: u64 = 1;
const STARTED: u64 = 2;
const REVOKED: u64 = 3;

/// Where a call stands, as the board says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Sent, not started: it can still be taken back.
    Queued,
    /// The worker started it.
    Started,
    /// Taken back: it never runs.
    Revoked,
    /// The slot holds another call: this one was resolved long ago.
    Gone,
}

/// The progress of the chunk a dead worker was running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkProgress {
    /// Elements started.
    pub started: u64,
    /// Index of the first outcome in `items`.
    pub first: u64,
    /// How many outcomes `items` holds.
    pub count: u64,
    /// Encoded `ChunkItem`s, one after the other.
    pub items: Vec<u8>,
}

/// One worker's board, mapped in this process.
pub struct Board {
    /// Keeps the mapping alive.
    memory: IpcSharedMemory,
    /// The mapping, writable: every access goes through atomics, or (the
    /// arena) is ordered by them.
    base: *mut u8,
}

// SAFETY: the mapping lives as long as `memory`; the words are only
// accessed through atomics, and the arena only by the worker while it is
// alive and by the parent after it died.
unsafe impl Send for Board {}
// SAFETY: as above.
unsafe impl Sync for Board {}

impl Board {
    /// A fresh board, all zeros. Fails when the OS refuses shared memory
    /// (ipc-channel panics then).
    pub fn new() -> Result<Board, String> {
        let memory = std::panic::catch_unwind(|| IpcSharedMemory::from_byte(0, BOARD_BYTES))
            .map_err(|payload| crate::panic::payload_message(&*payload))?;
        Board::from_shared(memory)
    }

    /// The board received from the parent.
    pub fn from_shared(mut memory: IpcSharedMemory) -> Result<Board, String> {
        if memory.len() != BOARD_BYTES {
            return Err(format!(
                "a board of {} bytes, expected {BOARD_BYTES}",
                memory.len()
            ));
        }
        // SAFETY: nothing else in this process reads or writes this mapping
        // except through `base`, with atomics.
        let base = unsafe { memory.deref_mut() }.as_mut_ptr();
        if !(base as usize).is_multiple_of(8) {
            return Err("a misaligned board".to_owned());
        }
        Ok(Board { memory, base })
    }

    /// A handle to the same memory, to send to the worker.
    pub fn share(&self) -> IpcSharedMemory {
        self.memory.clone()
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        debug_assert!(index * 8 < HEADER);
        // SAFETY: in bounds (the header is part of the mapping), aligned
        // (checked when built), and only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(self.base.add(index * 8).cast()) }
    }

    fn slot(&self, seq: u64) -> &AtomicU64 {
        self.word((seq % SLOTS as u64) as usize)
    }

    /// Parent: call `seq` is about to be sent.
    pub fn queue(&self, seq: u64) {
        self.slot(seq).store(seq << 2 | QUEUED, Ordering::Release);
    }

    /// Parent: one more `Calls` message was sent.
    pub fn ring(&self) {
        self.word(SENT).fetch_add(1, Ordering::Release);
    }

    /// Worker: how many `Calls` messages the parent has sent.
    pub fn rung(&self) -> u64 {
        self.word(SENT).load(Ordering::Acquire)
    }

    /// Parent: a caller on CPU `cpu` watches for call `seq`'s outcome in
    /// the reply box; false if another call is watched.
    pub fn watch(&self, seq: u64, cpu: usize) -> bool {
        let watching = self.move_watch(0, seq << 2 | WATCHING).is_ok();
        if watching {
            // An unknown CPU (`usize::MAX`) wraps to 0: none.
            let word = (cpu as u64).wrapping_add(1);
            self.word(CALLER_CPU).store(word, Ordering::Relaxed);
        }
        watching
    }

    /// Worker: the CPU its last watching caller watched from, if any.
    pub fn caller_cpu(&self) -> Option<usize> {
        let cpu = self.word(CALLER_CPU).load(Ordering::Relaxed);
        usize::try_from(cpu.checked_sub(1)?).ok()
    }

    /// Moves `WATCH` from `from` to `to`, if it holds `from`; `Err` with
    /// what it holds otherwise.
    fn move_watch(&self, from: u64, to: u64) -> Result<u64, u64> {
        self.word(WATCH)
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
    }

    /// Parent: the caller stops watching for call `seq`; false if the
    /// outcome is in the box (or being delivered) already.
    pub fn unwatch(&self, seq: u64) -> bool {
        match self.move_watch(seq << 2 | WATCHING, 0) {
            Ok(_) => true,
            Err(other) => other >> 2 != seq,
        }
    }

    /// Parent: whether call `seq`'s outcome waits in the box.
    pub fn reply_ready(&self, seq: u64) -> bool {
        self.word(WATCH).load(Ordering::Acquire) == seq << 2 | READY
    }

    /// Parent: whether someone took call `seq`'s outcome out of the box
    /// and is delivering it.
    pub fn reply_taken(&self, seq: u64) -> bool {
        self.word(WATCH).load(Ordering::Acquire) == seq << 2 | TAKEN
    }

    /// Parent: takes call `seq`'s encoded outcome (a [`SettledCall`](super::SettledCall)
    /// record) out of the box, if it is there and nobody took it; the taker
    /// delivers it, then calls [`reply_delivered`](Self::reply_delivered).
    pub fn take_reply(&self, seq: u64) -> Option<Vec<u8>> {
        self.move_watch(seq << 2 | READY, seq << 2 | TAKEN).ok()?;
        // SAFETY: the worker wrote the record before `READY`, and writes the
        // box again only once it is watched anew, after `reply_delivered`.
        Some(unsafe { self.box_record() })
    }

    /// Parent (a backend whose dead workers live on as threads): no
    /// outcome goes through the box any more, as when the worker is dead.
    /// An outcome in it already stays there.
    pub fn close_box(&self) {
        // For good: a box its caller is delivering from now goes back to
        // free, and is never answered into again.
        self.word(BOX_SHUT).store(1, Ordering::Release);
        let mut current = self.word(WATCH).load(Ordering::Acquire);
        while !matches!(current & 3, READY | TAKEN) {
            match self.move_watch(current, CLOSED) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    /// Parent, once the worker is dead: the outcome in the box, if one is
    /// waiting there or a caller is delivering it (delivering it twice is
    /// harmless: a future is settled once).
    pub fn dead_reply(&self) -> Option<Vec<u8>> {
        let word = self.word(WATCH).load(Ordering::Acquire);
        if !matches!(word & 3, READY | TAKEN) {
            return None;
        }
        // SAFETY: as in `take_reply`; the worker, the only writer, is dead.
        unsafe { Some(self.box_record()) }
    }

    /// The record in the box.
    ///
    /// # Safety
    ///
    /// The box must hold a complete record that nobody writes meanwhile:
    /// `WATCH` says `READY` or `TAKEN`, and the worker is dead or only
    /// writes it once watched anew.
    unsafe fn box_record(&self) -> Vec<u8> {
        let at = REPLY_AT;
        // SAFETY: the length word and the record lie within the mapping
        // (the length is bounded); the caller vouches for the rest.
        unsafe {
            let len = (*self.base.add(at).cast::<u64>()).min((REPLY_BOX - 8) as u64) as usize;
            std::slice::from_raw_parts(self.base.add(at + 8), len).to_vec()
        }
    }

    /// Parent: call `seq`'s outcome, taken from the box, is delivered.
    pub fn reply_delivered(&self, seq: u64) {
        let _ = self.move_watch(seq << 2 | TAKEN, 0);
    }

    /// Worker: whether a caller watches for call `seq`'s outcome.
    pub fn watched(&self, seq: u64) -> bool {
        self.word(WATCH).load(Ordering::Acquire) == seq << 2 | WATCHING
    }

    /// Worker: puts `record`, call `seq`'s encoded outcome, in the box for
    /// the caller watching for it; false if it does not fit or nobody
    /// watches any more (then it must be sent).
    pub fn reply(&self, seq: u64, record: &[u8]) -> bool {
        if record.len() > REPLY_BOX - 8
            || !self.watched(seq)
            || self.word(BOX_SHUT).load(Ordering::Acquire) != 0
        {
            return false;
        }
        let at = REPLY_AT;
        // SAFETY: within the mapping (checked above). While `seq` is
        // watched nobody reads the box: the last taker was done before
        // the word went back to 0.
        unsafe {
            std::ptr::copy_nonoverlapping(record.as_ptr(), self.base.add(at + 8), record.len());
            *self.base.add(at).cast::<u64>() = record.len() as u64;
        }
        self.move_watch(seq << 2 | WATCHING, seq << 2 | READY)
            .is_ok()
    }

    /// Worker: starts call `seq` if it was not taken back.
    pub fn claim(&self, seq: u64) -> bool {
        self.swap(seq, STARTED)
    }

    /// Parent: takes call `seq` back if it has not started.
    pub fn revoke(&self, seq: u64) -> bool {
        self.swap(seq, REVOKED)
    }

    fn swap(&self, seq: u64, to: u64) -> bool {
        self.slot(seq)
            .compare_exchange(
                seq << 2 | QUEUED,
                seq << 2 | to,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Where call `seq` stands.
    pub fn state(&self, seq: u64) -> Claim {
        let word = self.slot(seq).load(Ordering::Acquire);
        if word >> 2 != seq {
            return Claim::Gone;
        }
        match word & 3 {
            QUEUED => Claim::Queued,
            STARTED => Claim::Started,
            REVOKED => Claim::Revoked,
            _ => Claim::Gone,
        }
    }

    /// Worker: chunk `seq` starts; the arena is empty.
    pub fn chunk_begin(&self, seq: u64) {
        self.word(CHUNK_STARTED).store(0, Ordering::Relaxed);
        self.word(ARENA_FIRST).store(0, Ordering::Relaxed);
        self.word(ARENA_BYTES).store(0, Ordering::Relaxed);
        self.word(ARENA_COUNT).store(0, Ordering::Relaxed);
        self.word(CHUNK_SEQ).store(seq + 1, Ordering::Release);
    }

    /// Worker: element `index` of the current chunk starts.
    #[inline]
    pub fn element_started(&self, index: u64) {
        self.word(CHUNK_STARTED).store(index + 1, Ordering::Release);
    }

    /// Worker: appends one encoded outcome; false if it does not fit.
    #[inline]
    pub fn arena_push(&self, item: &[u8]) -> bool {
        let used = self.word(ARENA_BYTES).load(Ordering::Relaxed) as usize;
        if item.len() > ARENA - used {
            return false;
        }
        // SAFETY: `HEADER + used .. + item.len()` lies within the mapping
        // (checked above); only this worker writes the arena, and the
        // parent reads it only after this process is dead.
        unsafe {
            std::ptr::copy_nonoverlapping(item.as_ptr(), self.base.add(HEADER + used), item.len());
        }
        self.word(ARENA_BYTES)
            .store((used + item.len()) as u64, Ordering::Release);
        self.word(ARENA_COUNT).fetch_add(1, Ordering::Release);
        true
    }

    /// Worker: the outcomes in the arena, as (first index, count, bytes).
    pub fn arena_items(&self) -> (u64, u64, Vec<u8>) {
        let first = self.word(ARENA_FIRST).load(Ordering::Relaxed);
        let count = self.word(ARENA_COUNT).load(Ordering::Acquire);
        (first, count, self.arena_bytes())
    }

    fn arena_bytes(&self) -> Vec<u8> {
        let used = (self.word(ARENA_BYTES).load(Ordering::Acquire) as usize).min(ARENA);
        // SAFETY: within the mapping; no one writes the arena concurrently
        // (the worker reads its own writes, the parent reads a dead
        // worker's).
        unsafe { std::slice::from_raw_parts(self.base.add(HEADER), used) }.to_vec()
    }

    /// Worker: the arena was delivered; the next outcome has index `next`.
    pub fn arena_reset(&self, next: u64) {
        self.word(ARENA_COUNT).store(0, Ordering::Release);
        self.word(ARENA_BYTES).store(0, Ordering::Release);
        self.word(ARENA_FIRST).store(next, Ordering::Release);
    }

    /// Worker: appends one encoded held-back outcome; false if it does
    /// not fit.
    pub fn outbox_push(&self, record: &[u8]) -> bool {
        let used = self.word(OUTBOX_BYTES).load(Ordering::Relaxed) as usize;
        if record.len() > OUTBOX - used {
            return false;
        }
        // SAFETY: `HEADER + ARENA + used .. + record.len()` lies within the
        // mapping (checked above); only this worker writes the outbox, and
        // the parent reads it only after this process is dead.
        unsafe {
            let at = self.base.add(HEADER + ARENA + used);
            std::ptr::copy_nonoverlapping(record.as_ptr(), at, record.len());
        }
        self.word(OUTBOX_BYTES)
            .store((used + record.len()) as u64, Ordering::Release);
        true
    }

    /// The held-back outcomes (the worker's to send, or a dead worker's).
    pub fn outbox_records(&self) -> Vec<u8> {
        let used = (self.word(OUTBOX_BYTES).load(Ordering::Acquire) as usize).min(OUTBOX);
        // SAFETY: within the mapping; written only by the worker, which
        // reads its own writes, or is dead when the parent reads.
        unsafe { std::slice::from_raw_parts(self.base.add(HEADER + ARENA), used) }.to_vec()
    }

    /// Worker: the outbox was sent.
    pub fn outbox_reset(&self) {
        self.word(OUTBOX_BYTES).store(0, Ordering::Release);
    }

    /// Parent, once the worker is dead: the progress of chunk `seq`, if
    /// it was the last chunk the worker began.
    pub fn chunk_progress(&self, seq: u64) -> Option<ChunkProgress> {
        if self.word(CHUNK_SEQ).load(Ordering::Acquire) != seq + 1 {
            return None;
        }
        let started = self.word(CHUNK_STARTED).load(Ordering::Acquire);
        let (first, count, items) = self.arena_items();
        Some(ChunkProgress {
            started,
            first,
            count,
            items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_side_wins_a_claim() {
        let board = Board::new().unwrap();
        board.queue(7);
        assert_eq!(board.state(7), Claim::Queued);
        assert!(board.claim(7));
        assert!(!board.revoke(7));
        assert_eq!(board.state(7), Claim::Started);
        board.queue(8);
        assert!(board.revoke(8));
        assert!(!board.claim(8));
        assert_eq!(board.state(8), Claim::Revoked);
    }

    #[test]
    fn a_reused_slot_is_not_the_old_call() {
        let board = Board::new().unwrap();
        board.queue(3);
        assert!(board.revoke(3));
        board.queue(3 + SLOTS as u64);
        assert_eq!(board.state(3), Claim::Gone);
        assert!(!board.claim(3), "the worker skips the revoked call");
        assert!(board.claim(3 + SLOTS as u64));
    }

    #[test]
    fn both_mappings_see_the_same_words() {
        let parent = Board::new().unwrap();
        let worker = Board::from_shared(parent.share()).unwrap();
        parent.queue(1);
        assert!(worker.claim(1));
        assert_eq!(parent.state(1), Claim::Started);
        worker.chunk_begin(1);
        worker.element_started(0);
        assert!(worker.arena_push(b"abc"));
        worker.element_started(1);
        let progress = parent.chunk_progress(1).unwrap();
        assert_eq!(
            progress,
            ChunkProgress {
                started: 2,
                first: 0,
                count: 1,
                items: b"abc".to_vec()
            }
        );
        assert_eq!(parent.chunk_progress(0), None);
        assert_eq!(worker.rung(), 0);
        parent.ring();
        parent.ring();
        assert_eq!(worker.rung(), 2);
    }

    #[test]
    fn a_reply_in_the_box_is_delivered_once() {
        let parent = Board::new().unwrap();
        let worker = Board::from_shared(parent.share()).unwrap();
        // Nobody watches: the worker sends its outcome instead.
        assert!(!worker.reply(7, b"seven"));
        assert_eq!(worker.caller_cpu(), None);
        // Watched, answered: the caller cannot stop watching, and takes it.
        assert!(parent.watch(7, 0));
        assert_eq!(worker.caller_cpu(), Some(0));
        assert!(!parent.watch(8, 1), "one call is watched at a time");
        assert_eq!(worker.caller_cpu(), Some(0));
        assert!(worker.watched(7) && !worker.watched(8));
        assert!(!worker.reply(7, &[0; REPLY_BOX]), "too large for the box");
        assert!(worker.reply(7, b"seven"));
        assert!(parent.reply_ready(7) && !parent.unwatch(7));
        assert_eq!(parent.dead_reply().as_deref(), Some(&b"seven"[..]));
        assert_eq!(parent.take_reply(7).as_deref(), Some(&b"seven"[..]));
        assert_eq!(parent.take_reply(7), None, "taken once");
        assert!(parent.reply_taken(7));
        assert_eq!(parent.dead_reply().as_deref(), Some(&b"seven"[..]));
        parent.reply_delivered(7);
        assert_eq!(parent.dead_reply(), None);
        // Watched, not answered: the caller stops watching, and a worker
        // that answers later sends the outcome.
        assert!(parent.watch(9, 0));
        assert!(parent.unwatch(9));
        assert!(!worker.reply(9, b"nine"));
        // A reply nobody took is there for the parent once the worker died.
        assert!(parent.watch(10, 0) && worker.reply(10, b"ten"));
        assert_eq!(parent.dead_reply().as_deref(), Some(&b"ten"[..]));
        assert_eq!(parent.take_reply(10).as_deref(), Some(&b"ten"[..]));
        parent.reply_delivered(10);
        assert!(parent.watch(11, 0), "the box is free again");
        // Closed, as a dead worker's: nobody answers there any more.
        parent.close_box();
        assert!(!worker.reply(11, b"eleven") && parent.unwatch(11));
        assert!(!parent.watch(12, 0) && parent.dead_reply().is_none());
    }

    #[test]
    fn a_box_closed_while_its_caller_delivers_stays_unanswered() {
        let parent = Board::new().unwrap();
        let worker = Board::from_shared(parent.share()).unwrap();
        assert!(parent.watch(1, 0) && worker.reply(1, b"one"));
        assert_eq!(parent.take_reply(1).as_deref(), Some(&b"one"[..]));
        // The worker dies as its caller delivers: the outcome stays there
        // for the reap until delivered.
        parent.close_box();
        assert_eq!(parent.dead_reply().as_deref(), Some(&b"one"[..]));
        parent.reply_delivered(1);
        // Free again, but a dead worker never answers into it.
        assert!(parent.watch(2, 0));
        assert!(!worker.reply(2, b"two"));
        assert!(parent.unwatch(2));
    }

    #[test]
    fn a_full_arena_refuses_and_resets() {
        let board = Board::new().unwrap();
        board.chunk_begin(0);
        assert!(board.arena_push(&vec![1; ARENA - 1]));
        assert!(!board.arena_push(&[1, 2]));
        assert!(board.arena_push(&[1]));
        board.arena_reset(5);
        assert_eq!(board.arena_items(), (5, 0, Vec::new()));
    }
}
