"""Record a capture with dumpcap (Wireshark's capture engine, Debian package ``tshark``)
while a run goes on.

::

    with Dumpcap(run_dir / "capture.pcapng", interface=interface_for(host),
                 capture_filter=capture_filter([host], tcp_ports=[port])) as cap:
        ...  # drive the target
    cap.result.anchors   # wall/monotonic pairs taken around the capture

``__enter__`` returns only once dumpcap is really capturing (it has opened the device and
written the file header). ``__exit__`` always stops it cleanly (SIGTERM, which dumpcap
handles like Ctrl-C: it flushes and closes the file; the process group is killed only if it
hangs), also when the body raises or is interrupted with Ctrl-C, and a watchdog stops it
the same way if voiceaudit itself dies. Missing rights or a missing dumpcap raise
:class:`~voiceaudit.errors.EnvironmentProblem` with the exact command that fixes it, so
the caller can say so and run on without a capture.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from voiceaudit.clock import Anchor, Clock, ClockMap, MonotonicClock, take_anchor
from voiceaudit.errors import EnvironmentProblem, UsageError

SETCAP_HINT = "sudo setcap cap_net_raw,cap_net_admin=eip {dumpcap}"
_CAP_NET_ADMIN = 12
_CAP_NET_RAW = 13


@dataclass(frozen=True, slots=True)
class DumpcapResult:
    """What a finished capture left behind."""

    path: Path
    interface: str
    capture_filter: str | None
    #: Anchors taken just after capture started and just before it stopped.
    anchors: tuple[Anchor, ...]
    packets: int | None
    dropped: int | None
    stderr: str

    @property
    def clock_map(self) -> ClockMap:
        return ClockMap(self.anchors)


def find_dumpcap(explicit: str | None = None) -> str:
    """Path of dumpcap, or an EnvironmentProblem saying how to install it."""
    path = (
        explicit
        or shutil.which("dumpcap")
        or ("/usr/bin/dumpcap" if os.access("/usr/bin/dumpcap", os.X_OK) else None)
    )
    if path is None or not os.access(path, os.X_OK):
        raise EnvironmentProblem(
            "dumpcap (Wireshark's capture tool) is not installed or not executable",
            hint="sudo apt install tshark   (Debian/Ubuntu; other systems: install Wireshark)",
        )
    return path


def _file_caps(path: str) -> set[int]:
    """Permitted capabilities in the file's ``security.capability`` attribute."""
    try:
        raw = os.getxattr(path, "security.capability")
    except (OSError, AttributeError):
        return set()
    if len(raw) < 8:
        return set()
    permitted = int.from_bytes(raw[4:8], "little")
    if len(raw) >= 16:
        permitted |= int.from_bytes(raw[12:16], "little") << 32
    return {bit for bit in range(64) if permitted >> bit & 1}


def capture_rights_problem(dumpcap: str | None = None) -> EnvironmentProblem | None:
    """A quick look (no capture started) at whether this process may capture.

    Root may; otherwise dumpcap needs the CAP_NET_RAW and CAP_NET_ADMIN file capabilities.
    This cannot see every reason a capture fails (``Dumpcap`` finds out for sure).
    """
    try:
        path = find_dumpcap(dumpcap)
    except EnvironmentProblem as exc:
        return exc
    if os.geteuid() == 0:
        return None
    caps = _file_caps(path)
    if {_CAP_NET_RAW, _CAP_NET_ADMIN} <= caps:
        return None
    return no_rights_problem(path)


def no_rights_problem(path: str, detail: str = "") -> EnvironmentProblem:
    return EnvironmentProblem(
        "no permission to capture packets" + (f" ({detail})" if detail else ""),
        hint=f"{SETCAP_HINT.format(dumpcap=path)}   (or run as root); the run goes on without a "
        "capture",
    )


