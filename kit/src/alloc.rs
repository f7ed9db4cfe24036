//! Memory allocator settings every process applies at start.
//!
//! Streams churn through buffers of 64 KiB and more (chunks, socket reads, NATS messages). With
//! glibc's defaults, freeing such a buffer at the top of a heap returns the pages to the kernel
//! (the trim threshold starts at 128 KiB), and the next buffer faults them back in, zeroed: page
//! faults were 9% of the ingress's and session-host's samples while serving 1 MiB responses.
//! Keeping a few MiB of free heap instead cut the ingress's CPU per 1 MiB response by about a
//! fifth (docs/benchmarks.md).

/// Allocations at least this large get their own mapping; smaller ones come from the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 4 << 20;
/// Free memory at the top of a heap kept for reuse instead of being returned to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD_BYTES: libc::c_int = 8 << 20;

/// Applies the allocator settings; a no-op where the allocator is not glibc's.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets two of glibc's global malloc parameters, under its own lock;
    // it is safe to call at any time, from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
}
