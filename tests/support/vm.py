"""A qemu machine driven over a virtio-serial test agent, with its serial console logged.

TCG only (-accel tcg -cpu max): this host's /dev/kvm cannot run stock kernels.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


class VMError(AssertionError):
    pass


@dataclass
class Result:
    rc: int
    out: str
    err: str


class VM:
    def __init__(
        self,
        disk: Path,
        workdir: Path,
        firmware: str = "bios",
        memory: int = 1536,
        net: bool = False,
        extra_disks: tuple[Path, ...] = (),
        cdrom: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.disk = disk
        self.cdrom = cdrom  # an ISO on virtio-scsi (the cloud kernel has no AHCI), booted first
        self.dir = workdir
        self.firmware = firmware
        self.memory = memory
        # vCPUs: 2 by default; COS_VM_SMP tries another count (the boot stalls under
        # TCG are being chased: bench/boot.py with COS_VM_SMP=1 against the default).
        self.smp = int(os.environ.get("COS_VM_SMP", "2"))
        self.cpu = os.environ.get("COS_VM_CPU", "max")  # likewise, another CPU model
        self.net = net  # user networking: the host (and its 127.0.0.1 registry) is 10.0.2.2
        self.extra_disks = extra_disks  # /dev/vdb, /dev/vdc, … in the guest
        self.extra_args = extra_args  # more qemu arguments (-kernel … for a direct boot)
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.buf = b""
        self.next_id = 1
        self.boot_id: str | None = None
        self.console_log = workdir / "console.log"
        self.sockdir: Path | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Sockets live in a short private dir: a unix socket path must stay under 108
        # bytes, and the log dir's path grows with the checkout and the test's name.
        if self.sockdir is None:
            self.sockdir = Path(tempfile.mkdtemp(prefix="cos-vm-"))
        agent = self.sockdir / "agent.sock"
        agent.unlink(missing_ok=True)
        self.monitor = self.sockdir / "monitor.sock"
        self.monitor.unlink(missing_ok=True)
        argv = [
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            self.cpu,
            "-m",
            str(self.memory),
            "-smp",
            str(self.smp),
            "-display",
            "none",
            # No graphics card: the kernel's framebuffer console would draw every line
            # in software, and clearing its memory alone stalls an emulated boot.
            "-vga",
            "none",
            "-nic",
            "user,model=virtio-net-pci" if self.net else "none",
            "-chardev",
            f"file,id=con,path={self.console_log},append=on",
            "-serial",
            "chardev:con",
            "-device",
            "virtio-serial-pci",
            "-chardev",
            f"socket,id=agent,path={agent},server=on,wait=off",
            "-device",
            "virtserialport,chardev=agent,name=cos.agent",
            "-monitor",
            f"unix:{self.monitor},server=on,wait=off",
        ]
        if self.cdrom is None:
            argv += ["-drive", f"file={self.disk},format=qcow2,if=virtio"]
        else:
            argv += [
                "-device",
                "virtio-scsi-pci,id=scsi0",
                "-drive",
                f"file={self.cdrom},format=raw,if=none,id=cd0,media=cdrom,readonly=on",
                "-device",
                "scsi-cd,drive=cd0,bootindex=0",
                "-drive",
                f"file={self.disk},format=qcow2,if=none,id=d0",
                "-device",
                "virtio-blk-pci,drive=d0,bootindex=1",
            ]
        for extra in self.extra_disks:
            argv += ["-drive", f"file={extra},format=qcow2,if=virtio"]
        if self.firmware == "efi":
            vars_copy = self.dir / "OVMF_VARS.fd"
            if not vars_copy.exists():
                shutil.copyfile(OVMF_VARS, vars_copy)
            argv += [
                "-drive",
                f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive",
                f"if=pflash,format=raw,unit=1,file={vars_copy}",
            ]
        argv += self.extra_args
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=open(self.dir / "qemu.log", "ab"),  # noqa: SIM115 (owned by the child)
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not agent.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise VMError("qemu did not create the agent socket")
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(agent))

    def stop(self) -> None:
        if self.sock:
            self.sock.close()
            self.sock = None
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.sockdir is not None:
            shutil.rmtree(self.sockdir, ignore_errors=True)
            self.sockdir = None

    def __enter__(self) -> VM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def console(self) -> str:
        return self.console_log.read_text(errors="replace") if self.console_log.exists() else ""

    def _check_alive(self) -> None:
        if self.proc and self.proc.poll() is not None:
            raise VMError(
                f"qemu exited with {self.proc.returncode}; console tail:\n" + self.console()[-3000:]
            )

    # -- agent protocol ----------------------------------------------------------------
    def _send(self, req: dict[str, object]) -> int:
        assert self.sock
        rid = self.next_id
        self.next_id += 1
        # A guest between boots reads nothing; give the send time, then report it.
        self.sock.settimeout(30)
        self.sock.sendall(json.dumps({**req, "id": rid}).encode() + b"\n")
        return rid

    def _recv(self, rid: int, timeout: float) -> dict[str, object] | None:
        assert self.sock
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("id") == rid:
                    return msg  # type: ignore[no-any-return]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._check_alive()
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise VMError("agent socket closed")
            self.buf += chunk

    def sh(self, command: str, timeout: float = 120) -> Result:
        rid = self._send({"sh": command, "timeout": timeout})
        msg = self._recv(rid, timeout + 10)
        if msg is None:
            raise VMError(f"no answer from the guest to {command!r} within {timeout}s")
        return Result(int(msg["rc"]), str(msg["out"]), str(msg["err"]))  # type: ignore[call-overload]

    def ok(self, command: str, timeout: float = 120) -> str:
        r = self.sh(command, timeout)
        if r.rc != 0:
            raise VMError(f"{command!r} failed with {r.rc}: {r.err.strip() or r.out.strip()}")
        return r.out

    def wait_exit(self, timeout: float = 300) -> int:
        """Wait for the guest to power off (qemu exits)."""
        assert self.proc
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise VMError(
                f"guest did not power off within {timeout}s; console tail:\n"
                + self.console()[-3000:]
            ) from None

    def wait_agent(self, timeout: float = 300) -> str:
        """Wait until the agent of a (new) boot answers; returns that boot's id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                rid = self._send({"sh": "cat /proc/sys/kernel/random/boot_id", "timeout": 10})
            except TimeoutError:
                self._check_alive()
                continue
            msg = self._recv(rid, 2.0)
            if msg is not None and msg.get("rc") == 0:
                boot_id = str(msg["out"]).strip()
                if boot_id != self.boot_id:
                    self.boot_id = boot_id
                    return boot_id
            time.sleep(1)
        raise VMError(
            f"guest agent did not answer within {timeout}s; console tail:\n"
            + self.console()[-3000:]
        )

    def wait_multi_user(self, timeout: float = 300) -> str:
        """Boot finished: systemd reached its default target (running or degraded)."""
        self.wait_agent(timeout)
        state = self.sh("systemctl is-system-running --wait", timeout=timeout).out.strip()
        if state not in ("running", "degraded"):
            raise VMError(f"system state is {state!r}")
        return state

    def hard_reset(self) -> None:
        """Pull the plug and push the button: a reset without any sync (qemu monitor)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mon:
            mon.connect(str(self.monitor))
            mon.sendall(b"system_reset\n")
            time.sleep(0.5)

    def reboot(self, timeout: float = 300) -> str:
        self.start_reboot()
        return self.wait_multi_user(timeout)

    def start_reboot(self) -> None:
        """Ask for a reboot and return at once (the caller waits for the boots it expects)."""
        self._send({"sh": "sync; systemctl reboot", "timeout": 30})


def overlay(base: Path, path: Path, size: int | None = None) -> Path:
    """A throw-away qcow2 on top of a cached disk, so each test starts pristine; with
    size, larger than its base (a disk grown in place: the new room reads as zeros)."""
    path.unlink(missing_ok=True)
    fmt = "qcow2" if base.suffix == ".qcow2" else "raw"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", fmt, str(path)]
        + ([str(size)] if size is not None else []),
        check=True,
    )
    return path
