/*
 * hvm-randio: random 4 KiB reads or writes on a block device for a fixed
 * time, for the benchmark's virtio-blk case (busybox has no fio, and a
 * shell loop of dd would measure process start-up, not the device).
 * O_DIRECT, one request in flight, offsets from a fixed-seed xorshift so
 * every VMM sees the same sequence. Prints one line:
 *
 *   RANDIO read|write OPS MILLISECONDS
 *
 *   hvm-randio read DEVICE SECONDS
 *   hvm-randio write DEVICE SECONDS     (overwrites the device's blocks)
 *
 * Part of hvm-tools (hvm-tools.c), built static by guest-images/build.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#define BLOCK 4096

static void die(const char *what)
{
    fprintf(stderr, "hvm-randio: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int hvm_randio_main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[1], "read") && strcmp(argv[1], "write"))) {
        fprintf(stderr, "usage: hvm-randio read|write DEVICE SECONDS\n");
        return 2;
    }
    int writing = !strcmp(argv[1], "write");
    int fd = open(argv[2], (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
    if (fd < 0)
        die(argv[2]);
    uint64_t size;
    if (ioctl(fd, BLKGETSIZE64, &size) < 0)
        die("BLKGETSIZE64");
    uint64_t blocks = size / BLOCK;
    if (blocks == 0) {
        fprintf(stderr, "hvm-randio: %s is smaller than 4 KiB\n", argv[2]);
        return 1;
    }
    void *buf;
    if (posix_memalign(&buf, BLOCK, BLOCK))
        die("posix_memalign");
    memset(buf, 0x5a, BLOCK);
    uint64_t x = 0x9e3779b97f4a7c15ull, ops = 0;
    uint64_t start = now_ms(), end = start + (uint64_t)atoi(argv[3]) * 1000, t = start;
    while (t < end) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        off_t at = (off_t)(x % blocks) * BLOCK;
        ssize_t n = writing ? pwrite(fd, buf, BLOCK, at) : pread(fd, buf, BLOCK, at);
        if (n != BLOCK)
            die(writing ? "pwrite" : "pread");
        ops++;
        if ((ops & 15) == 0)
            t = now_ms();
    }
    t = now_ms();
    printf("RANDIO %s %llu %llu\n", argv[1], (unsigned long long)ops,
           (unsigned long long)(t - start));
    return 0;
}
