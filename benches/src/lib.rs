//! Benchmarks of the musig2-p2p crates side by side with reference implementations.

pub mod heap {
    //! A counting wrapper around the system allocator, for the benches that report heap use
    //! (`flood`: live and peak bytes per runtime; `e2e`: bytes per idle session). A bench
    //! installs it with `#[global_allocator] static A: heap::Counting = heap::Counting;`.
    //!
    //! Counting can be switched off ([`set_counting`]) so that a bench that times sessions pays
    //! one relaxed load per allocation and nothing more. Bytes freed while counting that were
    //! allocated while it was off lower the count: a difference of [`now`] taken over a window
    //! of counting is the change of the live heap in that window, whatever came before.

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

    /// The counting allocator.
    pub struct Counting;

    static COUNTING: AtomicBool = AtomicBool::new(true);
    static HEAP_NOW: AtomicUsize = AtomicUsize::new(0);
    static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

    /// Thread groups (0 is every thread not given one).
    const GROUPS: usize = 4;
    static GROUP_NOW: [AtomicI64; GROUPS] = [const { AtomicI64::new(0) }; GROUPS];
    static GROUP_PEAK: [AtomicI64; GROUPS] = [const { AtomicI64::new(0) }; GROUPS];

    thread_local! {
        static GROUP: Cell<u8> = const { Cell::new(0) };
    }

    /// Puts the current thread in `group` (below 4), e.g. from a runtime's `on_thread_start`.
    pub fn set_thread_group(group: u8) {
        GROUP.with(|g| g.set(group.min(GROUPS as u8 - 1)));
    }

    fn group() -> usize {
        usize::from(GROUP.try_with(Cell::get).unwrap_or(0))
    }

    /// Turns counting on or off (on from the start).
    pub fn set_counting(on: bool) {
        COUNTING.store(on, Ordering::Relaxed);
    }

    fn grew(n: usize) {
        if !COUNTING.load(Ordering::Relaxed) {
            return;
        }
        let now = HEAP_NOW.fetch_add(n, Ordering::Relaxed).wrapping_add(n);
        HEAP_PEAK.fetch_max(now, Ordering::Relaxed);
        let g = group();
        let now = GROUP_NOW[g].fetch_add(n as i64, Ordering::Relaxed) + n as i64;
        GROUP_PEAK[g].fetch_max(now, Ordering::Relaxed);
    }

    fn shrank(n: usize) {
        if !COUNTING.load(Ordering::Relaxed) {
            return;
        }
        HEAP_NOW.fetch_sub(n, Ordering::Relaxed);
        GROUP_NOW[group()].fetch_sub(n as i64, Ordering::Relaxed);
    }

    /// Bytes live on the heap, counted (wrapping: compare two readings with [`grown_since`]).
    pub fn now() -> usize {
        HEAP_NOW.load(Ordering::Relaxed)
    }

    /// The live heap's change since the reading `before` of [`now`] (negative if it shrank).
    pub fn grown_since(before: usize) -> isize {
        now().wrapping_sub(before) as isize
    }

    /// The highest [`now`] since the last [`reset_peaks`].
    pub fn peak() -> usize {
        HEAP_PEAK.load(Ordering::Relaxed)
    }

    /// Bytes allocated by `group`'s threads and not freed by them.
    pub fn group_now(group: u8) -> i64 {
        GROUP_NOW[usize::from(group)].load(Ordering::Relaxed)
    }

    /// The highest [`group_now`] since the last [`reset_peaks`].
    pub fn group_peak(group: u8) -> i64 {
        GROUP_PEAK[usize::from(group)].load(Ordering::Relaxed)
    }

    /// Resets every peak to the current level.
    pub fn reset_peaks() {
        HEAP_PEAK.store(now(), Ordering::Relaxed);
        for (n, p) in GROUP_NOW.iter().zip(&GROUP_PEAK) {
            p.store(n.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    // The one unsafe item of the benches: `GlobalAlloc` is an unsafe trait. Every call goes
    // straight to `System` with the caller's arguments; the wrapper only counts sizes.
    #[allow(unsafe_code)]
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as above.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) };
            shrank(layout.size());
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: as above.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                if new_size >= layout.size() {
                    grew(new_size - layout.size());
                } else {
                    shrank(layout.size() - new_size);
                }
            }
            p
        }
    }
}
