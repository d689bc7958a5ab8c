//! A kernel or initrd file read into guest RAM by mapping its pages
//! copy-on-write instead of copying them.
//!
//! linux-loader parses the kernel and asks its reader to fill guest memory
//! (`read_exact_volatile_from`). A plain `File` copies every byte into
//! fresh anonymous pages: for an 18 MiB vmlinux that is thousands of page
//! faults, each zeroing a page that the copy then overwrites. This reader
//! maps the whole file pages of each request `MAP_PRIVATE | MAP_FIXED` over
//! the guest RAM they would have been copied to: no copy, no fault until
//! the guest touches a page, and a guest write copies just that page (the
//! file is never written). Pieces that are not whole, aligned pages (a
//! segment's head and tail, or a file offset not congruent with its guest
//! address) are copied as before, so the result is byte for byte what the
//! copy would have been.
//!
//! Only for guest RAM that is hvm's alone: memory shared with a vhost-user
//! backend is a memfd the backend maps, and a private file mapping over it
//! would hide those pages from the backend.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

/// Reads `file` into guest memory, mapping what it can.
pub struct CowFileReader<'a> {
    file: &'a File,
    pos: u64,
    len: u64,
    page: u64,
    /// Bytes placed by mapping rather than copying (for the log).
    mapped: u64,
    /// Mapping is off: the file is not a regular file, or a mapping
    /// failed (a file system without mmap); everything is copied.
    copy_only: bool,
}

impl<'a> CowFileReader<'a> {
    /// # Safety
    /// Every `VolatileSlice` this reader is asked to fill must lie in a
    /// private anonymous mapping whose pages may be replaced (guest RAM not
    /// shared with another process), and nothing may hold a reference into
    /// those bytes while they are replaced.
    pub unsafe fn new(file: &'a File) -> std::io::Result<CowFileReader<'a>> {
        // SAFETY: sysconf with a constant name.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as u64,
            _ => 4096,
        };
        let meta = file.metadata()?;
        Ok(CowFileReader {
            file,
            pos: 0,
            len: meta.len(),
            page,
            mapped: 0,
            copy_only: !meta.is_file(),
        })
    }

    pub fn mapped_bytes(&self) -> u64 {
        self.mapped
    }

    /// Maps `len` bytes (whole pages) of the file at `pos` over `host`.
    fn map(&mut self, host: *mut u8, len: usize) -> std::io::Result<()> {
        // SAFETY: `host..host+len` lies in guest RAM the caller of `new`
        // vouched may be replaced; MAP_FIXED replaces exactly those pages
        // with the file's, private (copy-on-write), so the file is never
        // written and the range stays mapped and readable.
        let at = unsafe {
            libc::mmap(
                host.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                self.file.as_raw_fd(),
                self.pos as libc::off_t,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // The new mapping does not inherit the guest RAM's advice: keep it
        // out of core dumps like the rest (see memory.rs). Best effort.
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(at, len, libc::MADV_DONTDUMP) };
        Ok(())
    }
}

impl Read for CowFileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for CowFileReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

impl ReadVolatile for CowFileReader<'_> {
    /// Fills as much of `buf` as the file has (vm-memory asks once per
    /// region, so a short read here would be a failed load).
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let want = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let guard = buf.ptr_guard_mut();
        let base = guard.as_ptr();
        let mut done = 0;
        while done < want {
            match self.place(base.wrapping_add(done), want - done) {
                Ok(0) => break,
                Ok(n) => {
                    buf.bitmap().mark_dirty(done, n);
                    done += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if done == 0 => return Err(VolatileMemoryError::IOError(e)),
                Err(_) => break,
            }
        }
        Ok(done)
    }
}

