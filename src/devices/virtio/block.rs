//! virtio-blk backed by a raw image file: read, write, flush (fdatasync),
//! get-id, discard and write-zeroes (fallocate). The image is locked (an
//! open-file-description lock, see [`host_file`]) so that two VMs cannot
//! write one disk; the error names the process that holds it.

use super::guest_io::{chain_spans, guest_iovecs};
use super::{
    drain_queue, read_config_bytes, QueueError, Served, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::host_file::{self, LockRefused};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use virtio_bindings::virtio_blk::*;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

pub const SECTOR_SIZE: u64 = 512;
/// Largest piece of zeros written where fallocate cannot zero a range.
const CHUNK: usize = 256 * 1024;
/// Most iovecs one preadv/pwritev takes (the kernel's UIO_MAXIOV).
const IOV_MAX: usize = 1024;
/// Segments per request the driver may use (VIRTIO_BLK_F_SEG_MAX).
const SEG_MAX: u32 = 126;
/// Largest segment (VIRTIO_BLK_F_SIZE_MAX). With SEG_MAX this bounds one
/// request at 126 MiB, so no request holds the device loop for long.
const SIZE_MAX: u32 = 1 << 20;
/// Largest discard / write-zeroes range, in sectors (one segment per request).
const MAX_ZERO_SECTORS: u32 = 0x3f_ffff;
const CONFIG_LEN: usize = 60;

/// Errors while opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk image {path} is {size} bytes, not a multiple of 512: resize it (truncate -s) to whole sectors")]
    NotSectorAligned { path: PathBuf, size: u64 },
    #[error("disk image {path} is in use by another VM ({holder}); hvm locks images so two VMs cannot corrupt one disk")]
    Locked { path: PathBuf, holder: String },
    #[error("cannot lock disk image {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Takes a whole-file lock: shared for read-only drives, exclusive otherwise.
fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), BlockError> {
    host_file::lock(file, !read_only).map_err(|e| match e {
        LockRefused::Held(holder) => BlockError::Locked {
            path: path.to_path_buf(),
            holder,
        },
        LockRefused::Failed(source) => BlockError::Lock {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Whether a request keeps to the limits hvm advertises: header and status
/// plus at most SEG_MAX data segments, none larger than SIZE_MAX. A chain
/// beyond them (say 65 descriptors of 64 MiB aliasing the same RAM) would
/// otherwise hold the device loop for seconds.
fn within_limits(chain: DescriptorChain<&GuestMemoryMmap>) -> bool {
    let mut count = 0u32;
    for desc in chain {
        count += 1;
        if count > SEG_MAX + 2 || desc.len() > SIZE_MAX {
            return false;
        }
    }
    true
}

/// Answers a request beyond the limits with IOERR in its status byte (the
/// last byte of its last descriptor, when the driver may write it),
/// touching none of its data.
fn refuse(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
    let Some(last) = chain.last() else { return 0 };
    if !last.is_write_only() || last.len() == 0 {
        return 0;
    }
    let at = last.addr().checked_add(u64::from(last.len()) - 1);
    match at.map(|a| mem.write_obj(VIRTIO_BLK_S_IOERR as u8, a)) {
        Some(Ok(())) => 1,
        _ => 0,
    }
}

/// The 20-byte device ID the guest reads (VIRTIO_BLK_T_GET_ID), e.g. /sys/block/vda/serial.
fn device_id(id: &str) -> [u8; VIRTIO_BLK_ID_BYTES as usize] {
    let mut out = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    let bytes = id.as_bytes();
    let n = bytes.len().min(out.len());
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

pub struct Block {
    label: String,
    file: File,
    read_only: bool,
    size: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config: [u8; CONFIG_LEN],
}

/// BLKGETSIZE64: `_IOR(0x12, 114, u64)` (not in the libc crate).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// The size in bytes of the block device open as `file`.
fn block_device_size(file: &File) -> std::io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer it is given.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

impl Block {
    /// Opens and locks `path`. `id` is what the guest sees as the disk's serial.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Block, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let open_error = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(open_error)?;
        // A block device's metadata says 0 bytes: the kernel knows its size.
        let size = if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            block_device_size(&file).map_err(open_error)?
        } else {
            meta.len()
        };
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::NotSectorAligned {
                path: path.to_path_buf(),
                size,
            });
        }
        lock(&file, path, read_only)?;
        let mut config = [0u8; CONFIG_LEN];
        let mut put = |at: usize, v: u32| config[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(8, SIZE_MAX); // size_max
        put(12, SEG_MAX); // seg_max
        put(20, SECTOR_SIZE as u32); // blk_size
        put(36, MAX_ZERO_SECTORS); // max_discard_sectors
        put(40, 1); // max_discard_seg
        put(44, 1); // discard_sector_alignment
        put(48, MAX_ZERO_SECTORS); // max_write_zeroes_sectors
        put(52, 1); // max_write_zeroes_seg
        config[56] = 1; // write_zeroes_may_unmap
        config[0..8].copy_from_slice(&(size / SECTOR_SIZE).to_le_bytes()); // capacity
        Ok(Block {
            label: format!("virtio-blk {id} ({})", path.display()),
            file,
            read_only,
            size,
            id: device_id(id),
            config,
        })
    }

    /// Serves one request; returns the bytes written into guest buffers.
    fn request(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        if !within_limits(chain.clone()) {
            return refuse(chain, mem);
        }
        let (readable, writable) = chain_spans(chain.clone());
        let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(mem), chain.writer(mem))
        else {
            return 0;
        };
        // The last writable byte is the status; no room for it, no answer.
        let Some(data_len) = writer.available_bytes().checked_sub(1) else {
            return 0;
        };
        let Ok(mut status) = writer.split_at(data_len) else {
            return 0;
        };
        let mut header = [0u8; 16];
        let mut written = 0;
        let code = match reader.read_exact(&mut header) {
            Err(_) => VIRTIO_BLK_S_IOERR,
            Ok(()) => {
                let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
                let mut sector = [0u8; 8];
                sector.copy_from_slice(&header[8..16]);
                let sector = u64::from_le_bytes(sector);
                match kind {
                    VIRTIO_BLK_T_IN => match guest_iovecs(mem, &writable, 0, data_len) {
                        Some(data) => {
                            let code = self.data(sector, &data, Direction::Read);
                            if code == VIRTIO_BLK_S_OK {
                                written = data_len;
                            }
                            code
                        }
                        None => VIRTIO_BLK_S_IOERR,
                    },
                    VIRTIO_BLK_T_OUT => {
                        let len = reader.available_bytes();
                        match guest_iovecs(mem, &readable, header.len(), len) {
                            Some(data) => self.data(sector, &data, Direction::Write),
                            None => VIRTIO_BLK_S_IOERR,
                        }
                    }
                    VIRTIO_BLK_T_FLUSH => match self.read_only || self.file.sync_data().is_ok() {
                        true => VIRTIO_BLK_S_OK,
                        false => VIRTIO_BLK_S_IOERR,
                    },
                    VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                        self.zero_range(kind, &mut reader)
                    }
                    VIRTIO_BLK_T_GET_ID => {
                        let n = writer.available_bytes().min(self.id.len());
                        match writer.write_all(&self.id[..n]) {
                            Ok(()) => {
                                written = n;
                                VIRTIO_BLK_S_OK
                            }
                            Err(_) => VIRTIO_BLK_S_IOERR,
                        }
                    }
                    _ => VIRTIO_BLK_S_UNSUPP,
                }
            }
        };
        if status.write_all(&[code as u8]).is_err() {
            return 0;
        }
        // The used length is 32 bits; a larger read saturates rather than wraps.
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    /// Byte offset of `sector` if `len` bytes from there are inside the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        (offset.checked_add(len as u64)? <= self.size).then_some(offset)
    }

    /// Moves a request's data straight between the image and the guest's
    /// buffers (no bounce copy in hvm).
    fn data(&mut self, sector: u64, data: &[libc::iovec], direction: Direction) -> u32 {
        if matches!(direction, Direction::Write) && self.read_only {
            return VIRTIO_BLK_S_IOERR;
        }
        let len = data.iter().map(|v| v.iov_len).sum();
        match self.range(sector, len) {
            Some(offset) if transfer(&self.file, data, offset, direction).is_ok() => {
                VIRTIO_BLK_S_OK
            }
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// Which way a data transfer goes between the image and guest memory.
#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// preadv/pwritev of all of `iovs` at `offset`, resuming after short
/// transfers and EINTR. Reaching the end of the image is an error.
fn transfer(
    file: &File,
    iovs: &[libc::iovec],
    mut offset: u64,
    direction: Direction,
) -> std::io::Result<()> {
    let mut iovs = iovs.to_vec();
    let mut first = 0;
    while first < iovs.len() {
        let rest = &iovs[first..];
        let count = rest.len().min(IOV_MAX) as libc::c_int;
        let at = offset as libc::off_t;
        // SAFETY: every iovec points into guest RAM that `mem` keeps mapped
        // for the VM's life (checked by get_slices); the kernel bounds the
        // transfer by the lengths given.
        let n = unsafe {
            match direction {
                Direction::Read => libc::preadv(file.as_raw_fd(), rest.as_ptr(), count, at),
                Direction::Write => libc::pwritev(file.as_raw_fd(), rest.as_ptr(), count, at),
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut n = n as usize;
        offset += n as u64;
        while n > 0 && first < iovs.len() {
            let v = &mut iovs[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: n < iov_len, so the pointer stays inside the span.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n).cast() };
                v.iov_len -= n;
                n = 0;
            }
        }
        while first < iovs.len() && iovs[first].iov_len == 0 {
            first += 1;
        }
    }
    Ok(())
}

impl Block {
    /// Discard or write-zeroes: one segment {sector, num_sectors, flags}.
    /// Discard punches a hole (a hint: where the host filesystem cannot, it
    /// is done as nothing); write-zeroes makes the range read as zeros.
    fn zero_range(&mut self, kind: u32, reader: &mut virtio_queue::Reader<'_>) -> u32 {
        if self.read_only {
            return VIRTIO_BLK_S_IOERR;
        }
        let mut seg = [0u8; 16];
        if reader.available_bytes() != 16 || reader.read_exact(&mut seg).is_err() {
            return VIRTIO_BLK_S_UNSUPP;
        }
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        let len = u64::from(sectors) * SECTOR_SIZE;
        if sectors > MAX_ZERO_SECTORS || flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return VIRTIO_BLK_S_UNSUPP;
        }
        let Some(offset) = self.range(sector, len as usize) else {
            return VIRTIO_BLK_S_IOERR;
        };
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let mode = match (kind, flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0) {
            (VIRTIO_BLK_T_DISCARD, _) | (_, true) => punch,
            _ => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        };
        // SAFETY: fallocate on our own descriptor, within the file's size.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if rc == 0 || kind == VIRTIO_BLK_T_DISCARD {
            return VIRTIO_BLK_S_OK;
        }
        // No fallocate support for zeroing: write the zeros.
        let zeros = vec![0u8; CHUNK];
        let (mut at, mut left) = (offset, len);
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            if self.file.write_all_at(&zeros[..n], at).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            at += n as u64;
            left -= n as u64;
        }
        VIRTIO_BLK_S_OK
    }
}

