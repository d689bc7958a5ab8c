/* hvmtest: hvm's tier-1 test guest. A freestanding program loaded by hvm
 * exactly like a Linux kernel (ELF vmlinux or bzImage), entered in 64-bit
 * mode with boot_params in RSI. It checks what hvm promised from inside
 * the guest and reports on COM1 ("hvmtest: ok NAME" / "hvmtest: FAIL NAME"),
 * then leaves through the debug-exit port with the number of failures.
 *
 * Kernel command line: mode=check|hello|echo|pit|reset|acpi-off|triple|spin|
 * garbage|ioloop|exit|count|chatter|blkread|blkflood|blklat|hugereq|abuse|probe;
 * mem=MiB cpus=N initrd_fnv=HEX (what to expect); n=COUNT (ioloop, blklat);
 * code=N (exit). Plain integer code only, so that even a software KVM
 * without hardware virtualization can run it.
 *
 * Modes that never exit: count prints "hvmtest: tick N" every 2^26 TSC
 * cycles (20-45 ms at 1.5-3.4 GHz); chatter prints "hvmtest: chatter N ..."
 * lines of ~120 characters as fast as it can; blkflood keeps 85 reads of
 * 1 MiB in flight on the virtio-blk disk, re-posting each one it gets back
 * (prints "hvmtest: blkflood running" after the first completion).
 * The other virtio-blk modes (one drive, the first virtio-mmio window at
 * 0xd0000000, polled, no interrupts): blkread reads sector 0 (4 KiB) and
 * prints "hvmtest: blkread status S fnv=0xH"; hugereq posts one read of
 * 63 x 64 MiB (~4 GiB, all aliasing guest RAM 64..128 MiB) and prints
 * "hvmtest: hugereq status S used_len L". Both exit 0 once answered.
 * abuse misdrives the disk n times (see abuse()) and exits 0. */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

void triple_fault(void);
void spin_here(void) __attribute__((noreturn));

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }
static inline u16 rd16(u64 a) { return *(volatile u16 *)a; }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline u64 rd64(u64 a) { return *(volatile u64 *)a; }
static inline void wr64(u64 a, u64 v) { *(volatile u64 *)a = v; }
static inline void wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }

void *memset(void *d, int c, u64 n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
void *memcpy(void *d, const void *s, u64 n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }

#define COM1 0x3f8
#define DEBUG_EXIT 0xf4
#define BOOT_MARKER 0xf5
#define SECCOMP_PROBE 0xf6 /* debug builds of hvm: the vCPU thread tries a forbidden call */

static void putc_(char c) {
    while (!(inb(COM1 + 5) & 0x20)) {}
    outb(COM1, (u8)c);
}
static void puts_(const char *s) { while (*s) { if (*s == '\n') putc_('\r'); putc_(*s++); } }
static void putu(u64 v) { char b[21]; int i = 20; b[i] = 0; do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v); puts_(b + i); }
static void putx(u64 v) { char b[19]; int i = 18; b[i] = 0; do { b[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v); b[--i] = 'x'; b[--i] = '0'; puts_(b + i); }

static void exit_with(u8 code) { outb(DEBUG_EXIT, code); for (;;) __asm__ volatile("cli; hlt"); }

/* ---- command line ---- */
static const char *cmdline;
static int streq(const char *a, const char *b) { while (*a && *a == *b) { a++; b++; } return *a == *b; }
/* Finds "key=" in the command line; returns the value (up to a space) in buf. */
static int arg(const char *key, char *buf, int len) {
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ') p++;
        const char *k = key, *q = p;
        while (*k && *q == *k) { k++; q++; }
        if (!*k && *q == '=') {
            q++;
            int i = 0;
            while (*q && *q != ' ' && i < len - 1) buf[i++] = *q++;
            buf[i] = 0;
            return 1;
        }
        while (*p && *p != ' ') p++;
    }
    return 0;
}
static u64 parse_num(const char *s) {
    u64 v = 0;
    if (s[0] == '0' && s[1] == 'x') {
        for (s += 2; *s; s++) v = v * 16 + (u64)(*s <= '9' ? *s - '0' : (*s | 32) - 'a' + 10);
    } else {
        for (; *s >= '0' && *s <= '9'; s++) v = v * 10 + (u64)(*s - '0');
    }
    return v;
}
static int num_arg(const char *key, u64 *out) { char b[32]; if (!arg(key, b, sizeof b)) return 0; *out = parse_num(b); return 1; }

