//! Large read-mostly tables (the rings of big pools) backed by transparent huge pages.
//!
//! A 1000-backend ring is tens of MiB read at random: with 4 KiB pages nearly every lookup
//! also misses the TLB, and the page walk costs about as much as the memory access itself.
//! Many distributions leave transparent huge pages at `madvise`, so the table has to ask.
//!
//! The advice stays on the address range after the vector is freed. If the allocator placed
//! the vector on its heap rather than in its own mapping (glibc does for sizes under its
//! adaptive mmap threshold, up to 32 MiB), later small allocations there may be backed by huge
//! pages too: at most the ring's own size, memory the process held anyway while it lived.

use std::mem::MaybeUninit;

/// Huge page size on x86-64 and most arm64 kernels. Asking on another size only loses the gain.
const HUGE: usize = 2 << 20;

/// A vector of `len` copies of `fill` whose memory the kernel is asked to back with huge pages
/// (best effort: where it cannot, this is a plain vector).
pub(crate) fn filled_vec<T: Copy>(len: usize, fill: T) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    // Before the first touch, so the pages are huge from the first fault rather than after a
    // later collapse by khugepaged.
    advise(v.spare_capacity_mut());
    v.resize(len, fill);
    v
}

#[cfg(target_os = "linux")]
fn advise<T>(mem: &mut [MaybeUninit<T>]) {
    let start = mem.as_mut_ptr() as usize;
    let end = (start + std::mem::size_of_val(mem)) & !(HUGE - 1);
    let aligned = start.next_multiple_of(HUGE);
    if aligned < end {
        // SAFETY: the range lies inside `mem`'s allocation and starts on a page boundary;
        // MADV_HUGEPAGE changes how pages are backed, never their contents. A refusal (old
        // kernel, THP compiled out) leaves ordinary pages, which is fine.
        #[allow(unsafe_code)]
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise<T>(_mem: &mut [MaybeUninit<T>]) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_vec_is_filled_at_every_size() {
        for len in [0, 1, 1000, HUGE / 4 + 3, 3 * HUGE / 4] {
            let v = filled_vec(len, 7u32);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 7));
        }
    }
}
