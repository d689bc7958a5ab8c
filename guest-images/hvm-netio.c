/*
 * hvm-netio: bulk TCP transfers for the benchmark's network case, on both
 * sides (the guest and L1). busybox's tools would measure themselves: its
 * nc moves 1 KiB per poll, read and write, and its wc -c counts byte by
 * byte, which under emulation cost more than the network does. This one
 * moves 64 KiB per system call and counts without looking at the bytes.
 *
 *   hvm-netio serve [ADDR:]PORT BYTES
 *                                L1: to every connection on ADDR:PORT
 *                                (127.0.0.1 by default), send BYTES, close
 *   hvm-netio sink [ADDR:]PORT   L1: from every connection on ADDR:PORT,
 *                                read to the end, print the count (one line
 *                                per connection), answer it, close
 *   hvm-netio recv HOST PORT     guest: read a connection to the end, print
 *                                the count
 *   hvm-netio send HOST PORT BYTES
 *                                guest: send BYTES, end the sending side,
 *                                wait for the sink's answer (so the clock
 *                                stops when the sink has it all), print it
 *   hvm-netio count              count stdin (a fast wc -c)
 *
 * Exit status 0 when every byte went, 1 on an error.
 * Part of hvm-tools (hvm-tools.c), built static by guest-images/build.sh.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define CHUNK (1 << 16)
static char buf[CHUNK];

static void die(const char *what)
{
    fprintf(stderr, "hvm-netio: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Reads fd to its end (or to an error, which it reports and flags in
 * *failed); the count of bytes read. */
static unsigned long long drain(int fd, int *failed)
{
    unsigned long long total = 0;
    *failed = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "hvm-netio: read after %llu bytes: %s\n", total, strerror(errno));
            *failed = 1;
        }
        if (n <= 0)
            return total;
        total += (unsigned long long)n;
    }
}

/* Writes `bytes` of buf's pattern to fd; -1 on an error. */
static int fill(int fd, unsigned long long bytes)
{
    while (bytes > 0) {
        size_t want = bytes < sizeof buf ? (size_t)bytes : sizeof buf;
        ssize_t n = write(fd, buf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        bytes -= (unsigned long long)n;
    }
    return 0;
}

static struct sockaddr_in address(const char *host, const char *port)
{
    char *end;
    unsigned long number = strtoul(port, &end, 10);
    if (*port == 0 || *end != 0 || number == 0 || number > 65535) {
        fprintf(stderr, "hvm-netio: %s is not a port (1 to 65535)\n", port);
        exit(2);
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)number)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "hvm-netio: %s is not an IPv4 address\n", host);
        exit(2);
    }
    return a;
}

static int connect_to(const char *host, const char *port)
{
    struct sockaddr_in a = address(host, port);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect");
    return s;
}

/* Listens on "[ADDR:]PORT". */
static int listen_on(const char *where)
{
    char host[64] = "127.0.0.1";
    const char *port = strchr(where, ':');
    if (port && (size_t)(port - where) < sizeof host) {
        memcpy(host, where, (size_t)(port - where));
        host[port - where] = 0;
        port++;
    } else {
        port = where;
    }
    struct sockaddr_in a = address(host, port);
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 4) < 0)
        die("listen");
    return l;
}

/* Accepts the next connection; a peer that stops moving for a minute is
 * given up (a stalled transfer must not keep L1's side from the next). */
static int next_peer(int l)
{
    struct timeval minute = {.tv_sec = 60};
    for (;;) {
        int s = accept(l, NULL, NULL);
        if (s >= 0) {
            setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &minute, sizeof minute);
            setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &minute, sizeof minute);
            return s;
        }
        if (errno != EINTR)
            die("accept");
    }
}

int hvm_netio_main(int argc, char **argv)
{
    /* A peer that resets must fail a write, not end the server. */
    signal(SIGPIPE, SIG_IGN);
    memset(buf, 'x', sizeof buf);
    if (argc == 4 && !strcmp(argv[1], "serve")) {
        unsigned long long bytes = strtoull(argv[3], NULL, 10);
        int l = listen_on(argv[2]);
        for (;;) {
            int s = next_peer(l);
            if (fill(s, bytes) < 0)
                fprintf(stderr, "hvm-netio: send: %s\n", strerror(errno));
            close(s);
        }
    }
    if (argc == 3 && !strcmp(argv[1], "sink")) {
        int l = listen_on(argv[2]);
        for (;;) {
            int s = next_peer(l);
            char line[32];
            int failed;
            int n = snprintf(line, sizeof line, "%llu\n", drain(s, &failed));
            fputs(line, stdout);
            fflush(stdout);
            /* (The sender may be gone already: nothing to do about it.) */
            if (write(s, line, (size_t)n) < 0)
                fprintf(stderr, "hvm-netio: answer: %s\n", strerror(errno));
            close(s);
        }
    }
    if (argc == 4 && !strcmp(argv[1], "recv")) {
        int s = connect_to(argv[2], argv[3]);
        int failed;
        printf("%llu\n", drain(s, &failed));
        return failed;
    }
    if (argc == 5 && !strcmp(argv[1], "send")) {
        unsigned long long bytes = strtoull(argv[4], NULL, 10);
        int s = connect_to(argv[2], argv[3]);
        if (fill(s, bytes) < 0)
            die("send");
        shutdown(s, SHUT_WR);
        /* The sink's count, once it has read everything: a line. */
        char line[32];
        size_t len = 0;
        while (len < sizeof line - 1 && (len == 0 || line[len - 1] != '\n')) {
            ssize_t n = read(s, line + len, sizeof line - 1 - len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            len += (size_t)n;
        }
        if (len == 0) {
            fprintf(stderr, "hvm-netio: no answer from the sink\n");
            return 1;
        }
        line[len] = 0;
        fputs(line, stdout);
        return strtoull(line, NULL, 10) == bytes ? 0 : 1;
    }
    if (argc == 2 && !strcmp(argv[1], "count")) {
        int failed;
        printf("%llu\n", drain(0, &failed));
        return failed;
    }
    fprintf(stderr, "usage: hvm-netio serve [ADDR:]PORT BYTES | sink [ADDR:]PORT | "
                    "recv HOST PORT | send HOST PORT BYTES | count\n");
    return 2;
}