/* ---- checks ---- */
static int failures;
static void result(const char *name, int ok, const char *detail, u64 value) {
    puts_(ok ? "hvmtest: ok " : "hvmtest: FAIL ");
    puts_(name);
    if (detail) { puts_(" "); puts_(detail); putx(value); }
    puts_("\n");
    if (!ok) failures++;
}

static u64 bp; /* boot_params */
#define BP_ACPI_RSDP 0x070
#define BP_E820_ENTRIES 0x1e8
#define BP_HDR_MAGIC 0x202
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMDLINE_PTR 0x228
#define BP_E820_TABLE 0x2d0
#define GAP_START 0xc0000000UL
#define GAP_END 0x100000000UL

static u64 low_end, high_end; /* RAM ends below and above the gap (0 when none above) */

static void check_e820(u64 mem_mib) {
    u32 n = rd8(bp + BP_E820_ENTRIES);
    u64 ram = 0;
    int overlap = 0;
    low_end = high_end = 0;
    for (u32 i = 0; i < n; i++) {
        u64 e = bp + BP_E820_TABLE + i * 20;
        u64 addr = rd64(e), size = rd64(e + 8);
        u32 type = rd32(e + 16);
        puts_("hvmtest: e820 "); putx(addr); puts_(" "); putx(size); puts_(" "); putu(type); puts_("\n");
        if (type != 1) continue;
        ram += size;
        if (addr < GAP_END && addr + size > GAP_START) overlap = 1;
        if (addr + size <= GAP_START && addr + size > low_end) low_end = addr + size;
        if (addr >= GAP_END) high_end = addr + size;
    }
    /* hvm's map: RAM except the legacy hole 0x9fc00..0x100000. */
    u64 expected = (mem_mib << 20) - (0x100000 - 0x9fc00);
    result("e820-total", ram == expected, "ram=", ram);
    result("e820-gap", !overlap, 0, 0);
    result("e820-high", (mem_mib << 20) > GAP_START ? high_end == GAP_END + (mem_mib << 20) - GAP_START : high_end == 0,
           "high_end=", high_end);
}

/* Maps the 2 MiB page holding `addr` (any address below 512 GiB) identity. */
static u64 pds[8][512] __attribute__((aligned(4096)));
static int pd_used;
static void map(u64 addr) {
    u64 cr3; __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    u64 pml4e = rd64(cr3 & ~0xfffUL);
    u64 pdpt = pml4e & 0x000ffffffffff000UL;
    u64 slot = pdpt + ((addr >> 30) & 511) * 8;
    u64 pdpte = rd64(slot);
    if (!(pdpte & 1)) {
        if (pd_used == 8) return;
        u64 pd = (u64)pds[pd_used++];
        wr64(slot, pd | 3);
        pdpte = rd64(slot);
    }
    u64 pd = pdpte & 0x000ffffffffff000UL;
    wr64(pd + ((addr >> 21) & 511) * 8, (addr & ~0x1fffffUL) | 0x83);
    __asm__ volatile("invlpg (%0)" ::"r"(addr) : "memory");
}

static int probe(u64 addr) {
    map(addr);
    u64 old = rd64(addr);
    wr64(addr, 0x5a5aa5a5deadbeefUL ^ addr);
    int ok = rd64(addr) == (0x5a5aa5a5deadbeefUL ^ addr);
    wr64(addr, old);
    return ok;
}

static void check_ram_edges(void) {
    result("ram-first-page", probe(0x1000), "addr=", 0x1000);
    result("ram-last-low-page", probe(low_end - 8), "addr=", low_end - 8);
    if (high_end) {
        result("ram-first-high-page", probe(GAP_END), "addr=", GAP_END);
        result("ram-last-high-page", probe(high_end - 8), "addr=", high_end - 8);
    }
}

