#!/usr/bin/env python3
"""Wraps a flat 64-bit image (linked at 1 MiB) in a minimal bzImage setup
header (boot protocol 2.15), so hvm can load it through its bzImage path."""
import struct
import sys

flat, out = sys.argv[1], sys.argv[2]
payload = open(flat, "rb").read()
setup_sects = 1
setup = bytearray((setup_sects + 1) * 512)
setup[0x1F1] = setup_sects
struct.pack_into("<H", setup, 0x1FE, 0xAA55)
setup[0x202:0x206] = b"HdrS"
struct.pack_into("<H", setup, 0x206, 0x020F)  # protocol version
setup[0x211] = 0x01  # loadflags: LOADED_HIGH
struct.pack_into("<I", setup, 0x214, 0x100000)  # code32_start
struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
struct.pack_into("<I", setup, 0x230, 0x200000)  # kernel_alignment
struct.pack_into("<H", setup, 0x236, 0x1)  # xloadflags: XLF_KERNEL_64
struct.pack_into("<I", setup, 0x238, 2047)  # cmdline_size
struct.pack_into("<I", setup, 0x260, len(payload) + 0x40000)  # init_size: payload + bss (page tables, virtqueue, stack)
open(out, "wb").write(bytes(setup) + payload)