def interface_for(host: str) -> str:
    """The interface whose traffic reaches ``host`` (``lo`` for local targets)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return "any"
    addrs = [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]
    if not addrs:
        return "any"
    if all(a.is_loopback for a in addrs):
        return "lo"
    ip_cmd = shutil.which("ip")
    if ip_cmd is not None:
        try:
            out = subprocess.run(
                [ip_cmd, "-o", "route", "get", str(addrs[0])],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        parts = out.split()
        if "dev" in parts:
            dev = parts[parts.index("dev") + 1]
            return dev
    return "any"


def capture_filter(
    hosts: Iterable[str] = (),
    *,
    tcp_ports: Iterable[int] = (),
    udp_ports: Iterable[int] = (),
    all_udp: bool = False,
) -> str | None:
    """A BPF capture filter limited to the target's hosts and ports.

    ``all_udp`` keeps every UDP packet of those hosts (WebRTC media ports are only known
    once ICE has run). Loopback addresses are left out of the host part: on ``lo`` every
    packet has them anyway.
    """
    host_terms = []
    for h in hosts:
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            try:
                ip = ipaddress.ip_address(str(socket.getaddrinfo(h, None)[0][4][0]).split("%")[0])
            except (socket.gaierror, IndexError, ValueError):
                continue
        if ip.is_loopback:
            continue
        host_terms.append(f"{'ip6 ' if ip.version == 6 else ''}host {ip}")
    port_terms = [f"tcp port {int(p)}" for p in tcp_ports]
    port_terms += [f"udp port {int(p)}" for p in udp_ports]
    if all_udp:
        port_terms.append("udp")
    parts = []
    if host_terms:
        parts.append("(" + " or ".join(host_terms) + ")")
    if port_terms:
        parts.append("(" + " or ".join(port_terms) + ")")
    return " and ".join(parts) if parts else None


@dataclass(frozen=True, slots=True)
class CapturePlan:
    """Where and what to capture for one target."""

    host: str
    port: int | None
    interface: str
    capture_filter: str | None
    #: The target speaks TLS (``wss://``, ``https://``): record a key log to decrypt it.
    tls: bool


#: File name, next to the capture, for the TLS key log (``SSLKEYLOGFILE``).
KEYLOG_NAME = "tls-keys.log"


def plan_capture(target: str, *, media_udp: bool = False) -> CapturePlan:
    """The interface and capture filter for a target URL (``ws://``, ``wss://``,
    ``http://``, ``https://``) or ``host:port``; ``media_udp`` keeps the host's UDP too
    (WebRTC media, whose ports ICE picks later)."""
    u = urllib.parse.urlsplit(target if "://" in target else f"tcp://{target}")
    scheme = u.scheme.lower()
    host = u.hostname or "127.0.0.1"
    try:
        port = u.port
    except ValueError:
        port = None
    if port is None:
        port = {"ws": 80, "http": 80, "wss": 443, "https": 443}.get(scheme)
    return CapturePlan(
        host=host,
        port=port,
        interface=interface_for(host),
        capture_filter=capture_filter([host], tcp_ports=[port] if port else [], all_udp=media_udp),
        tls=scheme in ("wss", "https"),
    )


#: dumpcap runs under this watchdog: it stops dumpcap (SIGTERM, which dumpcap handles
#: like Ctrl-C: it flushes and closes the file) as soon as its stdin closes, whether
#: voiceaudit closed it or died. (A background job of a non-interactive shell ignores
#: SIGINT and reads /dev/null, hence SIGTERM and the explicit fd 3.)
_WATCHDOG = """
exec 3<&0
"$@" </dev/null &
pid=$!
( cat <&3 >/dev/null; kill -TERM "$pid" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$pid"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"""


class Dumpcap:
    """A running dumpcap, as a context manager (see the module docstring)."""

    def __init__(
        self,
        output: str | os.PathLike[str],
        *,
        interface: str = "lo",
        capture_filter: str | None = None,
        clock: Clock | None = None,
        dumpcap: str | None = None,
        command: list[str] | None = None,
        ready_timeout_s: float = 15.0,
        stop_timeout_s: float = 10.0,
        flush_s: float = 0.5,
        snaplen: int | None = None,
    ) -> None:
        self.output = Path(output)
        self.interface = interface
        self.filter = capture_filter
        self.clock: Clock = clock or MonotonicClock()
        self.dumpcap = dumpcap
        #: Run dumpcap through this prefix (e.g. ``["setpriv", "--reuid=65534", ...]``).
        self.command = command or []
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        #: The kernel hands packets to dumpcap in blocks, retired after ~250 ms: wait
        #: this long before stopping, or the last packets are lost.
        self.flush_s = flush_s
        self.snaplen = snaplen
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._start_anchor: Anchor | None = None
        self.result: DumpcapResult | None = None

    # ------------------------------------------------------------------ start
    def start(self) -> Dumpcap:
        path = find_dumpcap(self.dumpcap)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.output.exists():
            self.output.unlink()
        argv = [*self.command, path, "-i", self.interface, "-w", str(self.output), "-q"]
        if self.filter:
            argv += ["-f", self.filter]
        if self.snaplen:
            argv += ["-s", str(self.snaplen)]
        sh = shutil.which("sh") or "/bin/sh"
        try:
            self._proc = subprocess.Popen(
                [sh, "-c", _WATCHDOG, "voiceaudit-dumpcap", *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot start dumpcap: {exc.strerror or exc}",
                hint="sudo apt install tshark",
            ) from None
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready.is_set():
            if self._proc.poll() is not None:
                self._reader.join(timeout=2)
                self._stop_process()
                raise self._failure(path)
            if time.monotonic() > deadline:
                self._stop_process()
                raise EnvironmentProblem(
                    f"dumpcap did not start capturing on {self.interface!r} within "
                    f"{self.ready_timeout_s:g} s",
                    hint=self._stderr_tail() or "check 'dumpcap -D' for the interface name",
                )
            self._ready.wait(0.02)
        # The header is written when the device is open: from here packets are kept.
        while not (self.output.exists() and self.output.stat().st_size > 0):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        self._start_anchor = take_anchor(self.clock)
        return self

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            self._stderr.append(line)
            if line.startswith("File:"):
                self._ready.set()

    def _stderr_tail(self) -> str:
        lines = [ln for ln in self._stderr if ln.strip()]
        return " ".join(lines[-3:])

    def _failure(self, path: str) -> Exception:
        text = "\n".join(self._stderr)
        low = text.lower()
        first = next((ln for ln in self._stderr if ln.startswith("dumpcap:")), self._stderr_tail())
        if "permission" in low or "operation not permitted" in low:
            return no_rights_problem(path, f"on {self.interface!r}")
        if "no device named" in low or "no such device" in low:
            return EnvironmentProblem(
                f"there is no interface named {self.interface!r} to capture on",
                hint="list the interfaces with 'dumpcap -D'",
            )
        if "invalid capture filter" in low:
            return UsageError(f"bad capture filter {self.filter!r}", hint=first)
        status = self._proc.returncode if self._proc is not None else None
        return EnvironmentProblem(
            f"dumpcap failed to start: {first or f'exit status {status}'}",
            hint="run 'dumpcap -D' and check the output directory is writable",
        )

    # ------------------------------------------------------------------ stop
    def _stop_process(self) -> None:
        proc = self._proc
        if proc is None:
            return
        # Closing the watchdog's stdin makes it send SIGTERM to dumpcap.
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if proc.poll() is not None:
            return
        try:
            proc.wait(timeout=self.stop_timeout_s)
            return
        except subprocess.TimeoutExpired:
            pass
        # dumpcap hangs: end our own process group (the watchdog and dumpcap).
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=3.0)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop(self) -> DumpcapResult:
        if self.result is not None:
            return self.result
        end_anchor = take_anchor(self.clock)
        if self._proc is not None and self._proc.poll() is None and self.flush_s > 0:
            time.sleep(self.flush_s)
        self._stop_process()
        if self._reader is not None:
            self._reader.join(timeout=5)
        packets = dropped = None
        text = "\n".join(self._stderr)
        m = re.search(r"Packets(?: captured)?: (\d+)", text)
        if m:
            packets = int(m.group(1))
        m = re.search(r"received/dropped on interface .*?: (\d+)/(\d+)", text)
        if m:
            dropped = int(m.group(2))
        anchors = tuple(a for a in (self._start_anchor, end_anchor) if a is not None)
        self.result = DumpcapResult(
            path=self.output,
            interface=self.interface,
            capture_filter=self.filter,
            anchors=anchors,
            packets=packets,
            dropped=dropped,
            stderr="\n".join(self._stderr),
        )
        return self.result

    def __enter__(self) -> Dumpcap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
