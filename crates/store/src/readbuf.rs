//! A chunk's bytes read from a file with `pread`, into memory the kernel may back with 2 MiB
//! pages. archive-wal is one short process per WAL segment, so every buffer it reads into is
//! fresh memory: in 4 KiB pages, faulting 16 MiB in cost about as much CPU as hashing it
//! (measured: page faults were 17% of a call's samples). A buffer of 2 MiB or more is
//! therefore 2 MiB-aligned and marked `MADV_HUGEPAGE` before the first byte lands in it; it is
//! never zeroed first, since `pread` fills all of it or the read fails.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// At and above this size a buffer is aligned and advised for huge pages.
const HUGE_PAGE: usize = 2 << 20;

/// `len` bytes read from a file, owned; handed to `Bytes::from_owner`.
pub(crate) struct ReadBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: the buffer owns its allocation alone and is never written after it is built.
unsafe impl Send for ReadBuf {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for ReadBuf {}

impl ReadBuf {
    /// Exactly `n` bytes of `file` at `off`; `UnexpectedEof` when the file ends first.
    pub fn read_exact_at(file: &std::fs::File, off: u64, n: usize) -> io::Result<ReadBuf> {
        let align = if n >= HUGE_PAGE { HUGE_PAGE } else { 64 };
        let layout = Layout::from_size_align(n.max(1), align)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let ptr =
            NonNull::new(unsafe { alloc(layout) }).unwrap_or_else(|| handle_alloc_error(layout));
        // Owned from here on: dropped (deallocated) on every error path below.
        let buf = ReadBuf {
            ptr,
            len: n,
            layout,
        };
        if n >= HUGE_PAGE {
            // SAFETY: a page-aligned range inside our own allocation; failure only means
            // 4 KiB pages.
            unsafe {
                libc::madvise(ptr.as_ptr().cast(), n, libc::MADV_HUGEPAGE);
            }
        }
        let mut done = 0usize;
        while done < n {
            // SAFETY: writes at most `n - done` bytes into our allocation at offset `done`.
            let rc = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    ptr.as_ptr().add(done).cast(),
                    n - done,
                    (off + done as u64) as libc::off_t,
                )
            };
            match rc {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                rc if rc > 0 => done += rc as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(buf)
    }
}

impl AsRef<[u8]> for ReadBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: every one of the `len` bytes was written by `pread` before `self` existed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with exactly this layout in `read_exact_at`.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_exactly_or_reports_the_end() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        for (off, n) in [(0u64, 4usize << 20), (123, 100), (1 << 20, 4 << 20), (0, 0)] {
            let b = ReadBuf::read_exact_at(&f, off, n).unwrap();
            assert_eq!(b.as_ref(), &data[off as usize..off as usize + n]);
        }
        let e = ReadBuf::read_exact_at(&f, 2 << 20, 4 << 20).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
