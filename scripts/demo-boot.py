#!/usr/bin/env python3
"""Boot a cos disk headless under qemu (BIOS) and show what a user wants to see:
GRUB, the boot reaching multi-user, and `cos status` of the booted system."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PREFIX = re.compile(r"^\[\s*[0-9.]+\]\s+cos\[\d+\]:\s?")
TIMEOUT = 240


def main() -> int:
    disk = Path(sys.argv[1] if len(sys.argv) > 1 else "build/vanilla.raw")
    argv = [
        "qemu-system-x86_64",
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "1536",
        "-smp",
        "2",
        "-nographic",
        "-nic",
        "none",
        "-drive",
        f"file={disk},format=raw,if=virtio,snapshot=on",
    ]
    print(f"==> Booting {disk} (qemu, BIOS, software emulation; {' '.join(argv[:3])} …)")
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout
    seen_multi_user = False
    status: list[str] = []
    in_status = False
    status_done = False
    t = 0.0
    try:
        for raw in proc.stdout:
            line = ANSI.sub("", raw.decode(errors="replace")).rstrip()
            t = time.monotonic() - start
            if t > TIMEOUT:
                print(f"demo: no multi-user within {TIMEOUT}s", file=sys.stderr)
                return 1
            if "Booting `" in line and not seen_multi_user:
                print(f"[{t:5.1f}s] GRUB: {line.split('Booting')[-1].strip()[:40]}")
            if "Reached target" in line and "Multi-User" in line and not seen_multi_user:
                seen_multi_user = True
                print(f"[{t:5.1f}s] systemd: Reached target Multi-User System")
            text = PREFIX.sub("", line)
            if text.startswith("Booted:") and not status_done:
                in_status = True
            if in_status:
                status.append(text)
                if text.startswith("  COS_PERSISTENT"):
                    in_status, status_done = False, True
            if status_done and seen_multi_user:
                break
    finally:
        proc.kill()
        proc.wait()
    if not status:
        print("demo: cos status did not appear on the console", file=sys.stderr)
        return 1
    print("==> cos status of the booted system (printed on its console by cos-mark-good.service):")
    print("\n".join("    " + s for s in status))
    return 0 if seen_multi_user else 1


if __name__ == "__main__":
    sys.exit(main())