static void check_cmdline(void) {
    u32 ptr = rd32(bp + BP_CMDLINE_PTR);
    puts_("hvmtest: cmdline "); puts_((const char *)(u64)ptr); puts_("\n");
    result("cmdline-ptr", ptr != 0 && rd16(bp + BP_HDR_MAGIC) == 0x6448, "ptr=", ptr);
}

/* FNV-1a 32 of n bytes at guest-physical a. */
static u32 fnv1a(u64 a, u64 n) { u32 h = 2166136261u; while (n--) h = (h ^ rd8(a++)) * 16777619u; return h; }

static void check_initrd(void) {
    u64 want;
    u32 addr = rd32(bp + BP_RAMDISK_IMAGE), size = rd32(bp + BP_RAMDISK_SIZE);
    if (!num_arg("initrd_fnv", &want)) {
        result("initrd-none", addr == 0 && size == 0, "size=", size);
        return;
    }
    u32 h = fnv1a(addr, size);
    puts_("hvmtest: initrd at "); putx(addr); puts_(" size "); putu(size); puts_("\n");
    result("initrd-aligned", (addr & 0xfff) == 0 && addr + size <= low_end, "addr=", addr);
    result("initrd-checksum", h == (u32)want, "fnv=", h);
}

static u8 sum(u64 a, u64 n) { u8 s = 0; while (n--) s = (u8)(s + rd8(a++)); return s; }

static void check_acpi(u64 cpus) {
    u64 rsdp = rd64(bp + BP_ACPI_RSDP);
    int sig = rsdp && rd32(rsdp) == 0x20445352 && rd32(rsdp + 4) == 0x20525450; /* "RSD PTR " */
    result("acpi-rsdp", sig && sum(rsdp, 20) == 0 && sum(rsdp, 36) == 0, "rsdp=", rsdp);
    if (!sig) return;
    u64 xsdt = rd64(rsdp + 24);
    u32 xlen = rd32(xsdt + 4);
    result("acpi-xsdt", rd32(xsdt) == 0x54445358 && sum(xsdt, xlen) == 0, "xsdt=", xsdt);
    int tables_ok = 1, lapics = 0;
    u64 fadt = 0;
    for (u32 off = 36; off + 8 <= xlen; off += 8) {
        u64 t = rd64(xsdt + off);
        u32 len = rd32(t + 4);
        if (sum(t, len) != 0) tables_ok = 0;
        if (rd32(t) == 0x50434146) fadt = t; /* FACP */
        if (rd32(t) == 0x43495041) {        /* APIC */
            for (u32 o = 44; o + 2 <= len; o += rd8(t + o + 1)) {
                if (rd8(t + o + 1) == 0) break;
                if (rd8(t + o) == 0 && (rd32(t + o + 4) & 1)) lapics++;
            }
        }
    }
    result("acpi-checksums", tables_ok, 0, 0);
    result("acpi-madt-cpus", (u64)lapics == cpus, "lapics=", (u64)lapics);
    if (fadt) {
        u64 dsdt = rd64(fadt + 140);
        result("acpi-dsdt", rd32(dsdt) == 0x54445344 && sum(dsdt, rd32(dsdt + 4)) == 0, "dsdt=", dsdt);
    } else {
        result("acpi-fadt", 0, 0, 0);
    }
}

static void check_cpuid(void) {
    u32 a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    result("cpuid-hypervisor-bit", (c >> 31) & 1, 0, 0);
    result("cpuid-bsp-apic-id", (b >> 24) == 0, "apic_id=", b >> 24);
}

static void check_pci(void) {
    outl(0xcf8, 0x80000000);
    u32 id = inl(0xcfc);
    result("pci-host-bridge", id == 0x00081b36, "id=", id);
    outl(0xcf8, 0x80000800);
    result("pci-empty-slot", inl(0xcfc) == 0xffffffff, 0, 0);
}

/* String I/O on a byte-wide port is count accesses of one byte each: three
 * bytes by rep outsb leave the last in COM1's scratch register, and eight
 * by rep insb read it eight times. */
