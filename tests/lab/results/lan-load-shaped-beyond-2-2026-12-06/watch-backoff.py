# Samples rc's proxy sockets every second during lan-load: upstream sockets
# to the TCP server (:6002) with their send queue and backoff, LAN-side
# sockets of the proxy (:7448) with their receive queue.
import re, subprocess, sys, time, json
out = open(sys.argv[1], "w")
ns = None
while ns is None:
    for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        if n.endswith("-rc"):
            ns = n
    time.sleep(0.5)
t0 = time.time()
while time.time() - t0 < float(sys.argv[2]):
    try:
        up = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tnioH", "state", "established",
                             "( dport = :6002 )"], capture_output=True, text=True, timeout=5).stdout
        lan = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tnH", "state", "established",
                              "( sport = :7448 )"], capture_output=True, text=True, timeout=5).stdout
    except Exception as e:
        time.sleep(1); continue
    ups = []
    lines = up.splitlines()
    i = 0
    while i < len(lines):
        l = lines[i]
        m = re.match(r"\s*(\d+)\s+(\d+)\s+(\S+)\s+(\S+)", l)
        if m:
            info = lines[i+1] if i + 1 < len(lines) and not re.match(r"\s*\d+\s+\d+\s+\S+:\d+", lines[i+1]) else l
            b = re.search(r"backoff:(\d+)", l + " " + info)
            ups.append([m.group(3), int(m.group(2)), int(b.group(1)) if b else 0])
        i += 1
    lans = []
    for l in lan.splitlines():
        m = re.match(r"\s*(\d+)\s+(\d+)\s+(\S+)\s+(\S+)", l)
        if m:
            lans.append([m.group(4), int(m.group(1))])
    out.write(json.dumps({"t": round(time.time() - t0, 1), "up": ups, "lan": lans}) + "\n")
    out.flush()
    time.sleep(1)
