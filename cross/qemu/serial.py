#!/usr/bin/env python3
"""Run a headless qemu, stream its serial console, stop at the result marker.

usage: serial.py --log FILE --timeout SECONDS [--openwrt] [--cmd LINE]... -- QEMU ARGS...

The console (qemu -nographic: serial on stdio) is copied to FILE and to our
stdout as it arrives. The guest's check script ends with a line
`DCOL-QEMU-RESULT: PASS` or `DCOL-QEMU-RESULT: FAIL`; after it we give qemu a
few seconds to power off by itself, then kill it.

--openwrt drives a real OpenWrt console instead of a self-running /init: it
waits for "Please press Enter to activate this console." (or a shell
prompt), presses Enter, waits for the `root@...# ` prompt and types each
--cmd LINE, waiting for the prompt again between lines (the last one runs the
checks), then types `poweroff`.

Exit status: 0 PASS, 1 FAIL, 2 no result before the timeout (or qemu died).
"""
import argparse
import os
import re
import select
import signal
import subprocess
import sys
import time

RESULT = re.compile(rb"DCOL-QEMU-RESULT: (PASS|FAIL)")
PRESS_ENTER = re.compile(rb"Please press Enter to activate this console")
PROMPT = re.compile(rb"root@[^\r\n:]*:[^\r\n#]*# ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--timeout", type=float, required=True)
    ap.add_argument("--openwrt", action="store_true")
    ap.add_argument("--cmd", action="append", default=[])
    ap.add_argument("qemu", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    argv = a.qemu[1:] if a.qemu and a.qemu[0] == "--" else a.qemu
    if not argv:
        ap.error("no qemu command")

    start = time.monotonic()
    log = open(a.log, "wb")
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, bufsize=0)
    out = p.stdout.fileno()
    buf = b""          # everything seen (for the result marker)
    pending = b""      # output since the last thing we typed (OpenWrt mode)
    state = "boot"     # boot -> shell -> typing -> done
    cmds = list(a.cmd)
    result = None
    result_at = None

    def send(s):
        p.stdin.write(s.encode() + b"\r")
        p.stdin.flush()

    while True:
        now = time.monotonic()
        if now - start > a.timeout:
            sys.stdout.write(f"\n[serial.py] timeout after {a.timeout:.0f} s, killing qemu\n")
            break
        if result is not None and now - result_at > 15:
            sys.stdout.write("\n[serial.py] guest did not power off within 15 s, killing qemu\n")
            break
        r, _, _ = select.select([out], [], [], 0.5)
        if r:
            chunk = os.read(out, 65536)
            if not chunk:
                break  # qemu exited
            log.write(chunk)
            log.flush()
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            buf += chunk
            pending += chunk
            if result is None:
                m = RESULT.search(buf)
                if m:
                    result = m.group(1).decode()
                    result_at = time.monotonic()
                    if a.openwrt:
                        time.sleep(0.5)
                        send("poweroff")
        elif p.poll() is not None:
            break
        if a.openwrt and result is None:
            if state == "boot":
                if PRESS_ENTER.search(pending) or PROMPT.search(pending):
                    time.sleep(1)
                    pending = b""
                    send("")
                    state = "shell"
            elif state == "shell" and PROMPT.search(pending):
                if cmds:
                    pending = b""
                    send(cmds.pop(0))
                else:
                    state = "done"

    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    log.close()
    took = time.monotonic() - start
    sys.stdout.write(f"\n[serial.py] qemu ran {took:.1f} s, result: {result or 'none'}\n")
    return {"PASS": 0, "FAIL": 1}.get(result, 2)


if __name__ == "__main__":
    sys.exit(main())