static void check_string_io(void) {
    static const u8 out[3] = {0x11, 0x22, 0x5a};
    u8 in[8] = {0};
    const u8 *src = out; u8 *dst = in; u64 n = 3;
    __asm__ volatile("rep outsb" : "+S"(src), "+c"(n) : "d"((u16)(COM1 + 7)) : "memory");
    n = 8;
    __asm__ volatile("rep insb" : "+D"(dst), "+c"(n) : "d"((u16)(COM1 + 7)) : "memory");
    int ok = 1;
    for (int i = 0; i < 8; i++) ok &= in[i] == 0x5a;
    result("string-io", ok, "first=", (u64)in[0] | (u64)in[1] << 8 | (u64)in[7] << 56);
}

static void check_unused_port(void) {
    u8 v = inb(0x2f8 + 5);
    result("unused-port-reads-ff", v == 0xff, "value=", v);
}

/* Is there an i8254? Program channel 0 (mode 2, count 0xffff) and latch it
 * twice: a real PIT counts down; an empty bus reads 0xffff both times. */
static int pit_present(void) {
    outb(0x43, 0x34); outb(0x40, 0xff); outb(0x40, 0xff);
    u32 seen[2];
    for (int i = 0; i < 2; i++) {
        for (volatile int d = 0; d < 100000; d++) {}
        outb(0x43, 0x00);
        seen[i] = inb(0x40); seen[i] |= (u32)inb(0x40) << 8;
    }
    return seen[0] != seen[1] || seen[0] != 0xffff;
}

/* ---- modes ---- */
static u64 acpi_table(u32 signature) {
    u64 rsdp = rd64(bp + BP_ACPI_RSDP);
    u64 xsdt = rd64(rsdp + 24);
    for (u32 off = 36; off + 8 <= rd32(xsdt + 4); off += 8) {
        u64 t = rd64(xsdt + off);
        if (rd32(t) == signature) return t;
    }
    return 0;
}

static void acpi_poweroff(void) {
    u64 fadt = acpi_table(0x50434146);
    if (!fadt) { puts_("hvmtest: no FADT\n"); exit_with(90); }
    /* SLEEP_CONTROL_REG is a GAS at offset 244; its address at +4. SLP_TYP 5, SLP_EN. */
    u16 port = (u16)rd64(fadt + 248);
    outb(port, (5 << 2) | (1 << 5));
    puts_("hvmtest: still running after ACPI power-off\n");
    exit_with(91);
}

static void garbage(void) {
    /* Every port hvm does not use to stop the VM, with all widths. */
    for (u32 p = 0; p < 0x10000; p += (p < 0x1000 ? 1 : 7)) {
        if ((p >= 0x60 && p <= 0x64) || p == DEBUG_EXIT || p == BOOT_MARKER || p == SECCOMP_PROBE || p == 0x505 ||
            (p >= 0x600 && p <= 0x602) || (p >= 0xcf8 && p <= 0xcff) || (p >= 0x3f8 && p <= 0x3ff))
            continue;
        outb((u16)p, 0xa5);
        outl((u16)p, 0xdeadbeef);
        (void)inb((u16)p);
        (void)inl((u16)p);
    }
    /* MMIO nobody has: the gap (away from the in-kernel LAPIC/IOAPIC), and past RAM. */
    for (u64 a = GAP_START; a < GAP_START + 0x100000; a += 0x1000) { wr32(a, 0xffffffff); (void)rd32(a); }
    for (u64 a = 0xd0000000UL; a < 0xd0010000UL; a += 0x100) { wr32(a, 0x12345678); (void)rd32(a); }
    u64 past = high_end ? high_end : low_end;
    if (past < GAP_START || past >= GAP_END) { map(past); wr32(past, 0xabcdef01); result("read-past-ram", rd32(past) == 0xffffffff, "value=", rd32(past)); }
    puts_("hvmtest: survived garbage\n");
}

static void echo(void) {
    char line[128];
    int n = 0;
    puts_("hvmtest: ready for input\n");
    for (;;) {
        while (!(inb(COM1 + 5) & 1)) {}
        char c = (char)inb(COM1);
        if (c == '\n' || c == '\r' || n == 127) break;
        line[n++] = c;
    }
    line[n] = 0;
    puts_("hvmtest: echo ["); puts_(line); puts_("]\n");
}

static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return (u64)hi << 32 | lo; }

/* A tick every 2^26 TSC cycles. The next deadline counts from now, not from
 * the last one, so that after a pause the ticks resume without a burst. */
