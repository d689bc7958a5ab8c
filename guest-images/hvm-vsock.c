/*
 * hvm-vsock: a tiny nc for vsock and for hvm's vsock Unix sockets, for the
 * bundled test guest (busybox has no AF_VSOCK) and the tests' host side.
 * It relays stdin to the socket and the socket to stdout; when stdin ends
 * it shuts the socket's sending side, and it exits once both directions
 * are over (status 0), or on an error (status 1).
 *
 *   hvm-vsock listen PORT              guest: accept one vsock connection
 *   hvm-vsock connect PORT [CID]       guest: connect (CID 2, the host, by default)
 *   hvm-vsock unix-connect PATH PORT   host: connect to hvm's socket, say
 *                                      CONNECT PORT, read hvm's OK line
 *   hvm-vsock unix-listen PATH         host: accept one connection on PATH
 *                                      (a guest connecting to host port P
 *                                      reaches <vsock socket>_P)
 *
 * Part of hvm-tools (hvm-tools.c), built static by guest-images/build.sh.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static void die(const char *what)
{
    fprintf(stderr, "hvm-vsock: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int write_all(int fd, const char *buf, ssize_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += w;
        n -= w;
    }
    return 0;
}

static int relay(int s)
{
    static char buf[1 << 16];
    int in_open = 1, sock_open = 1;
    while (sock_open) {
        struct pollfd p[2] = {{s, POLLIN, 0}, {in_open ? 0 : -1, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (p[0].revents) {
            ssize_t n = read(s, buf, sizeof buf);
            if (n < 0 && errno != EINTR)
                die("read from the socket");
            if (n == 0)
                sock_open = 0;
            if (n > 0 && write_all(1, buf, n) < 0)
                die("write to stdout");
        }
        if (in_open && p[1].revents) {
            ssize_t n = read(0, buf, sizeof buf);
            if (n <= 0) {
                in_open = 0;
                shutdown(s, SHUT_WR);
            } else if (write_all(s, buf, n) < 0) {
                die("write to the socket");
            }
        }
    }
    /* The peer is done: send what is left of stdin, then end. */
    while (in_open) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n <= 0)
            break;
        if (write_all(s, buf, n) < 0)
            die("write to the socket");
    }
    return 0;
}

static int unix_socket(const char *path, struct sockaddr_un *a)
{
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0)
        die("socket");
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path) {
        errno = ENAMETOOLONG;
        die(path);
    }
    strcpy(a->sun_path, path);
    return s;
}

int hvm_vsock_main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "listen")) {
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                                .svm_port = (unsigned)atoi(argv[2])};
        int l = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0)
            die("vsock listen");
        int s = accept(l, NULL, NULL);
        if (s < 0)
            die("accept");
        close(l);
        return relay(s);
    }
    if (argc >= 3 && !strcmp(argv[1], "connect")) {
        struct sockaddr_vm a = {.svm_family = AF_VSOCK,
                                .svm_cid = argc >= 4 ? (unsigned)atoi(argv[3]) : 2,
                                .svm_port = (unsigned)atoi(argv[2])};
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0)
            die("vsock connect");
        return relay(s);
    }
    if (argc >= 4 && !strcmp(argv[1], "unix-connect")) {
        struct sockaddr_un a;
        int s = unix_socket(argv[2], &a);
        if (connect(s, (struct sockaddr *)&a, sizeof a) < 0)
            die(argv[2]);
        char line[64];
        int n = snprintf(line, sizeof line, "CONNECT %s\n", argv[3]);
        if (write_all(s, line, n) < 0)
            die("write CONNECT");
        /* hvm's answer, "OK <port>\n", byte by byte: the data follows it. */
        int len = 0;
        for (;;) {
            char c;
            if (read(s, &c, 1) != 1 || len == (int)sizeof line - 1) {
                fprintf(stderr, "hvm-vsock: no OK from hvm (the guest refused port %s?)\n", argv[3]);
                return 1;
            }
            if (c == '\n')
                break;
            line[len++] = c;
        }
        line[len] = 0;
        if (strncmp(line, "OK ", 3)) {
            fprintf(stderr, "hvm-vsock: hvm said %s\n", line);
            return 1;
        }
        return relay(s);
    }
    if (argc >= 3 && !strcmp(argv[1], "unix-listen")) {
        struct sockaddr_un a;
        int l = unix_socket(argv[2], &a);
        unlink(argv[2]);
        if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0)
            die(argv[2]);
        int s = accept(l, NULL, NULL);
        if (s < 0)
            die("accept");
        close(l);
        unlink(argv[2]);
        return relay(s);
    }
    fprintf(stderr,
            "usage: hvm-vsock listen PORT | connect PORT [CID] | unix-connect PATH PORT | unix-listen PATH\n");
    return 2;
}
