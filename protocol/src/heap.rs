//! The allocator settings of both ends' packet paths.
//!
//! Not part of the wire format: it lives here because this is the one crate that both
//! binaries link and that owns the packet path's sizes (see [`transport`](crate::transport)).
//! It changes a process-wide setting of glibc's allocator and does no I/O.

// The heap of both ends' packet paths. Each inner packet on a loopback path is a ~64 KiB
// allocation (a received datagram, a packet the stack builds) that lives for microseconds.
// glibc's defaults return freed memory at the top of the heap to the kernel as soon as
// 128 KiB are free (and its adaptive mmap threshold moves with the sizes seen), so a bulk
// transfer kept giving pages back and faulting them in again: page faults were 12% of the
// client's CPU in a download. Keeping a pad of freed heap instead raised the bulk rows by
// ~19% (docs/benchmarks.md). The cost is freed memory that stays resident up to the trim
// threshold after a burst.
const HEAP_TRIM_THRESHOLD: libc::c_int = 64 << 20;
const HEAP_TOP_PAD: libc::c_int = 16 << 20;
/// Fixed, so it does not move with what is freed: the per-packet sizes stay on the heap.
#[cfg(target_env = "gnu")]
const HEAP_MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Sets the process's allocator for a packet path: freed packet memory is kept for reuse,
/// not returned to the kernel after every burst. Call once, first thing in `main`.
pub fn tune_for_packets() {
    tune_for_packets_within(None);
}

/// [`tune_for_packets`] for a process whose memory is limited to `limit` bytes (its
/// cgroup's, where it has one): the freed memory kept (the trim threshold) is at most a
/// sixteenth of the limit, and the heap grows by at most a sixty-fourth at a time. An agent
/// limited to 64 MiB then keeps 4 MiB, not 64, of freed memory that would count against the
/// limit until it is OOM-killed (docs/architecture.md, "Sized to its memory limit").
pub fn tune_for_packets_within(limit: Option<u64>) {
    let (trim, pad) = match limit {
        None => (HEAP_TRIM_THRESHOLD, HEAP_TOP_PAD),
        Some(limit) => (
            scaled(HEAP_TRIM_THRESHOLD, limit / 16),
            scaled(HEAP_TOP_PAD, limit / 64),
        ),
    };
    #[cfg(target_env = "gnu")]
    for (param, value) in [
        (libc::M_TRIM_THRESHOLD, trim),
        (libc::M_TOP_PAD, pad),
        (libc::M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD),
    ] {
        // SAFETY: mallopt only changes allocator parameters; any value is accepted or refused.
        // Best effort: a refused value costs speed, not correctness.
        let _ = unsafe { libc::mallopt(param, value) };
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = (trim, pad);
}

/// `default`, or `share` of a limit where that is smaller.
fn scaled(default: libc::c_int, share: u64) -> libc::c_int {
    libc::c_int::try_from(share).map_or(default, |share| share.min(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_limit_keeps_a_small_share_of_freed_memory() {
        assert_eq!(scaled(HEAP_TRIM_THRESHOLD, (64 << 20) / 16), 4 << 20);
        assert_eq!(
            scaled(HEAP_TRIM_THRESHOLD, (4 << 30) / 16),
            HEAP_TRIM_THRESHOLD
        );
        assert_eq!(
            scaled(HEAP_TOP_PAD, u64::MAX / 64),
            HEAP_TOP_PAD,
            "beyond c_int"
        );
    }
}