static void count(void) {
    u64 next = rdtsc();
    for (u64 n = 0;; n++) {
        while (rdtsc() < next) {}
        puts_("hvmtest: tick "); putu(n); puts_("\n");
        next = rdtsc() + (1UL << 26);
    }
}

static void chatter(void) {
    for (u64 n = 0;; n++) {
        puts_("hvmtest: chatter "); putu(n);
        puts_(" .................................................................................................... \n");
    }
}

/* ---- virtio-blk over virtio-mmio version 2, polled ---- */
/* The first virtio-mmio window: hvm's, unless the command line names
 * another (Firecracker's "virtio_mmio.device=4K@0xADDR:IRQ"). */
static u64 vio_base = 0xd0000000UL;
#define VIO vio_base
static void find_vio(void) {
    char b[40];
    if (!arg("virtio_mmio.device", b, sizeof b)) return;
    char *p = b;
    while (*p && *p != '@') p++;
    if (!*p) return;
    char *q = ++p;
    while (*q && *q != ':') q++;
    *q = 0;
    vio_base = parse_num(p);
}
#define VIO_MAGIC 0x000
#define VIO_VERSION 0x004
#define VIO_DEVICE_ID 0x008
#define VIO_DEV_FEATURES 0x010
#define VIO_DEV_FEATURES_SEL 0x014
#define VIO_DRV_FEATURES 0x020
#define VIO_DRV_FEATURES_SEL 0x024
#define VIO_QUEUE_SEL 0x030
#define VIO_QUEUE_NUM_MAX 0x034
#define VIO_QUEUE_NUM 0x038
#define VIO_QUEUE_READY 0x044
#define VIO_QUEUE_NOTIFY 0x050
#define VIO_STATUS 0x070
#define VIO_QUEUE_DESC 0x080   /* low, high at +4 */
#define VIO_QUEUE_DRIVER 0x090
#define VIO_QUEUE_DEVICE 0x0a0
#define ST_ACK 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define D_NEXT 1
#define D_WRITE 2
#define QSIZE 256

struct desc { u64 addr; u32 len; u16 flags, next; };
struct blkreq { u32 type, reserved; u64 sector; };
static struct desc vq_desc[QSIZE] __attribute__((aligned(4096)));
static struct { u16 flags, idx, ring[QSIZE], used_event; } vq_avail __attribute__((aligned(4096)));
static volatile struct { u16 flags, idx; struct { u32 id, len; } ring[QSIZE]; u16 avail_event; } vq_used __attribute__((aligned(4096)));
static struct blkreq vq_hdr[QSIZE];
static volatile u8 vq_status[QSIZE];
static u16 vq_num, used_seen;

#define barrier() __asm__ volatile("" ::: "memory")
static void vio_w(u32 reg, u32 v) { wr32(VIO + reg, v); }
static u32 vio_r(u32 reg) { return rd32(VIO + reg); }

