//! virtio-fs (device type 26): a host directory the guest mounts with
//! `mount -t virtiofs TAG DIR`. The file server is a separate process
//! (virtiofsd) that speaks vhost-user: hvm hands it guest memory, the
//! rings, the queue notifications (KVM's ioeventfds) and the interrupt
//! (KVM's irqfd), and from then on guest and server talk without hvm.
//!
//! hvm only watches the connection: when the server goes away, the device
//! answers every request itself with EIO, so the guest's file operations
//! fail instead of waiting forever.

use super::{drain_queue, read_config_bytes, BackendEvent, QueueError, Served, VirtioDevice};
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// The virtio device ID of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// Longest tag the config space holds (bytes, not NUL-terminated when full).
pub const MAX_TAG_LEN: usize = 36;
/// Queue 0 is the high-priority queue (FORGET, INTERRUPT); 1 the requests.
const QUEUES: usize = 2;
/// libvhost-user's (C virtiofsd) largest ring.
const QUEUE_SIZE: u16 = 1024;
const VIRTIO_RING_F_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// What the guest may negotiate, if the server offers it too.
const GUEST_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;

// FUSE, as far as hvm needs it to refuse requests.
const FUSE_IN_HEADER_LEN: usize = 40;
const FUSE_OUT_HEADER_LEN: u32 = 16;
const FUSE_FORGET: u32 = 2;
const FUSE_BATCH_FORGET: u32 = 42;

/// Errors while connecting to the vhost-user server.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs {tag}: vhost-user {step} failed: {source}")]
    VhostUser {
        tag: String,
        step: &'static str,
        source: vhost::Error,
    },
    #[error("virtio-fs {tag}: the vhost-user server does not offer VIRTIO_F_VERSION_1 (features {features:#x})")]
    NotModern { tag: String, features: u64 },
    #[error("virtio-fs {tag}: cannot hand the rings to the server: {why}")]
    Rings { tag: String, why: String },
    #[error("virtio-fs {tag}: the vhost-user handshake did not finish: {why}")]
    Handshake { tag: String, why: String },
}

/// Where the device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Connected, rings not handed over (before DRIVER_OK or after a reset).
    Idle,
    /// The server owns the rings.
    Running,
    /// The server is gone: hvm answers each request with EIO.
    Failed,
}

/// A virtio-fs device whose queues a vhost-user server serves.
pub struct VhostUserFs {
    tag: String,
    config: [u8; MAX_TAG_LEN + 4],
    frontend: Frontend,
    /// The server's virtio features (the vhost-user bit removed).
    server_features: u64,
    /// The server speaks the vhost-user protocol-features extension
    /// (needed for VRING_ENABLE).
    protocol_features: bool,
    kicks: Vec<EventFd>,
    call: Option<EventFd>,
    state: State,
    /// In the failed state: which queues hvm took over (their positions
    /// are read back from the used ring first).
    taken_over: [bool; QUEUES],
}

