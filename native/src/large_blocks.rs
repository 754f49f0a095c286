//! The extension's global allocator: the system allocator, except that blocks of
//! `LARGE` bytes and more are whole anonymous mappings, which `realloc` resizes with
//! `mremap` instead of copying.
//!
//! Why: a stage pod reads the tenant's expanded key (2 GB for SNS) from the node key
//! cache, and deserialising it fills each of the key's vectors through serde, which
//! starts from a cautious capacity (1 MiB) and doubles. TFHE-rs's vectors are
//! over-aligned (aligned-vec, 64 bytes and more), and Rust's system allocator grows an
//! over-aligned block by allocating another one, copying and freeing: about twice the
//! key's size in freshly faulted pages plus one full copy, and another copy when the
//! vector is shrunk to its length at the end. `mremap` moves the pages already there:
//! nothing is copied and only the new tail is faulted in. Measured on 2 cores (a VM,
//! where a fresh page costs microseconds): before it, the SNS key loaded in 3.9 s, of
//! which 2.7 s in the kernel, with 969k page faults.
//!
//! Blocks below `LARGE`, or aligned to more than a page (never asked for by TFHE-rs),
//! stay with the system allocator, so every block keeps one owner from allocation to
//! release: the layout a block is freed or resized with is the one it was made with.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// Below this, glibc's own heap serves (its mmap threshold is dynamic up to 32 MiB).
const LARGE: usize = 8 << 20;
const PAGE: usize = 4096;

pub struct LargeBlocks;

fn is_large(size: usize, align: usize) -> bool {
    size >= LARGE && align <= PAGE
}

fn mapped_len(size: usize) -> usize {
    (size + PAGE - 1) & !(PAGE - 1)
}

/// A fresh anonymous mapping (zero-filled by the kernel), or null.
unsafe fn map(size: usize) -> *mut u8 {
    let address = libc::mmap(
        ptr::null_mut(),
        mapped_len(size),
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    if address == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        address.cast()
    }
}

// SAFETY: large blocks are page-aligned mappings (any alignment up to a page holds),
// sized and released by the same rounded length; the rest is `System`'s, untouched.
unsafe impl GlobalAlloc for LargeBlocks {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            map(layout.size())
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size(), layout.align()) {
            map(layout.size())
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if is_large(layout.size(), layout.align()) {
            libc::munmap(block.cast(), mapped_len(layout.size()));
        } else {
            System.dealloc(block, layout)
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        match (is_large(layout.size(), align), is_large(new_size, align)) {
            (false, false) => System.realloc(block, layout, new_size),
            (true, true) => {
                // On failure the old mapping is left as it was, as realloc requires.
                let moved = libc::mremap(
                    block.cast(),
                    mapped_len(layout.size()),
                    mapped_len(new_size),
                    libc::MREMAP_MAYMOVE,
                );
                if moved == libc::MAP_FAILED {
                    ptr::null_mut()
                } else {
                    moved.cast()
                }
            }
            _ => {
                // Crossing the threshold: a new block from the other side, one copy.
                let resized = self.alloc(Layout::from_size_align_unchecked(new_size, align));
                if !resized.is_null() {
                    ptr::copy_nonoverlapping(block, resized, layout.size().min(new_size));
                    self.dealloc(block, layout);
                }
                resized
            }
        }
    }
}