/* Resets and starts the device with VIRTIO_F_VERSION_1 only, queue 0 ready. */
static void blk_init(void) {
    find_vio();
    if (vio_r(VIO_MAGIC) != 0x74726976 || vio_r(VIO_VERSION) != 2 || vio_r(VIO_DEVICE_ID) != 2) {
        puts_("hvmtest: no virtio-blk (mmio v2) at "); putx(VIO); puts_("\n");
        exit_with(93);
    }
    vio_w(VIO_STATUS, 0);
    vio_w(VIO_STATUS, ST_ACK);
    vio_w(VIO_STATUS, ST_ACK | ST_DRIVER);
    vio_w(VIO_DEV_FEATURES_SEL, 1);
    u32 hi = vio_r(VIO_DEV_FEATURES);
    if (!(hi & 1)) { puts_("hvmtest: virtio-blk without VERSION_1\n"); exit_with(94); }
    vio_w(VIO_DRV_FEATURES_SEL, 0); vio_w(VIO_DRV_FEATURES, 0);
    vio_w(VIO_DRV_FEATURES_SEL, 1); vio_w(VIO_DRV_FEATURES, 1); /* bit 32 */
    vio_w(VIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
    if (!(vio_r(VIO_STATUS) & ST_FEATURES_OK)) { puts_("hvmtest: virtio-blk refused FEATURES_OK\n"); exit_with(95); }
    vio_w(VIO_QUEUE_SEL, 0);
    u32 max = vio_r(VIO_QUEUE_NUM_MAX);
    if (max == 0) { puts_("hvmtest: virtio-blk queue 0 missing\n"); exit_with(96); }
    vq_num = (u16)(max < QSIZE ? max : QSIZE);
    vio_w(VIO_QUEUE_NUM, vq_num);
    u64 d = (u64)vq_desc, a = (u64)&vq_avail, u = (u64)&vq_used;
    vio_w(VIO_QUEUE_DESC, (u32)d); vio_w(VIO_QUEUE_DESC + 4, (u32)(d >> 32));
    vio_w(VIO_QUEUE_DRIVER, (u32)a); vio_w(VIO_QUEUE_DRIVER + 4, (u32)(a >> 32));
    vio_w(VIO_QUEUE_DEVICE, (u32)u); vio_w(VIO_QUEUE_DEVICE + 4, (u32)(u >> 32));
    vio_w(VIO_QUEUE_READY, 1);
    vio_w(VIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
}

/* Builds a request in descriptors head..head+segs+1: the 16-byte header,
 * `segs` data descriptors of `len` bytes at `buf` (device-writable for a
 * read), then the 1-byte status, the chain's last writable byte, where the
 * device puts its answer. Header and status are indexed by the head. */
static u16 blk_build(u16 head, u32 type, u64 sector, u64 buf, u32 len, u32 segs) {
    vq_hdr[head] = (struct blkreq){type, 0, sector};
    vq_status[head] = 0xff;
    u16 i = head;
    vq_desc[i] = (struct desc){(u64)&vq_hdr[head], 16, D_NEXT, (u16)(i + 1)}; i++;
    for (u32 s = 0; s < segs; s++, i++)
        vq_desc[i] = (struct desc){buf, len, (u16)(D_NEXT | (type == 0 ? D_WRITE : 0)), (u16)(i + 1)};
    vq_desc[i] = (struct desc){(u64)&vq_status[head], 1, D_WRITE, 0};
    return head;
}

/* Puts a chain head on the available ring (the device sees it after notify). */
static void blk_post(u16 head) {
    vq_avail.ring[vq_avail.idx % vq_num] = head;
    barrier();
    *(volatile u16 *)&vq_avail.idx = (u16)(vq_avail.idx + 1);
}
static void blk_notify(void) { barrier(); vio_w(VIO_QUEUE_NOTIFY, 0); }

/* Spins until the device has used something we have not seen. */
static void blk_poll(void) { while (vq_used.idx == used_seen) __asm__ volatile("pause"); barrier(); }
/* Waits for the next used element; returns its ring slot. */
static u32 blk_wait(void) { blk_poll(); return used_seen++ % vq_num; }

static void blkread(void) {
    u64 buf = 16UL << 20;
    blk_init();
    blk_post(blk_build(0, 0, 0, buf, 4096, 1));
    blk_notify();
    blk_wait();
    puts_("hvmtest: blkread status "); putu(vq_status[0]); puts_(" fnv="); putx(fnv1a(buf, 4096)); puts_("\n");
    exit_with(0);
}

/* One read of 63 x 64 MiB (just under 4 GiB, the most a legal chain may
 * carry) into the same 64 MiB at 64 MiB: a device that checks its
 * advertised limits answers it at once with IOERR. */
static void hugereq(void) {
    blk_init();
    if (vq_num < 65) { puts_("hvmtest: virtio-blk queue too small\n"); exit_with(97); }
    blk_post(blk_build(0, 0, 0, 64UL << 20, 64U << 20, 63));
    blk_notify();
    u32 slot = blk_wait();
    puts_("hvmtest: hugereq status "); putu(vq_status[0]); puts_(" used_len "); putu(vq_used.ring[slot].len); puts_("\n");
    exit_with(0);
}

/* A driver gone wrong, n times over (virtio-blk): features without
 * VERSION_1 (FEATURES_OK refused), DRIVER_OK without FEATURES_OK, and a
 * started queue whose available ring names a head past its end. hvm must
 * keep its log bounded through all of it. */
static void abuse(u64 n) {
    for (u64 i = 0; i < n; i++) {
        vio_w(VIO_STATUS, 0);
        vio_w(VIO_STATUS, ST_ACK | ST_DRIVER);
        vio_w(VIO_DRV_FEATURES_SEL, 1); vio_w(VIO_DRV_FEATURES, 0);
        vio_w(VIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
        vio_w(VIO_STATUS, 0);
        vio_w(VIO_STATUS, ST_ACK | ST_DRIVER | ST_DRIVER_OK);
        blk_init();
        vq_avail.ring[vq_avail.idx % vq_num] = 0xfff0;
        barrier();
        *(volatile u16 *)&vq_avail.idx = (u16)(vq_avail.idx + 1);
        blk_notify();
    }
    puts_("hvmtest: abuse done\n");
    exit_with(0);
}

/* As many 1 MiB reads of sector 0 as the queue holds (3 descriptors each),
 * all into the 1 MiB at 16 MiB; each one answered is posted again. */
static void blkflood(void) {
    blk_init();
    u16 reqs = vq_num / 3;
    for (u16 r = 0; r < reqs; r++) blk_post(blk_build((u16)(r * 3), 0, 0, 16UL << 20, 1U << 20, 1));
    blk_notify();
    blk_poll();
    puts_("hvmtest: blkflood running\n");
    for (;;) {
        blk_poll();
        while (vq_used.idx != used_seen) blk_post((u16)vq_used.ring[blk_wait()].id);
        blk_notify();
    }
}

/* n reads of 4 KiB at pseudo-random 4 KiB-aligned places in the disk's
 * first 64 MiB, one in flight, polled: the device's round trip (notify,
 * read, used ring) with nothing of the guest's around it. Prints
 * "hvmtest: blklat n=N cycles=C" (TSC cycles in all) and leaves. */
static void pvh_leave(void);
static void blklat(u64 n) {
    blk_init();
    u64 x = 88172645463325252UL, t0 = rdtsc();
    for (u64 i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        blk_post(blk_build(0, 0, (x % 16384) * 8, 16UL << 20, 4096, 1));
        blk_notify();
        blk_wait();
    }
    u64 t1 = rdtsc();
    puts_("hvmtest: blklat n="); putu(n); puts_(" cycles="); putu(t1 - t0); puts_("\n");
    pvh_leave();
}

/* How a PVH guest leaves: the debug-exit port (QEMU's isa-debug-exit), or
 * with exit=reset the i8042 reset line (Firecracker has no debug-exit port
 * and no ACPI power-off; it stops on the keyboard controller's reset). */
static char pvh_exit[8] = "port";
static void pvh_leave(void) {
    if (streq(pvh_exit, "reset")) outb(0x64, 0xfe);
    exit_with(0);
}

/* ---- the CMOS real-time clock ---- */
static u8 cmos(u8 reg) { outb(0x70, reg); return inb(0x71); }
static u64 bcd(u8 v) { return (u64)(v >> 4) * 10 + (v & 15); }
static void put2(u64 v) { putc_((char)('0' + v / 10 % 10)); putc_((char)('0' + v % 10)); }

/* Prints the clock as "hvmtest: rtc YYYY-MM-DD HH:MM:SS" (BCD, 24-hour, as
 * hvm starts it), read as Linux does: wait out update-in-progress, read
 * until two reads agree. Returns the seconds register. */
static u8 rtc_print(void) {
    u8 t[7], u[7];
    const u8 regs[7] = {0x32, 0x09, 0x08, 0x07, 0x04, 0x02, 0x00};
    do {
        while (cmos(0x0a) & 0x80) {}
        for (int i = 0; i < 7; i++) t[i] = cmos(regs[i]);
        for (int i = 0; i < 7; i++) u[i] = cmos(regs[i]);
    } while (t[6] != u[6] || t[5] != u[5]);
    puts_("hvmtest: rtc "); put2(bcd(t[0])); put2(bcd(t[1])); putc_('-'); put2(bcd(t[2])); putc_('-');
    put2(bcd(t[3])); putc_(' '); put2(bcd(t[4])); putc_(':'); put2(bcd(t[5])); putc_(':'); put2(bcd(t[6]));
    puts_("\n");
    return t[6];
}

/* mode=rtc: the time now, then again once the seconds changed twice
 * (1-2 s later): the test compares both with the host's clock. */
static void rtc(void) {
    u8 s = rtc_print();
    for (int changes = 0; changes < 2;) {
        u8 now = cmos(0x00);
        if (now != s) { s = now; changes++; }
    }
    rtc_print();
    exit_with(0);
}

/* Entered through the PVH note (QEMU, Firecracker): only the modes a
 * benchmark needs. */
void hvmtest_pvh(u64 start_info) {
    cmdline = (const char *)rd64(start_info + 0x18);
    char mode[16] = "hello";
    u64 n = 0;
    arg("mode", mode, sizeof mode);
    arg("exit", pvh_exit, sizeof pvh_exit);
    if (streq(mode, "ioloop")) {
        num_arg("n", &n);
        for (u64 i = 0; i < n; i++) outb(0x80, (u8)i);
        puts_("hvmtest: ioloop done\n");
        pvh_leave();
    }
    if (streq(mode, "spin")) { puts_("hvmtest: spinning\n"); for (;;) __asm__ volatile("cli; hlt"); }
    if (streq(mode, "blklat")) { n = 10000; num_arg("n", &n); blklat(n); }
    puts_("Hello from the hvm tiny guest\n");
    pvh_leave();
}

void hvmtest_main(u64 boot_params) {
    bp = boot_params;
    outb(BOOT_MARKER, 1);
    cmdline = (const char *)(u64)rd32(bp + BP_CMDLINE_PTR);
    char mode[16] = "check";
    arg("mode", mode, sizeof mode);
    u64 mem = 0, cpus = 1, n = 0, code = 0;
    num_arg("mem", &mem);
    num_arg("cpus", &cpus);

    if (streq(mode, "hello")) { puts_("Hello from the hvm tiny guest\n"); exit_with(0); }
    if (streq(mode, "exit")) { num_arg("code", &code); puts_("hvmtest: exit "); putu(code); puts_("\n"); exit_with((u8)code); }
    if (streq(mode, "reset")) { puts_("hvmtest: i8042 reset\n"); outb(0x64, 0xfe); puts_("hvmtest: still running after reset\n"); exit_with(92); }
    if (streq(mode, "acpi-off")) { puts_("hvmtest: ACPI power-off\n"); acpi_poweroff(); }
    if (streq(mode, "triple")) { puts_("hvmtest: triple fault\n"); triple_fault(); }
    if (streq(mode, "spin")) { puts_("hvmtest: spinning\n"); spin_here(); }
    if (streq(mode, "rtc")) rtc();
    if (streq(mode, "ioloop")) {
        num_arg("n", &n);
        for (u64 i = 0; i < n; i++) outb(0x80, (u8)i);
        puts_("hvmtest: ioloop done\n");
        exit_with(0);
    }
    if (streq(mode, "echo")) { echo(); exit_with(0); }
    if (streq(mode, "count")) count();
    if (streq(mode, "chatter")) chatter();
    if (streq(mode, "blkread")) blkread();
    if (streq(mode, "hugereq")) hugereq();
    if (streq(mode, "blkflood")) blkflood();
    if (streq(mode, "blklat")) { n = 10000; num_arg("n", &n); blklat(n); }
    if (streq(mode, "abuse")) { n = 1000; num_arg("n", &n); abuse(n); }
    if (streq(mode, "probe")) { puts_("hvmtest: seccomp probe\n"); outb(SECCOMP_PROBE, 1); puts_("hvmtest: probe survived\n"); exit_with(0); }
    if (streq(mode, "pit")) { puts_(pit_present() ? "hvmtest: pit present\n" : "hvmtest: pit absent\n"); exit_with(0); }

    puts_("hvmtest: start\n");
    check_cmdline();
    if (mem) check_e820(mem);
    else { result("mem-argument", 0, 0, 0); low_end = 0x100000; }
    check_ram_edges();
    check_initrd();
    check_acpi(cpus);
    check_cpuid();
    check_unused_port();
    check_string_io();
    check_pci();
    if (streq(mode, "garbage")) garbage();
    puts_("hvmtest: "); putu((u64)failures); puts_(" failures\n");
    exit_with((u8)failures);
}
