"""Probe (not shipped): how many descriptors does `jsar serve` hold at its peak while 1,100 clients connect and
never speak under `ulimit -n 1024`? Answer (2 cores, three busy loops beside it): with asyncio's accept batch at
128 the process peaked at 978 of 1,024, 2.1 batches above its connection budget, and CI once ran out (EMFILE at
accept); with the batch at 64 and four batches held back it peaks near 707. It set
`connections.ACCEPT_TURNS_IN_FLIGHT` and the backlog in `app.server_config`. Feeds indexing/service/connections.py.

    python -m evaluation.probes.serve_descriptors INDEX_DIR [SOCKETS]
"""
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from urllib.request import urlopen

index_dir = sys.argv[1]
sockets_wanted = int(sys.argv[2]) if len(sys.argv) > 2 else 1100
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
service = subprocess.Popen([sys.executable, "-c", "from jsa_retrieval.cli import main; main()", "serve", "--index",
                            index_dir, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)))
while True:
    try:
        urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        break
    except OSError:
        time.sleep(0.2)
peak, sampling = [0], [True]


def sample() -> None:
    while sampling[0]:
        try:
            peak[0] = max(peak[0], len(os.listdir(f"/proc/{service.pid}/fd")))
        except OSError:
            pass


watcher = threading.Thread(target=sample)
watcher.start()
idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(sockets_wanted)]
time.sleep(1)
sampling[0] = False
watcher.join()
for sock in idle:
    sock.close()
service.terminate()
log = service.communicate()[0]
print(f"peak descriptors {peak[0]} of 1024; budget line: "
      f"{next((line for line in log.splitlines() if 'at most' in line), '(whole limit)')}; "
      f"{'EMFILE in the log' if 'Too many open files' in log else 'no EMFILE'}")
