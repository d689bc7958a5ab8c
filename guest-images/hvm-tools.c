/*
 * hvm-tools: the bundled guest's own test and benchmark tools in one static
 * binary (each static glibc program weighs ~700 KiB; the initramfs every
 * test boots carries one of them instead of three). It runs the tool its
 * name says, as busybox does: /bin/hvm-vsock, /bin/hvm-netio and
 * /bin/hvm-randio are links to it; `hvm-tools TOOL ARGS...` works too.
 *
 *   hvm-vsock   an nc for vsock and hvm's vsock sockets (hvm-vsock.c)
 *   hvm-netio   bulk TCP for the network benchmark (hvm-netio.c)
 *   hvm-randio  random 4 KiB block I/O for the disk benchmark (hvm-randio.c)
 *
 * Built static by guest-images/build.sh (gcc -static -Os).
 */
#include <stdio.h>
#include <string.h>

int hvm_vsock_main(int argc, char **argv);
int hvm_netio_main(int argc, char **argv);
int hvm_randio_main(int argc, char **argv);

static const struct {
    const char *name;
    int (*run)(int, char **);
} tools[] = {
    {"hvm-vsock", hvm_vsock_main},
    {"hvm-netio", hvm_netio_main},
    {"hvm-randio", hvm_randio_main},
};

int main(int argc, char **argv)
{
    const char *name = argc > 0 ? strrchr(argv[0], '/') : NULL;
    name = name ? name + 1 : argc > 0 ? argv[0] : "";
    if (!strcmp(name, "hvm-tools") && argc > 1) {
        argc--;
        argv++;
        name = argv[0];
    }
    for (size_t i = 0; i < sizeof tools / sizeof tools[0]; i++)
        if (!strcmp(name, tools[i].name))
            return tools[i].run(argc, argv);
    fprintf(stderr, "usage: hvm-tools hvm-vsock|hvm-netio|hvm-randio ARGS... (or call it by one of those names)\n");
    return 2;
}