impl VirtioDevice for Block {
    fn device_id(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK
    }

    fn label(&self) -> String {
        self.label.clone()
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn queue_sizes(&self) -> &[u16] {
        &[256]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Served, QueueError> {
        drain_queue(queue, mem, |chain| self.request(chain, mem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block device as a drive gets its real capacity (its metadata says
    /// 0 bytes). Needs root and a free loop device; said and skipped without.
    #[test]
    fn a_block_device_drive_has_the_devices_capacity() {
        let dir = std::env::temp_dir().join(format!("hvm-blkdev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        std::fs::write(&image, vec![0u8; 3 << 20]).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output();
        let device = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            other => {
                eprintln!("skipped: no loop device here ({other:?})");
                let _ = std::fs::remove_dir_all(&dir);
                return;
            }
        };
        let opened = Block::open(Path::new(&device), true, "loop");
        let _ = std::process::Command::new("losetup")
            .args(["-d", &device])
            .status();
        let _ = std::fs::remove_dir_all(&dir);
        let block = opened.unwrap();
        assert_eq!(block.size, 3 << 20);
        assert_eq!(
            &block.config[0..8],
            &(6144u64).to_le_bytes(),
            "capacity in sectors"
        );
    }
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;
    use vm_memory::{Bytes, GuestAddress};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    fn image(name: &str, sectors: u64) -> PathBuf {
        let path = std::env::temp_dir().join(format!("hvm-blk-{}-{name}", std::process::id()));
        let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, data).unwrap();
        path
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// Builds one request chain (header, data, status) and serves it.
    fn serve(
        blk: &mut Block,
        m: &GuestMemoryMmap,
        descs: &[(u64, u32, u16)],
        header: Option<(u32, u64)>,
    ) -> (u32, u8) {
        let q = MockSplitQueue::new(m, 16);
        if let Some((kind, sector)) = header {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            m.write_slice(&h, GuestAddress(descs[0].0)).unwrap();
        }
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i + 1 < descs.len() { F_NEXT } else { 0 };
                RawDescriptor::from(SplitDescriptor::new(
                    addr,
                    len,
                    flags | next,
                    (i + 1) as u16,
                ))
            })
            .collect();
        q.build_desc_chain(&raw).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let chain = queue.iter(m).unwrap().next().unwrap();
        let len = blk.request(chain, m);
        let status_addr = descs.last().unwrap().0 + u64::from(descs.last().unwrap().1) - 1;
        (len, m.read_obj(GuestAddress(status_addr)).unwrap())
    }

    /// A request of the usual shape: header at 0x10000, one data buffer of
    /// `len` bytes at 0x20000 (`flags` F_WRITE when the device fills it),
    /// status byte at 0x30000.
    fn serve_one(
        blk: &mut Block,
        m: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        len: u32,
        flags: u16,
    ) -> (u32, u8) {
        serve(
            blk,
            m,
            &[
                (0x10000, 16, 0),
                (0x20000, len, flags),
                (0x30000, 1, F_WRITE),
            ],
            Some((kind, sector)),
        )
    }

    #[test]
    fn read_returns_the_image_bytes() {
        let path = image("read", 8);
        let mut blk = Block::open(&path, false, "disk0").unwrap();
        let m = mem();
        let (len, status) = serve_one(&mut blk, &m, VIRTIO_BLK_T_IN, 2, 1024, F_WRITE);
        assert_eq!((len, status as u32), (1025, VIRTIO_BLK_S_OK));
        let mut got = vec![0u8; 1024];
        m.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        let want: Vec<u8> = (1024..2048u64).map(|i| (i % 251) as u8).collect();
        assert_eq!(got, want);
        std::fs::remove_file(path).unwrap();
    }

    /// Reads and writes scattered over descriptors of odd sizes, with the
    /// header sharing its descriptor with data and data sharing one with the
    /// status byte, go straight between image and guest memory intact.
    #[test]
    fn scattered_buffers_read_and_write_in_place() {
        let path = image("scatter", 8);
        let mut blk = Block::open(&path, false, "disk0").unwrap();
        let m = mem();
        let want: Vec<u8> = (512..2048u64).map(|i| (i % 251) as u8).collect();
        // Data 1,536 bytes: 100 + 900 in their own descriptors, 536 sharing
        // the last descriptor with the status byte.
        let (len, status) = serve(
            &mut blk,
            &m,
            &[
                (0x10000, 16, 0),
                (0x20000, 100, F_WRITE),
                (0x30000, 900, F_WRITE),
                (0x40000, 537, F_WRITE),
            ],
            Some((VIRTIO_BLK_T_IN, 1)),
        );
        assert_eq!((len, status as u32), (1537, VIRTIO_BLK_S_OK));
        let mut got = vec![0u8; 1536];
        m.read_slice(&mut got[..100], GuestAddress(0x20000))
            .unwrap();
        m.read_slice(&mut got[100..1000], GuestAddress(0x30000))
            .unwrap();
        m.read_slice(&mut got[1000..], GuestAddress(0x40000))
            .unwrap();
        assert_eq!(got, want);

        // Write: the header and the first 700 bytes in one descriptor, the
        // rest in a second; sector 4.
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 256) as u8).collect();
        m.write_slice(&data[..700], GuestAddress(0x50010)).unwrap();
        m.write_slice(&data[700..], GuestAddress(0x60000)).unwrap();
        let (len, status) = serve(
            &mut blk,
            &m,
            &[(0x50000, 716, 0), (0x60000, 324, 0), (0x70000, 1, F_WRITE)],
            Some((VIRTIO_BLK_T_OUT, 4)),
        );
        assert_eq!((len, status as u32), (1, VIRTIO_BLK_S_OK));
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[2048..3072], &data[..]);
        assert_eq!(
            on_disk[3072],
            (3072 % 251) as u8,
            "nothing past the request"
        );
        std::fs::remove_file(path).unwrap();
    }

    /// A buffer that spans two guest RAM regions is split at the seam and
    /// filled on both sides.
    #[test]
    fn a_buffer_across_two_ram_regions_is_filled_on_both_sides() {
        let path = image("seam", 8);
        let mut blk = Block::open(&path, true, "disk0").unwrap();
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x80000),
            (GuestAddress(0x80000), 0x80000),
        ])
        .unwrap();
        let (len, status) = serve(
            &mut blk,
            &m,
            &[
                (0x10000, 16, 0),
                (0x7fe00, 1024, F_WRITE),
                (0x90000, 1, F_WRITE),
            ],
            Some((VIRTIO_BLK_T_IN, 0)),
        );
        assert_eq!((len, status as u32), (1025, VIRTIO_BLK_S_OK));
        let mut got = vec![0u8; 1024];
        m.read_slice(&mut got, GuestAddress(0x7fe00)).unwrap();
        let want: Vec<u8> = (0..1024u64).map(|i| (i % 251) as u8).collect();
        assert_eq!(got, want);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn write_then_flush_reaches_the_file() {
        let path = image("write", 8);
        let mut blk = Block::open(&path, false, "disk0").unwrap();
        let m = mem();
        m.write_slice(&[0xab; 512], GuestAddress(0x20000)).unwrap();
        let (_, status) = serve_one(&mut blk, &m, VIRTIO_BLK_T_OUT, 7, 512, 0);
        assert_eq!(status as u32, VIRTIO_BLK_S_OK);
        let (_, status) = serve(
            &mut blk,
            &m,
            &[(0x10000, 16, 0), (0x30000, 1, F_WRITE)],
            Some((VIRTIO_BLK_T_FLUSH, 0)),
        );
        assert_eq!(status as u32, VIRTIO_BLK_S_OK);
        let data = std::fs::read(&path).unwrap();
        assert!(data[7 * 512..].iter().all(|&b| b == 0xab));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn read_only_drive_refuses_writes() {
        let path = image("ro", 4);
        let mut blk = Block::open(&path, true, "ro").unwrap();
        assert_ne!(blk.features() & (1 << VIRTIO_BLK_F_RO), 0);
        let m = mem();
        let (_, status) = serve_one(&mut blk, &m, VIRTIO_BLK_T_OUT, 0, 512, 0);
        assert_eq!(status as u32, VIRTIO_BLK_S_IOERR);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn out_of_range_sector_is_an_io_error() {
        let path = image("range", 4);
        let mut blk = Block::open(&path, false, "x").unwrap();
        let m = mem();
        for sector in [4u64, 3, u64::MAX / 512, u64::MAX] {
            let (_, status) = serve_one(&mut blk, &m, VIRTIO_BLK_T_IN, sector, 1024, F_WRITE);
            assert_eq!(status as u32, VIRTIO_BLK_S_IOERR, "sector {sector}");
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn get_id_and_unknown_requests() {
        let path = image("id", 1);
        let mut blk = Block::open(&path, false, "my-serial").unwrap();
        let m = mem();
        let (_, status) = serve_one(&mut blk, &m, VIRTIO_BLK_T_GET_ID, 0, 20, F_WRITE);
        assert_eq!(status as u32, VIRTIO_BLK_S_OK);
        let mut id = [0u8; 9];
        m.read_slice(&mut id, GuestAddress(0x20000)).unwrap();
        assert_eq!(&id, b"my-serial");
        let (_, status) = serve(
            &mut blk,
            &m,
            &[(0x10000, 16, 0), (0x30000, 1, F_WRITE)],
            Some((99, 0)),
        );
        assert_eq!(status as u32, VIRTIO_BLK_S_UNSUPP);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn malformed_chains_fail_without_touching_outside_memory() {
        let path = image("bad", 4);
        let mut blk = Block::open(&path, false, "x").unwrap();
        let m = mem();
        // Header shorter than 16 bytes: IOERR.
        let (_, status) = serve(
            &mut blk,
            &m,
            &[(0x10000, 8, 0), (0x30000, 1, F_WRITE)],
            None,
        );
        assert_eq!(status as u32, VIRTIO_BLK_S_IOERR);
        // No writable status byte at all: no answer, no panic.
        let (len, _) = serve(
            &mut blk,
            &m,
            &[(0x10000, 16, 0)],
            Some((VIRTIO_BLK_T_IN, 0)),
        );
        assert_eq!(len, 0);
        // Data buffer beyond the end of guest memory: the chain is refused.
        let q = MockSplitQueue::new(&m, 16);
        let raw = [
            RawDescriptor::from(SplitDescriptor::new(0x10000, 16, F_NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(0xff000, 0x10000, F_WRITE | F_NEXT, 2)),
            RawDescriptor::from(SplitDescriptor::new(0x30000, 1, F_WRITE, 0)),
        ];
        q.build_desc_chain(&raw).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let chain = queue.iter(&m).unwrap().next().unwrap();
        assert_eq!(blk.request(chain, &m), 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn looping_chain_ends_instead_of_spinning() {
        let path = image("loop", 4);
        let mut blk = Block::open(&path, false, "x").unwrap();
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let raw = [
            RawDescriptor::from(SplitDescriptor::new(0x10000, 16, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x20000, 512, F_WRITE, 0)),
        ];
        q.build_desc_chain(&raw).unwrap();
        // Point the last descriptor back at the first: a cycle.
        q.desc_table()
            .store(
                1,
                RawDescriptor::from(SplitDescriptor::new(0x20000, 512, F_WRITE | F_NEXT, 0)),
            )
            .unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let chain = queue.iter(&m).unwrap().next().unwrap();
        // Whatever it answers, it returns (the chain's length is bounded by the queue size).
        let _ = blk.request(chain, &m);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn zero_length_and_wrong_direction_buffers_fail_cleanly() {
        let path = image("dir", 4);
        let mut blk = Block::open(&path, false, "x").unwrap();
        let m = mem();
        // A read whose data buffer is device-readable (wrong direction): no room to
        // put data, so the read covers zero bytes and only the status is written.
        let (len, status) = serve_one(&mut blk, &m, VIRTIO_BLK_T_IN, 0, 512, 0);
        assert_eq!((len, status as u32), (1, VIRTIO_BLK_S_OK));
        // Zero-length data descriptor: nothing moves, status OK, no panic.
        let (len, status) = serve_one(&mut blk, &m, VIRTIO_BLK_T_IN, 0, 0, F_WRITE);
        assert_eq!((len, status as u32), (1, VIRTIO_BLK_S_OK));
        // A write whose payload is device-writable (wrong direction) writes nothing.
        let before = std::fs::read(&path).unwrap();
        let (_, status) = serve_one(&mut blk, &m, VIRTIO_BLK_T_OUT, 0, 512, F_WRITE);
        assert_eq!(status as u32, VIRTIO_BLK_S_OK);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        std::fs::remove_file(path).unwrap();
    }

    /// Serves a discard or write-zeroes request for one segment.
    fn zero_request(
        blk: &mut Block,
        m: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        sectors: u32,
        flags: u32,
    ) -> u32 {
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&sector.to_le_bytes());
        seg[8..12].copy_from_slice(&sectors.to_le_bytes());
        seg[12..16].copy_from_slice(&flags.to_le_bytes());
        m.write_slice(&seg, GuestAddress(0x20000)).unwrap();
        let (_, status) = serve(
            blk,
            m,
            &[(0x10000, 16, 0), (0x20000, 16, 0), (0x30000, 1, F_WRITE)],
            Some((kind, 0)),
        );
        status as u32
    }

    #[test]
    fn discard_and_write_zeroes_zero_the_range_and_nothing_else() {
        let path = image("zero", 16);
        let mut blk = Block::open(&path, false, "x").unwrap();
        let m = mem();
        assert_eq!(
            zero_request(&mut blk, &m, VIRTIO_BLK_T_DISCARD, 2, 2, 0),
            VIRTIO_BLK_S_OK
        );
        assert_eq!(
            zero_request(&mut blk, &m, VIRTIO_BLK_T_WRITE_ZEROES, 8, 1, 0),
            VIRTIO_BLK_S_OK
        );
        assert_eq!(
            zero_request(&mut blk, &m, VIRTIO_BLK_T_WRITE_ZEROES, 10, 1, 1),
            VIRTIO_BLK_S_OK
        );
        let data = std::fs::read(&path).unwrap();
        let zero = |s: usize, n: usize| data[s * 512..(s + n) * 512].iter().all(|&b| b == 0);
        assert!(zero(2, 2) && zero(8, 1) && zero(10, 1));
        assert!(
            !zero(1, 1) && !zero(4, 1) && !zero(9, 1) && !zero(11, 1),
            "neighbours untouched"
        );
        assert_eq!(data.len(), 16 * 512, "size kept");
        // Out of range, bad flags, read-only.
        assert_eq!(
            zero_request(&mut blk, &m, VIRTIO_BLK_T_DISCARD, 15, 2, 0),
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            zero_request(&mut blk, &m, VIRTIO_BLK_T_WRITE_ZEROES, 0, 1, 6),
            VIRTIO_BLK_S_UNSUPP
        );
        let mut ro = Block::open(&image("zero-ro", 4), true, "x").unwrap();
        assert_eq!(
            zero_request(&mut ro, &m, VIRTIO_BLK_T_DISCARD, 0, 1, 0),
            VIRTIO_BLK_S_IOERR
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn unaligned_image_is_refused() {
        let path = std::env::temp_dir().join(format!("hvm-blk-{}-odd", std::process::id()));
        std::fs::write(&path, [0u8; 1000]).unwrap();
        let e = Block::open(&path, false, "x").err().unwrap().to_string();
        assert!(e.contains("not a multiple of 512"), "{e}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn config_reports_capacity_in_sectors() {
        let path = image("cfg", 10);
        let blk = Block::open(&path, false, "x").unwrap();
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 10);
        std::fs::remove_file(path).unwrap();
    }
}
