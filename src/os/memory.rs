//! Giving freed heap memory back to the kernel. glibc keeps what the master frees (a /metrics
//! answer of many workers is a few MiB, built and dropped in milliseconds) for later reuse, so
//! its RSS would stay at the peak of its busiest moment; `malloc_trim` returns the free pages.
//! Written here because no crate wraps it (it is glibc's, and the master uses the system
//! allocator).

/// Return the heap's free pages to the kernel. Cheap when there is little to return.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks and only releases memory that is free;
    // it touches no object of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}