/// The config space: the tag, then num_request_queues (le32): one.
fn config_space(tag: &str) -> [u8; MAX_TAG_LEN + 4] {
    let mut config = [0u8; MAX_TAG_LEN + 4];
    let n = tag.len().min(MAX_TAG_LEN);
    config[..n].copy_from_slice(&tag.as_bytes()[..n]);
    config[MAX_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
    config
}

fn vhost_error<'a>(tag: &'a str, step: &'static str) -> impl FnOnce(vhost::Error) -> FsError + 'a {
    move |source| FsError::VhostUser {
        tag: tag.to_string(),
        step,
        source,
    }
}

impl VhostUserFs {
    /// Takes over a connection to a vhost-user file server and learns what
    /// it offers. `stream` should have a read timeout, so that a server
    /// that hangs fails the step instead of hvm.
    pub fn connect(stream: UnixStream, tag: &str) -> Result<VhostUserFs, FsError> {
        let mut frontend = Frontend::from_stream(stream, QUEUES as u64);
        frontend
            .set_owner()
            .map_err(vhost_error(tag, "SET_OWNER"))?;
        let features = frontend
            .get_features()
            .map_err(vhost_error(tag, "GET_FEATURES"))?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::NotModern {
                tag: tag.to_string(),
                features,
            });
        }
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let protocol_features = features & protocol != 0;
        if protocol_features {
            let offered = frontend
                .get_protocol_features()
                .map_err(vhost_error(tag, "GET_PROTOCOL_FEATURES"))?;
            // Only what hvm uses: no backend-initiated channel, no config
            // space from the server (the tag is hvm's), no inflight tracking.
            let wanted =
                offered & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
            frontend
                .set_protocol_features(wanted)
                .map_err(vhost_error(tag, "SET_PROTOCOL_FEATURES"))?;
            if wanted.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request is acknowledged: a server that cannot map
                // guest memory fails SET_MEM_TABLE instead of later, quietly.
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        Ok(VhostUserFs::new(
            frontend,
            tag,
            features & !protocol,
            protocol_features,
            State::Idle,
        ))
    }

    /// The label of the device serving `tag` (logs, `hvm info`).
    pub fn label_for(tag: &str) -> String {
        format!("virtio-fs {tag}")
    }

    fn new(
        frontend: Frontend,
        tag: &str,
        server_features: u64,
        protocol_features: bool,
        state: State,
    ) -> VhostUserFs {
        VhostUserFs {
            tag: tag.to_string(),
            config: config_space(tag),
            frontend,
            server_features,
            protocol_features,
            kicks: Vec::new(),
            call: None,
            state,
            taken_over: [false; QUEUES],
        }
    }

    /// A device whose file server is gone from the start: hvm answers
    /// every request itself (EIO), reading positions and headers from
    /// guest memory. Only for the fuzz target `virtio_fs`, which drives
    /// that path with arbitrary rings (`stream`: a connection nobody serves).
    #[cfg(fuzzing)]
    pub fn orphaned(stream: UnixStream, tag: &str) -> VhostUserFs {
        let frontend = Frontend::from_stream(stream, QUEUES as u64);
        VhostUserFs::new(frontend, tag, GUEST_FEATURES, false, State::Failed)
    }

    /// Hands guest memory and the rings to the server.
    fn start_server(
        &mut self,
        features: u64,
        queues: &[Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<(), FsError> {
        let tag = self.tag.as_str();
        let step = |what| vhost_error(tag, what);
        let rings_error = |why: String| FsError::Rings {
            tag: tag.to_string(),
            why,
        };
        let protocol = if self.protocol_features {
            VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        } else {
            0
        };
        self.frontend
            .set_features(features | protocol)
            .map_err(step("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| rings_error(format!("guest memory is not shareable: {e}")))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(step("SET_MEM_TABLE"))?;
        let call = self
            .call
            .as_ref()
            .ok_or_else(|| rings_error("no interrupt eventfd".into()))?;
        for (index, queue) in queues.iter().enumerate() {
            if !queue.ready() {
                continue;
            }
            let kick = self
                .kicks
                .get(index)
                .ok_or_else(|| rings_error(format!("no eventfd for queue {index}")))?;
            let host = |addr: u64| {
                mem.get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|e| rings_error(format!("queue {index} ring at {addr:#x}: {e}")))
            };
            let rings = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host(queue.desc_table())?,
                used_ring_addr: host(queue.used_ring())?,
                avail_ring_addr: host(queue.avail_ring())?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(index, queue.size())
                .map_err(step("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(index, &rings)
                .map_err(step("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(index, 0)
                .map_err(step("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(index, call)
                .map_err(step("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(index, kick)
                .map_err(step("SET_VRING_KICK"))?;
            if self.protocol_features {
                self.frontend
                    .set_vring_enable(index, true)
                    .map_err(step("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Ends the connection from hvm's side (tests: a server that vanished).
    #[cfg(test)]
    fn frontend_shutdown_for_test(&self) {
        // SAFETY: shuts down a socket this device owns.
        unsafe { libc::shutdown(self.frontend.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// The server is gone: say so once, then answer requests in its place.
    fn server_gone(&mut self, why: &str) {
        if self.state != State::Failed {
            log::error!(
                "virtio-fs {}: the file server is gone ({why}); file operations on this share now fail with EIO",
                self.tag
            );
            self.state = State::Failed;
            self.taken_over = [false; QUEUES];
        }
    }
}

/// Answers one FUSE request with EIO (FORGETs expect no answer); returns
/// the bytes written.
fn refuse(chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(mem), chain.writer(mem)) else {
        return 0;
    };
    let mut header = [0u8; FUSE_IN_HEADER_LEN];
    if reader.read_exact(&mut header).is_err() {
        return 0;
    }
    let opcode = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if matches!(opcode, FUSE_FORGET | FUSE_BATCH_FORGET) {
        return 0;
    }
    let mut out = [0u8; FUSE_OUT_HEADER_LEN as usize];
    out[..4].copy_from_slice(&FUSE_OUT_HEADER_LEN.to_le_bytes());
    out[4..8].copy_from_slice(&(-libc::EIO).to_le_bytes());
    out[8..16].copy_from_slice(&header[8..16]); // unique
    match writer.write_all(&out) {
        Ok(()) => FUSE_OUT_HEADER_LEN,
        Err(_) => 0,
    }
}

impl VirtioDevice for VhostUserFs {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn label(&self) -> String {
        VhostUserFs::label_for(&self.tag)
    }

    fn features(&self) -> u64 {
        self.server_features & GUEST_FEATURES
    }

    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUES]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        features: u64,
        queues: &[Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<(), QueueError> {
        if self.state == State::Failed {
            // hvm answers the requests; nothing to hand over.
            return Ok(());
        }
        match self.start_server(features, queues, mem) {
            Ok(()) => {
                self.state = State::Running;
                log::info!("virtio-fs {}: file server has the rings", self.tag);
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                self.server_gone(&why);
                Err(QueueError::Backend(why))
            }
        }
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Served, QueueError> {
        if self.state != State::Failed {
            return Ok(Served::default());
        }
        if let Some(taken) = self.taken_over.get_mut(index) {
            if !*taken {
                // The server used buffers up to the used ring's index; what
                // the guest made available after that is unanswered.
                let used = queue.used_idx(mem, Ordering::Acquire)?;
                queue.set_next_avail(used.0);
                queue.set_next_used(used.0);
                *taken = true;
            }
        }
        drain_queue(queue, mem, |chain| refuse(chain, mem))
    }

    fn reset(&mut self) {
        if self.state == State::Running {
            // GET_VRING_BASE stops a ring: the server must not touch guest
            // memory the driver is about to reuse.
            for index in 0..QUEUES {
                if let Err(e) = self.frontend.get_vring_base(index) {
                    self.server_gone(&format!("GET_VRING_BASE: {e}"));
                    return;
                }
            }
            self.state = State::Idle;
        }
        self.taken_over = [false; QUEUES];
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.frontend.as_raw_fd())
    }

    fn backend_ready(&mut self) -> BackendEvent {
        if self.state == State::Failed {
            return BackendEvent::Nothing;
        }
        // The server never writes unasked; readable means closed, unless a
        // late reply is in flight (its reader holds the device, so peek).
        let mut byte = 0u8;
        // SAFETY: peeks at most one byte into a live local.
        let n = unsafe {
            libc::recv(
                self.frontend.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let err = std::io::Error::last_os_error();
        if n == 0 || (n < 0 && err.kind() != std::io::ErrorKind::WouldBlock) {
            self.server_gone(if n == 0 {
                "connection closed"
            } else {
                "connection failed"
            });
            return BackendEvent::QueuesToHvm;
        }
        BackendEvent::Nothing
    }

    fn queues_external(&self) -> bool {
        self.state != State::Failed
    }

    fn may_have_external_queues(&self) -> bool {
        true
    }

    fn set_queue_events(&mut self, kicks: Vec<EventFd>, call: EventFd) {
        self.kicks = kicks;
        self.call = Some(call);
    }
}

/// A virtio-fs device whose file server is still starting: the vhost-user
/// handshake runs beside the boot and hands the device over when done.
/// A kernel reaches its virtio drivers long after a server is up, so the
/// guest does not wait for the server; the driver's first access to the
/// device waits for the handover if it must. If the handshake fails, hvm
/// stops the VM with its error; the device meanwhile offers nothing.
pub struct StartingFs {
    tag: String,
    /// hvm's end of the connection (a duplicate), watched from the start
    /// so that a server that goes away is noticed whenever it does.
    socket: UnixStream,
    handover: Option<std::sync::mpsc::Receiver<VhostUserFs>>,
    fs: Option<VhostUserFs>,
    /// The queue events, kept for the device until it is handed over.
    events: Option<(Vec<EventFd>, EventFd)>,
}

impl StartingFs {
    pub fn new(
        tag: &str,
        socket: UnixStream,
        handover: std::sync::mpsc::Receiver<VhostUserFs>,
    ) -> StartingFs {
        StartingFs {
            tag: tag.to_string(),
            socket,
            handover: Some(handover),
            fs: None,
            events: None,
        }
    }

    /// Takes the device once it is handed over (waiting for it: the
    /// handshake ends within its reply timeout); one whose handshake
    /// failed never comes.
    fn settle(&mut self) {
        let Some(handover) = self.handover.take() else {
            return;
        };
        if let Ok(mut fs) = handover.recv() {
            if let Some((kicks, call)) = self.events.take() {
                fs.set_queue_events(kicks, call);
            }
            self.fs = Some(fs);
        }
    }
}

impl VirtioDevice for StartingFs {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn label(&self) -> String {
        VhostUserFs::label_for(&self.tag)
    }

    fn prepare(&mut self) {
        self.settle();
    }

    fn features(&self) -> u64 {
        self.fs.as_ref().map_or(0, |fs| fs.features())
    }

    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUES]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&config_space(&self.tag), offset, data);
    }

    fn activate(
        &mut self,
        features: u64,
        queues: &[Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<(), QueueError> {
        match &mut self.fs {
            Some(fs) => fs.activate(features, queues, mem),
            None => Err(QueueError::Backend("the file server did not start".into())),
        }
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Served, QueueError> {
        match &mut self.fs {
            Some(fs) => fs.process_queue(index, queue, mem),
            None => Ok(Served::default()),
        }
    }

    fn reset(&mut self) {
        if let Some(fs) = &mut self.fs {
            fs.reset();
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.socket.as_raw_fd())
    }

    fn backend_ready(&mut self) -> BackendEvent {
        // (The server's replies during the handshake wake this too: the
        // device loop then waits for the handover, early in the boot,
        // rather than miss a hang-up that comes before it.)
        self.settle();
        match &mut self.fs {
            Some(fs) => fs.backend_ready(),
            None => BackendEvent::Nothing,
        }
    }

    fn queues_external(&self) -> bool {
        self.fs.as_ref().is_none_or(|fs| fs.queues_external())
    }

    fn may_have_external_queues(&self) -> bool {
        true
    }

    fn set_queue_events(&mut self, kicks: Vec<EventFd>, call: EventFd) {
        match &mut self.fs {
            Some(fs) => fs.set_queue_events(kicks, call),
            None => self.events = Some((kicks, call)),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The frontend against a small vhost-user server written here from the
    //! protocol (docs: vhost-user.rst): what it is told, in which order,
    //! with which file descriptors.
    use super::*;
    use std::collections::HashMap;
    use std::fs::File;
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::FileExt;
    use vm_memory::{Bytes, GuestAddress};

    const GET_FEATURES: u32 = 1;
    const SET_FEATURES: u32 = 2;
    const SET_OWNER: u32 = 3;
    const SET_MEM_TABLE: u32 = 5;
    const SET_VRING_NUM: u32 = 8;
    const SET_VRING_ADDR: u32 = 9;
    const SET_VRING_BASE: u32 = 10;
    const GET_VRING_BASE: u32 = 11;
    const SET_VRING_KICK: u32 = 12;
    const SET_VRING_CALL: u32 = 13;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const SET_VRING_ENABLE: u32 = 18;
    const NEED_REPLY: u32 = 0x8;
    const SERVER_FEATURES: u64 =
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | (1 << 30) | (1 << 40);

    /// One message as the server got it.
    struct Message {
        request: u32,
        payload: Vec<u8>,
        fds: Vec<File>,
    }

    /// Reads one message (header, payload, SCM_RIGHTS fds); None at EOF.
    fn receive(sock: &UnixStream) -> Option<Message> {
        let mut header = [0u8; 12];
        let mut cmsg = [0u64; 64];
        let mut iov = libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: 12,
        };
        // SAFETY: msghdr points at live buffers of the given sizes.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        // SAFETY: as above.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
        if n <= 0 {
            return None;
        }
        assert_eq!(n, 12, "header in one piece");
        let mut fds = Vec::new();
        // SAFETY: walks the control messages the kernel wrote into cmsg.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_type == libc::SCM_RIGHTS {
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    let data = libc::CMSG_DATA(c) as *const i32;
                    for i in 0..count {
                        fds.push(File::from_raw_fd(*data.add(i)));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
        let mut payload = vec![0u8; word(8) as usize];
        (&*sock).read_exact(&mut payload).ok()?;
        let request = word(0);
        if word(4) & NEED_REPLY != 0
            && !matches!(
                request,
                GET_FEATURES | GET_PROTOCOL_FEATURES | GET_VRING_BASE
            )
        {
            reply(sock, request, &0u64.to_le_bytes());
        }
        Some(Message {
            request,
            payload,
            fds,
        })
    }

    fn reply(sock: &UnixStream, request: u32, body: &[u8]) {
        let mut out = Vec::new();
        out.extend_from_slice(&request.to_le_bytes());
        out.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
        (&*sock).write_all(&out).unwrap();
    }

    /// Serves until `stop_after` requests arrived or the frontend hangs up.
    fn server(sock: UnixStream) -> std::thread::JoinHandle<Vec<Message>> {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Some(m) = receive(&sock) {
                match m.request {
                    GET_FEATURES => reply(&sock, GET_FEATURES, &SERVER_FEATURES.to_le_bytes()),
                    GET_PROTOCOL_FEATURES => {
                        let mq_ack_config = 0x1u64 | 0x8 | 0x200;
                        reply(&sock, GET_PROTOCOL_FEATURES, &mq_ack_config.to_le_bytes())
                    }
                    GET_VRING_BASE => {
                        let mut state = m.payload[..4].to_vec();
                        state.extend_from_slice(&7u32.to_le_bytes());
                        reply(&sock, GET_VRING_BASE, &state)
                    }
                    _ => {}
                }
                seen.push(m);
            }
            seen
        })
    }

    fn u64_at(b: &[u8], i: usize) -> u64 {
        u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
    }

    #[test]
    fn negotiation_offers_the_guest_only_what_both_sides_know() {
        let (front, back) = UnixStream::pair().unwrap();
        let server = server(back);
        let fs = VhostUserFs::connect(front, "hostshare").unwrap();
        // Bit 40 is the server's alone, bit 30 the vhost-user protocol's.
        assert_eq!(fs.features(), VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        let mut config = [0u8; 40];
        fs.read_config(0, &mut config);
        assert_eq!(&config[..9], b"hostshare");
        assert!(config[9..36].iter().all(|&b| b == 0));
        assert_eq!(u32::from_le_bytes(config[36..].try_into().unwrap()), 1);
        drop(fs);
        let seen: Vec<u32> = server.join().unwrap().iter().map(|m| m.request).collect();
        assert_eq!(
            seen,
            [
                SET_OWNER,
                GET_FEATURES,
                GET_PROTOCOL_FEATURES,
                SET_PROTOCOL_FEATURES
            ]
        );
    }

    #[test]
    fn a_starting_device_waits_for_its_handover_and_passes_on_what_came_before() {
        let (front, back) = UnixStream::pair().unwrap();
        let server = server(back);
        let socket = front.try_clone().unwrap();
        let (handover, receiver) = std::sync::mpsc::channel();
        let mut dev = StartingFs::new("later", socket, receiver);
        // Before the handover: what hvm knows alone.
        assert_eq!(dev.device_id(), VIRTIO_ID_FS);
        assert_eq!(dev.queue_sizes(), &[QUEUE_SIZE; QUEUES]);
        let mut config = [0u8; 5];
        dev.read_config(0, &mut config);
        assert_eq!(&config, b"later");
        assert!(dev.queues_external());
        assert!(dev.backend_fd().is_some());
        let kicks = vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
        dev.set_queue_events(kicks, EventFd::new(0).unwrap());
        // The handshake ends on another thread while the driver waits.
        let handshake = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            handover
                .send(VhostUserFs::connect(front, "later").unwrap())
                .unwrap();
        });
        dev.prepare();
        handshake.join().unwrap();
        assert_eq!(dev.features(), VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        let fs = dev.fs.as_ref().unwrap();
        assert_eq!(fs.kicks.len(), 2, "the queue events reached the device");
        assert!(fs.call.is_some());
        drop(dev);
        server.join().unwrap();
    }

    #[test]
    fn a_starting_device_whose_handshake_failed_offers_nothing() {
        let (front, _back) = UnixStream::pair().unwrap();
        let (handover, receiver) = std::sync::mpsc::channel::<VhostUserFs>();
        let mut dev = StartingFs::new("gone", front, receiver);
        drop(handover);
        dev.prepare();
        assert_eq!(dev.features(), 0, "no VERSION_1: the driver gives up");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let queues = [Queue::new(16).unwrap(), Queue::new(16).unwrap()];
        assert!(dev.activate(0, &queues, &mem).is_err());
        assert!(matches!(dev.backend_ready(), BackendEvent::Nothing));
    }

    #[test]
    fn activation_hands_over_shared_memory_rings_and_eventfds() {
        let (front, back) = UnixStream::pair().unwrap();
        let server = server(back);
        let mut fs = VhostUserFs::connect(front, "t").unwrap();
        let mem = crate::vmm::memory::create_guest_memory(64 << 20, true).unwrap();
        let kicks: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        fs.set_queue_events(
            kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
            call.try_clone().unwrap(),
        );
        let mut queues = Vec::new();
        for i in 0..2u64 {
            let mut q = Queue::new(QUEUE_SIZE).unwrap();
            q.set_size(256);
            let at = |base: u64| GuestAddress(base + i * 0x10_000);
            q.try_set_desc_table_address(at(0x10_0000)).unwrap();
            q.try_set_avail_ring_address(at(0x20_0000)).unwrap();
            q.try_set_used_ring_address(at(0x30_0000)).unwrap();
            q.set_ready(true);
            queues.push(q);
        }
        fs.activate(VIRTIO_F_VERSION_1, &queues, &mem).unwrap();
        assert!(fs.queues_external());
        fs.reset();
        drop(fs);
        let seen = server.join().unwrap();
        let by: HashMap<u32, Vec<&Message>> = seen.iter().fold(HashMap::new(), |mut m, msg| {
            m.entry(msg.request).or_default().push(msg);
            m
        });
        // The guest's features plus the protocol bit.
        assert_eq!(
            u64_at(&by[&SET_FEATURES][0].payload, 0),
            VIRTIO_F_VERSION_1 | (1 << 30)
        );
        // One region, the memfd: what the server writes there, the guest reads.
        let table = by[&SET_MEM_TABLE][0];
        assert_eq!(
            u32::from_le_bytes(table.payload[..4].try_into().unwrap()),
            1
        );
        assert_eq!(u64_at(&table.payload, 8), 0, "guest address");
        assert_eq!(u64_at(&table.payload, 16), 64 << 20, "size");
        let region = mem.find_region(GuestAddress(0)).unwrap();
        assert_eq!(
            u64_at(&table.payload, 24),
            region.as_ptr() as u64,
            "hvm's address"
        );
        assert_eq!(table.fds.len(), 1);
        table.fds[0]
            .write_all_at(b"from the server", 0x1234)
            .unwrap();
        let mut got = [0u8; 15];
        mem.read_slice(&mut got, GuestAddress(0x1234)).unwrap();
        assert_eq!(&got, b"from the server");
        // Each queue: size, rings at hvm's addresses of the guest's rings, base 0.
        for (i, n) in by[&SET_VRING_NUM].iter().enumerate() {
            assert_eq!(
                u32::from_le_bytes(n.payload[..4].try_into().unwrap()),
                i as u32
            );
            assert_eq!(u32::from_le_bytes(n.payload[4..8].try_into().unwrap()), 256);
        }
        for (i, a) in by[&SET_VRING_ADDR].iter().enumerate() {
            let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
            let off = i as u64 * 0x10_000;
            assert_eq!(u64_at(&a.payload, 8), host(0x10_0000 + off), "descriptors");
            assert_eq!(u64_at(&a.payload, 16), host(0x30_0000 + off), "used ring");
            assert_eq!(
                u64_at(&a.payload, 24),
                host(0x20_0000 + off),
                "available ring"
            );
        }
        assert_eq!(by[&SET_VRING_BASE].len(), 2);
        assert_eq!(by[&SET_VRING_ENABLE].len(), 2);
        // The kick the server got is the queue's eventfd; its call, the interrupt.
        for (i, k) in by[&SET_VRING_KICK].iter().enumerate() {
            kicks[i].write(1).unwrap();
            let mut v = [0u8; 8];
            (&k.fds[0]).read_exact(&mut v).unwrap();
            assert_eq!(u64::from_le_bytes(v), 1);
        }
        (&by[&SET_VRING_CALL][1].fds[0])
            .write_all(&1u64.to_le_bytes())
            .unwrap();
        assert_eq!(call.read().unwrap(), 1);
        // A reset stops both rings.
        assert_eq!(by[&GET_VRING_BASE].len(), 2);
    }

    #[test]
    fn a_server_that_goes_away_leaves_requests_answered_with_eio() {
        use virtio_queue::desc::{split::Descriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        let (front, back) = UnixStream::pair().unwrap();
        let server = server(back);
        let mut fs = VhostUserFs::connect(front, "t").unwrap();
        // The server ends: the next readiness of the connection says so.
        fs.frontend_shutdown_for_test();
        server.join().unwrap();
        assert_eq!(fs.backend_ready(), BackendEvent::QueuesToHvm);
        assert!(!fs.queues_external());
        assert_eq!(fs.backend_ready(), BackendEvent::Nothing);

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        // A FUSE request: a 40-byte in-header (LOOKUP, unique 77), room for the answer.
        let mut header = [0u8; 40];
        header[..4].copy_from_slice(&40u32.to_le_bytes());
        header[4..8].copy_from_slice(&1u32.to_le_bytes());
        header[8..16].copy_from_slice(&77u64.to_le_bytes());
        mem.write_slice(&header, GuestAddress(0x8000)).unwrap();
        let descs = [
            RawDescriptor::from(Descriptor::new(0x8000, 40, 1, 1)),
            RawDescriptor::from(Descriptor::new(0x9000, 64, 2, 0)),
        ];
        mock.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        let served = fs.process_queue(1, &mut queue, &mem).unwrap();
        assert!(served.used);
        let mut out = [0u8; 16];
        mem.read_slice(&mut out, GuestAddress(0x9000)).unwrap();
        assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), 16);
        assert_eq!(
            i32::from_le_bytes(out[4..8].try_into().unwrap()),
            -libc::EIO
        );
        assert_eq!(u64_at(&out, 8), 77);
    }
}
