# The machine's floor for serving bytes over loopback TCP: one process sendmsg()s 5 MiB
# windows of a 1 GiB buffer (cold in the caches, as tail-cache data is) as 48 iovecs, or sendall()
# of one buffer, to a forked reader; prints GB per sender CPU-second (getrusage).
# usage: python3 perf/socket-floor.py GB [vec|one]
import os, socket, sys, time, resource
total = int(float(sys.argv[1]) * 1e9); chunk = 5 << 20
mode = sys.argv[2] if len(sys.argv) > 2 else "one"
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1); port = l.getsockname()[1]
if os.fork() == 0:
    c = socket.create_connection(("127.0.0.1", port)); buf = bytearray(1 << 20); got = 0
    while True:
        n = c.recv_into(buf)
        if n == 0: break
    os._exit(0)
s, _ = l.accept()
big = bytearray(os.urandom(1 << 20)) * 1024  # 1 GiB: cold in the caches, as tail-cache data is
views = [memoryview(big)[o:o + chunk] for o in range(0, len(big) - chunk, chunk)]
k = 0
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.time(); sent = 0
while sent < total:
    data = views[k % len(views)]; k += 1
    pieces = [data[i:i + (chunk // 48)] for i in range(0, chunk, chunk // 48)]
    if mode == "one":
        s.sendall(data); sent += chunk
    else:
        n = s.sendmsg(pieces); sent += n
        if n < chunk:
            s.sendall(data[n:]); sent += chunk - n
r1 = resource.getrusage(resource.RUSAGE_SELF); t1 = time.time()
s.shutdown(socket.SHUT_WR)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(f"{mode}: {sent/1e9:.2f} GB in {t1-t0:.2f} s, sender CPU {cpu:.2f} s (user {r1.ru_utime-r0.ru_utime:.2f}): {sent/1e9/cpu:.2f} GB/CPU-s")
os.wait()
