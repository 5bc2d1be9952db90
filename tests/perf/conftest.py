"""Native reference programs for the load benchmarks (compiled on first use, into a temp dir).

Not collected by the default test run: the benchmarks are ``bench_*.py``. Run them with::

    python -m pytest tests/perf -p no:randomly -o python_files='bench_*.py' -s

They need gcc and libmodbus-dev (``apt-get install -y libmodbus-dev``), and hping3 plus root for
the SYN benchmark; what is missing is skipped with the reason. Every figure is a ratio measured in
the same run against the same server, printed (never asserted against a time).

Programs (each bounded by its SECONDS argument, printing one number):

- ``mbserver``: a libmodbus Modbus/TCP server (one connection at a time, answers every request,
  pipelined ones included, in order); prints its port;
- ``mbclient_pipe PORT SECONDS DEPTH``: raw-socket FC 3 client keeping DEPTH requests in flight;
- ``mbclient_lib PORT SECONDS``: libmodbus ``modbus_read_registers`` loop (one at a time);
- ``acceptor``: accepts and closes connections; prints its port;
- ``connloop PORT SECONDS``: connect/close loop (abortive close, like the harness's ``rst``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SOURCES = {
    "mbserver": r"""
#include <modbus.h>
#include <stdio.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
int main(void) {
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", 0);
    modbus_mapping_t *map = modbus_mapping_new(0, 0, 100, 0);
    int s = modbus_tcp_listen(ctx, 16);
    struct sockaddr_in a; socklen_t l = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &l);
    printf("%d\n", ntohs(a.sin_port)); fflush(stdout);
    uint8_t q[MODBUS_TCP_MAX_ADU_LENGTH];
    for (;;) {
        if (modbus_tcp_accept(ctx, &s) < 0) continue;
        for (;;) {
            int rc = modbus_receive(ctx, q);
            if (rc > 0) { map->tab_registers[0]++; modbus_reply(ctx, q, rc, map); }
            else if (rc == -1) break;
        }
        modbus_close(ctx);
    }
}
""",
    "mbclient_pipe": r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec / 1e9; }
static unsigned tid = 0;
static int req(unsigned char *p, int n) {
    for (int i = 0; i < n; i++, p += 12) {
        unsigned char r[12] = {0, 0, 0, 0, 0, 6, 1, 3, 0, 0, 0, 1};
        r[0] = (tid >> 8) & 255; r[1] = tid & 255; tid++;
        memcpy(p, r, 12);
    }
    return n * 12;
}
int main(int argc, char **argv) {
    int port = atoi(argv[1]); double secs = atof(argv[2]); int depth = atoi(argv[3]);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    unsigned char out[12 * 256], in[65536];
    long done = 0, partial = 0; double end = now() + secs;
    send(s, out, req(out, depth), 0);
    while (now() < end) {
        ssize_t n = recv(s, in, sizeof in, 0);
        if (n <= 0) break;
        partial += n;                 /* each answer (FC 3, one register) is 11 bytes */
        long k = partial / 11;
        partial -= k * 11; done += k;
        while (k > 0) { int m = k > 256 ? 256 : (int)k; send(s, out, req(out, m), 0); k -= m; }
    }
    printf("%ld\n", done); return 0;
}
""",
    "mbclient_lib": r"""
#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", atoi(argv[1]));
    if (modbus_connect(ctx) < 0) { perror("connect"); return 1; }
    double end = now() + atof(argv[2]); long done = 0; uint16_t v;
    while (now() < end) { if (modbus_read_registers(ctx, 0, 1, &v) != 1) break; done++; }
    printf("%ld\n", done); modbus_close(ctx); return 0;
}
""",
    "acceptor": r"""
#include <stdio.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
int main(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(s, (struct sockaddr *)&a, sizeof a); listen(s, 1024);
    socklen_t l = sizeof a; getsockname(s, (struct sockaddr *)&a, &l);
    printf("%d\n", ntohs(a.sin_port)); fflush(stdout);
    for (;;) { int c = accept(s, 0, 0); if (c >= 0) close(c); }
}
""",
    "connloop": r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct linger lg = {1, 0};
    double end = now() + atof(argv[2]); long ok = 0;
    while (now() < end) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) ok++;
        close(s);
    }
    printf("%ld\n", ok); return 0;
}
""",
}


class Native:
    """The compiled programs, and the servers started from them (all stopped at teardown)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._servers: list[subprocess.Popen[str]] = []

    def path(self, name: str) -> str:
        """The executable ``name``."""
        return str(self.folder / name)

    def server(self, name: str) -> int:
        """Start a server program; return the port it printed."""
        proc = subprocess.Popen([self.path(name)], stdout=subprocess.PIPE, text=True)
        self._servers.append(proc)
        assert proc.stdout is not None
        return int(proc.stdout.readline())

    def run(self, name: str, *args: object, timeout: float = 30.0) -> int:
        """Run a client program; return the number it printed."""
        out = subprocess.run([self.path(name), *map(str, args)], capture_output=True, text=True,
                             timeout=timeout, check=True)
        return int(out.stdout.strip())

    def close(self) -> None:
        """Stop every server."""
        for proc in self._servers:
            proc.terminate()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def native() -> Iterator[Native]:
    """Compile the reference programs (skips without gcc or libmodbus)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    if not Path("/usr/include/modbus/modbus.h").exists():
        pytest.skip("libmodbus-dev is not installed (apt-get install -y libmodbus-dev)")
    folder = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    try:
        for name, source in SOURCES.items():
            src = folder / f"{name}.c"
            src.write_text(source)
            subprocess.run([gcc, "-O2", "-o", str(folder / name), str(src),
                            "-I/usr/include/modbus", "-lmodbus"], check=True, timeout=120)
        tools = Native(folder)
        yield tools
        tools.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def report() -> Callable[..., None]:
    """``report(title, **figures)``: print one benchmark line."""

    def show(title: str, **figures: float | str) -> None:
        text = ", ".join(f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in figures.items())
        print(f"\nBENCH {title}: {text}")

    return show
