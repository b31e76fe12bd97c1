//! The process's allocator: mimalloc, asked for a plain block whenever a
//! plain block is aligned enough.
//!
//! The `mimalloc` crate sends every allocation through
//! `mi_malloc_aligned`, whatever its alignment. In mimalloc 3 that call
//! takes its fast path only while the size class has a free block ready;
//! when the class's free list is empty and the class is not a power of
//! two, it over-allocates from a larger class and aligns inside the block
//! (`mi_theap_malloc_zero_aligned_at_overalloc`): more instructions, more
//! memory, and the block's own class is not refilled by it. A proxied
//! request made ~10 such calls out of its ~69 allocations.
//!
//! mimalloc's plain blocks are 16-byte aligned from 16 bytes up and
//! 8-byte aligned below, so, as Rust's `System` allocator does with
//! `malloc`, a request whose alignment is at most 16 and at most its size
//! gets `mi_malloc`; the rest keep the aligned calls.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc as the global allocator (see the module docs).
pub struct Allocator;

/// Does a plain mimalloc block of `size` bytes satisfy `align`?
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= 16 && align <= size
}

/// A block for `layout`: from `plain_call` where a plain block is aligned
/// enough, else from `aligned_call` (mimalloc's allocation and zeroed
/// allocation come in such pairs).
///
/// # Safety
///
/// The two calls are one of mimalloc's allocation pairs.
#[inline(always)]
unsafe fn block(
    layout: Layout,
    plain_call: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned_call: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    // SAFETY: mimalloc's allocation calls (the caller's promise), given a
    // size and (for the aligned one) a `Layout`'s power-of-two alignment.
    unsafe {
        if plain(align, size) {
            plain_call(size).cast()
        } else {
            aligned_call(size, align).cast()
        }
    }
}

// SAFETY: every block comes from mimalloc and goes back to `mi_free` or
// mimalloc's reallocation; plain blocks are used only where their
// guaranteed alignment covers the layout's (see `plain`), and every other
// layout gets mimalloc's aligned calls, as the `mimalloc` crate makes them.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation pair.
        unsafe { block(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's zeroed allocation pair.
        unsafe { block(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: `ptr` came from mimalloc; the new block keeps `align`.
        unsafe {
            if plain(align, new_size) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, align).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block is aligned as its layout asks, plain or not, through
    /// growth and shrinking, keeps its bytes, and comes zeroed when asked.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = Allocator;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [
                1, 3, 7, 8, 12, 16, 24, 40, 48, 100, 1000, 1500, 5000, 70_000,
            ] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let aligned = |p: *mut u8| (p as usize).is_multiple_of(align);
                // SAFETY: non-zero sizes; each block is used within its
                // size and freed once, with the layout it has then.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(aligned(p), "alloc {size} align {align}");
                    std::ptr::write_bytes(p, 0xA5, size);
                    let grown = a.realloc(p, layout, size * 3);
                    assert!(aligned(grown), "grow {size} align {align}");
                    assert!((0..size).all(|i| *grown.add(i) == 0xA5));
                    let half = (size / 2).max(1);
                    let grown_layout = Layout::from_size_align(size * 3, align).unwrap();
                    let shrunk = a.realloc(grown, grown_layout, half);
                    assert!(aligned(shrunk), "shrink {size} align {align}");
                    assert!((0..half).all(|i| *shrunk.add(i) == 0xA5));
                    a.dealloc(shrunk, Layout::from_size_align(half, align).unwrap());

                    let z = a.alloc_zeroed(layout);
                    assert!(aligned(z), "zeroed {size} align {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
