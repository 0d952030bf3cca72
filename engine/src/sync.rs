//! The one place the engine gets its concurrency primitives from.
//!
//! Under `cfg(loom)` every atomic and lock is loom's, so the loom models in
//! `engine/tests/loom.rs` explore the real table code. No other module imports
//! `std::sync::atomic`, `parking_lot` or `loom` directly.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
// `AtomicBool` is only the threads executor's stop flag, and that module is
// not built under loom.
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

pub(crate) use crossbeam_utils::CachePadded;

/// A mutual-exclusion lock with parking_lot's infallible `lock()` API.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T> {
    #[cfg(not(loom))]
    inner: parking_lot::Mutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

/// The guard returned by [`Mutex::lock`].
#[cfg(not(loom))]
pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;
/// The guard returned by [`Mutex::lock`].
#[cfg(loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: parking_lot::Mutex::new(value),
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(not(loom))]
        {
            self.inner.lock()
        }
        #[cfg(loom)]
        {
            self.inner.lock().unwrap()
        }
    }
}

/// Tell the scheduler (or loom) that this thread is spinning on a value
/// another thread will change.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Build a boxed slice of `n` default values.
///
/// Outside loom, types whose all-zero bit pattern is their default (atomics,
/// integers) are allocated zeroed, so a table sized for millions of entries
/// costs no memory until its slots are touched: the OS hands out zero pages
/// lazily. Under loom atomics must be constructed, so the slice is built one
/// value at a time (loom models use tiny tables).
pub(crate) fn zeroed_slice<T: ZeroDefault>(n: usize) -> Box<[T]> {
    #[cfg(not(loom))]
    {
        if n == 0 || std::mem::size_of::<T>() == 0 {
            return (0..n).map(|_| T::default()).collect();
        }
        let layout = std::alloc::Layout::array::<T>(n).expect("table size overflows memory");
        // SAFETY: `layout` has a non-zero size. `ZeroDefault` promises that the
        // all-zero bit pattern is a valid `T` equal to `T::default()`, so the
        // zeroed allocation holds `n` initialised values and may be owned by a
        // `Box<[T]>` allocated with the same layout.
        unsafe {
            let ptr = std::alloc::alloc_zeroed(layout).cast::<T>();
            if ptr.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n))
        }
    }
    #[cfg(loom)]
    {
        (0..n).map(|_| T::default()).collect()
    }
}

/// Types whose default value is the all-zero bit pattern.
///
/// # Safety
/// Implement only for types made solely of atomics and integers (and arrays
/// and structs of them) whose `Default` is zero.
pub(crate) unsafe trait ZeroDefault: Default {}

// SAFETY: the std atomics are plain integers inside an `UnsafeCell`; zero is
// their default. Under loom they are never zero-allocated (see above).
unsafe impl ZeroDefault for AtomicU32 {}
// SAFETY: as above.
unsafe impl ZeroDefault for AtomicU64 {}