impl CowFileReader<'_> {
    /// Places the next piece of the file at `host` (at most `len` bytes):
    /// whole pages by mapping, else a copy up to where mapping can start.
    fn place(&mut self, host: *mut u8, len: usize) -> std::io::Result<usize> {
        let page = self.page;
        let misalign = host as u64 % page;
        let whole = len as u64 & !(page - 1);
        if !self.copy_only && misalign == 0 && self.pos % page == 0 && whole > 0 {
            match self.map(host, whole as usize) {
                Ok(()) => {
                    self.pos += whole;
                    self.mapped += whole;
                    return Ok(whole as usize);
                }
                Err(e) => {
                    // A file system without mmap is refused before anything
                    // is replaced: copy instead.
                    log::debug!("cannot map the file's pages into guest RAM ({e}): copying them");
                    self.copy_only = true;
                }
            }
        }
        // Copy: up to the next page boundary when the file offset and the
        // guest address agree within a page (the rest is then mapped), else
        // all of it.
        let n = if !self.copy_only && misalign == self.pos % page {
            len.min((page - misalign) as usize)
        } else {
            len
        };
        // SAFETY: `host..host+n` is within the slice being filled.
        let r = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                host.cast(),
                n,
                self.pos as libc::off_t,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.pos += r as u64;
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn file_with(bytes: &[u8]) -> File {
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.write_all(bytes).unwrap();
        f
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    /// The ranges of this process's mappings backed by a file, from
    /// /proc/self/maps.
    fn file_mappings() -> Vec<(u64, u64)> {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(4)
                    .is_some_and(|inode| inode != "0")
            })
            .filter_map(|l| {
                let (lo, hi) = l.split_whitespace().next()?.split_once('-')?;
                Some((
                    u64::from_str_radix(lo, 16).ok()?,
                    u64::from_str_radix(hi, 16).ok()?,
                ))
            })
            .collect()
    }

    fn read_into(mem: &GuestMemoryMmap, file: &File, from: u64, at: u64, len: usize) -> u64 {
        // SAFETY: `mem` is this test's own anonymous guest memory.
        let mut r = unsafe { CowFileReader::new(file) }.unwrap();
        r.seek(SeekFrom::Start(from)).unwrap();
        mem.read_exact_volatile_from(GuestAddress(at), &mut r, len)
            .unwrap();
        r.mapped_bytes()
    }

    #[test]
    fn aligned_pages_are_mapped_and_the_rest_copied_byte_for_byte() {
        let data = pattern(5 * 4096 + 1234);
        let file = file_with(&data);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(&[0xee; 64], GuestAddress(0x10000 - 64))
            .unwrap();
        // From file offset 100 to guest 0x10000 + 100: a 3,996-byte head is
        // copied, four whole pages mapped, the tail copied.
        let len = data.len() - 100;
        let mapped = read_into(&mem, &file, 100, 0x10000 + 100, len);
        assert_eq!(mapped, 4 * 4096);
        let mut back = vec![0; len];
        mem.read_slice(&mut back, GuestAddress(0x10000 + 100))
            .unwrap();
        assert_eq!(back, data[100..]);
        // Bytes before the request are untouched.
        let mut before = [0; 64];
        mem.read_slice(&mut before, GuestAddress(0x10000 - 64))
            .unwrap();
        assert_eq!(before, [0xee; 64]);
        let host = mem.get_host_address(GuestAddress(0x11000)).unwrap() as u64;
        assert!(
            file_mappings()
                .iter()
                .any(|&(lo, hi)| lo <= host && host + 4 * 4096 <= hi),
            "no file mapping over guest RAM"
        );
    }

    #[test]
    fn guest_writes_never_reach_the_file() {
        let data = pattern(4 * 4096);
        let file = file_with(&data);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(read_into(&mem, &file, 0, 0x20000, data.len()), 4 * 4096);
        mem.write_slice(&[0x55; 4096], GuestAddress(0x21000))
            .unwrap();
        let mut on_disk = vec![0; data.len()];
        file.read_exact_at(&mut on_disk, 0).unwrap();
        assert_eq!(on_disk, data);
        let mut page = [0; 4096];
        mem.read_slice(&mut page, GuestAddress(0x21000)).unwrap();
        assert_eq!(page, [0x55; 4096]);
    }

    #[test]
    fn an_offset_not_congruent_with_the_address_is_copied() {
        let data = pattern(3 * 4096);
        let file = file_with(&data);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(read_into(&mem, &file, 512, 0x30000, 2 * 4096), 0);
        let mut back = vec![0; 2 * 4096];
        mem.read_slice(&mut back, GuestAddress(0x30000)).unwrap();
        assert_eq!(back, data[512..512 + 2 * 4096]);
    }

    #[test]
    fn a_request_past_the_end_of_the_file_fails() {
        let file = file_with(&pattern(4096));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // SAFETY: this test's own anonymous guest memory.
        let mut r = unsafe { CowFileReader::new(&file) }.unwrap();
        assert!(mem
            .read_exact_volatile_from(GuestAddress(0), &mut r, 8192)
            .is_err());
    }
}
