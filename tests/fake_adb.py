#!/usr/bin/env python3
"""A stand-in for `adb` that answers like a Samsung Galaxy S24 (Snapdragon 8 Gen 3, SM8650)
attached as serial R5CX1234ABC. Tests put it on PATH as `adb` (or point EDGEKIT_ADB at it).

Supports: `adb devices`, `adb -s SERIAL shell getprop [KEY]`, `shell cat /proc/cpuinfo`,
`shell cat /proc/meminfo`, `shell grep -H . /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq`.
"""

import sys

SERIAL = "R5CX1234ABC"

PROPS = {
    "ro.product.model": "SM-S921U",
    "ro.product.brand": "samsung",
    "ro.product.manufacturer": "samsung",
    "ro.product.name": "e1qsqw",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.soc.manufacturer": "QTI",
    "ro.soc.model": "SM8650",
    "ro.board.platform": "pineapple",
    "ro.hardware": "qcom",
    "ro.hardware.vulkan": "adreno",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
}

# Snapdragon 8 Gen 3 for Galaxy: cpu0-1 Cortex-A520, cpu2-4 A720 @3.1, cpu5-6 A720 @2.9, cpu7 X4.
PARTS = ["0xd80"] * 2 + ["0xd81"] * 5 + ["0xd82"]
MAX_KHZ = [2265600] * 2 + [3096000] * 3 + [2899200] * 2 + [3393600]
FEATURES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
            "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg "
            "dcpodp flagm2 frint i8mm bf16 bti")


def cpuinfo() -> str:
    blocks = []
    for i, part in enumerate(PARTS):
        blocks.append(f"processor\t: {i}\nBogoMIPS\t: 38.40\nFeatures\t: {FEATURES}\n"
                      f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
                      f"CPU part\t: {part}\nCPU revision\t: 1\n")
    return "\n".join(blocks) + "\n"


MEMINFO = """MemTotal:        7469848 kB
MemFree:          412236 kB
MemAvailable:    2871604 kB
Buffers:            4328 kB
Cached:          2671092 kB
SwapCached:        23480 kB
SwapTotal:       8388604 kB
SwapFree:        5133672 kB
"""


def shell(cmd: str) -> int:
    if cmd == "getprop":
        sys.stdout.write("".join(f"[{k}]: [{v}]\n" for k, v in PROPS.items()))
        return 0
    if cmd.startswith("getprop "):
        sys.stdout.write(PROPS.get(cmd.split()[1], "") + "\n")
        return 0
    if cmd == "cat /proc/cpuinfo":
        sys.stdout.write(cpuinfo())
        return 0
    if cmd == "cat /proc/meminfo":
        sys.stdout.write(MEMINFO)
        return 0
    if cmd.startswith("grep -H . /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq"):
        sys.stdout.write("".join(f"/sys/devices/system/cpu/cpu{i}/cpufreq/cpuinfo_max_freq:{f}\n"
                                 for i, f in enumerate(MAX_KHZ)))
        return 0
    sys.stderr.write(f"/system/bin/sh: {cmd.split()[0] if cmd else ''}: inaccessible or not found\n")
    return 127


def main(argv: list[str]) -> int:
    if argv[:1] == ["devices"]:
        sys.stdout.write(f"List of devices attached\n{SERIAL}\tdevice\n\n")
        return 0
    if len(argv) >= 3 and argv[0] == "-s":
        if argv[1] != SERIAL:
            sys.stderr.write(f"adb: device '{argv[1]}' not found\n")
            return 1
        if argv[2] == "shell":
            return shell(" ".join(argv[3:]))
    sys.stderr.write(f"adb: unknown command {' '.join(argv)}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
