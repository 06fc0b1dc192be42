#!/usr/bin/python3
"""Test agent for the e2e suite: runs commands sent by the host over a virtio-serial
port and answers with their results, one JSON object per line.

Only the e2e test image carries it; the vanilla image does not.
"""

import json
import os
import subprocess
import time

PORT = "/dev/virtio-ports/cos.agent"


def handle(req):
    argv = req.get("argv") or ["/bin/sh", "-c", req["sh"]]
    try:
        p = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=req.get("timeout", 120),
            check=False,
        )
        return {
            "id": req.get("id"),
            "rc": p.returncode,
            "out": p.stdout.decode(errors="replace"),
            "err": p.stderr.decode(errors="replace"),
        }
    except Exception as exc:  # report, never die
        return {"id": req.get("id"), "rc": -1, "out": "", "err": f"agent: {exc}"}


def serve():
    while not os.path.exists(PORT):
        time.sleep(0.2)
    fd = os.open(PORT, os.O_RDWR)
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:  # host not connected: wait and read again
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                continue
            reply = json.dumps(handle(req)).encode() + b"\n"
            view = memoryview(reply)
            while view:
                n = os.write(fd, view)
                view = view[n:]


if __name__ == "__main__":
    serve()
