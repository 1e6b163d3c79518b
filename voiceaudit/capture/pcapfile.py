"""Read and write pcap / pcapng files: fast, tolerant, integer nanoseconds.

The reader walks the file in large blocks and hands out *batches*: the block's bytes plus
one ``(ts_ns, linktype, offset, caplen, wirelen)`` tuple per packet, so callers decode
headers in place with ``struct.unpack_from`` and no per-packet copy. It keeps nothing
between batches but the tail of a record cut by the block boundary, so memory does not
grow with the number of packets.

Why not dpkt's readers: they return float timestamps (nanosecond captures lose
precision) and dpkt's pcapng reader only knows the first interface. dpkt is still used by
the tests to build packets independently of this code.

Bad input: a file that is not a capture raises :class:`~voiceaudit.errors.CaptureError`;
a capture cut short (or corrupt part-way) yields every whole packet before the damage and
records a warning in :attr:`CaptureReader.warnings`.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, cast

from voiceaudit.errors import CaptureError

#: One packet inside a batch: (wall-clock ns, link type, offset in the batch, captured
#: length, original length on the wire).
Record = tuple[int, int, int, int, int]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # microseconds, little-endian
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_SHB_TYPE = 0x0A0D0D0A
_GZIP_MAGIC = b"\x1f\x8b"
_BLOCK_SIZE = 1 << 20
#: A record or block larger than this is taken as corruption, not data.
_MAX_RECORD = 64 << 20

_BT_IDB = 1
_BT_PB = 2
_BT_SPB = 3
_BT_EPB = 6
_BT_DSB = 10
#: The blocks that hold a timestamped packet: Enhanced and (obsolete) Packet Blocks.
_PACKET_BLOCKS = frozenset({_BT_EPB, _BT_PB})
#: Decryption Secrets Block type for a TLS key log (pcapng spec).
DSB_TLS_KEYLOG = 0x544C534B


@dataclass(slots=True)
class _Interface:
    linktype: int
    snaplen: int
    mul: int = 1_000  # ns per tick numerator (default resolution 10^-6 s)
    div: int = 1
    shift: int = 0  # for binary resolutions: ns = (ticks * 10^9) >> shift
    offset_ns: int = 0


@dataclass(slots=True)
class CaptureFacts:
    """What the reader learned about the file while reading it."""

    format: str = ""
    link_types: set[int] = field(default_factory=set)
    packets: int = 0
    truncated: bool = False
    #: TLS key logs embedded in pcapng Decryption Secrets Blocks.
    tls_secrets: list[bytes] = field(default_factory=list)


def _open_raw(path: Path) -> BinaryIO:
    try:
        if path.is_dir():
            raise CaptureError("is a directory, not a capture file", path=str(path))
        return open(path, "rb")
    except FileNotFoundError:
        raise CaptureError("no such file", path=str(path)) from None
    except PermissionError:
        raise CaptureError(
            "permission denied", path=str(path), hint="check the file's owner and mode"
        ) from None
    except OSError as exc:
        raise CaptureError(f"cannot open: {exc.strerror or exc}", path=str(path)) from None


class CaptureReader:
    """Iterate a pcap or pcapng file (optionally gzip-compressed) in batches."""

    def __init__(self, path: str | os.PathLike[str], *, block_size: int = _BLOCK_SIZE) -> None:
        self.path = Path(path)
        self.block_size = block_size
        self.facts = CaptureFacts()
        self.warnings: list[str] = []
        self._f: IO[bytes] | None = None
        self._head = b""
        self._gzip = False
        self._gzip_done = False
        self._gzip_error: str | None = None
        self._open()

    # ----------------------------------------------------------------- opening
    def _open(self) -> None:
        raw = _open_raw(self.path)
        head = raw.read(4)
        if head[:2] == _GZIP_MAGIC:
            raw.seek(0)
            gz = gzip.GzipFile(fileobj=raw, mode="rb")
            try:
                head = gz.read(4)
            except (OSError, EOFError, zlib.error) as exc:
                raw.close()
                raise CaptureError(f"gzip data is damaged: {exc}", path=str(self.path)) from None
            self._f = cast(IO[bytes], gz)
            self._gzip = True
        else:
            self._f = raw
        if not head:
            self.close()
            raise CaptureError(
                "the file is empty, not a capture",
                path=str(self.path),
                hint="was the capture stopped before it wrote anything?",
            )
        if head in _PCAP_MAGICS:
            self.facts.format = "pcap"
        elif head == _PCAPNG_SHB:
            self.facts.format = "pcapng"
        else:
            self.close()
            shown = head.hex(" ")
            raise CaptureError(
                f"not a pcap or pcapng capture (it starts with bytes {shown})",
                path=str(self.path),
                hint="give a file written by dumpcap, tcpdump, Wireshark or 'voiceaudit run "
                "--capture'; other formats convert with 'editcap -F pcapng IN OUT'",
            )
        self._head = head

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- reading
    def _read(self, n: int) -> bytes:
        assert self._f is not None
        if not self._gzip:
            return self._f.read(n)
        # Piece by piece, so the data before a cut in the compressed stream is kept.
        parts: list[bytes] = []
        got = 0
        while got < n and not self._gzip_done:
            try:
                piece = self._f.read1(n - got)  # type: ignore[attr-defined]
            except (OSError, EOFError, zlib.error) as exc:
                self._gzip_done = True
                self._gzip_error = f"the compressed data ends early or is damaged ({exc})"
                break
            if not piece:
                self._gzip_done = True
                break
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def _warn_truncated(self, why: str) -> None:
        if not self.facts.truncated:
            self.facts.truncated = True
            self.warnings.append(
                f"{why}; results cover the {self.facts.packets} whole packets before it"
            )

    def batches(self) -> Iterator[tuple[bytes, list[Record]]]:
        """Yield ``(buffer, records)`` until the end of the file (or of its readable part)."""
        if self._f is None:
            return
        try:
            if self.facts.format == "pcap":
                yield from self._pcap_batches()
            else:
                yield from self._pcapng_batches()
        finally:
            self.close()

    def packets(self) -> Iterator[tuple[int, int, bytes, int]]:
        """Yield ``(ts_ns, linktype, data, wirelen)`` per packet (slower; for tools and tests)."""
        for buf, recs in self.batches():
            for ts, lt, off, cap, wire in recs:
                yield ts, lt, buf[off : off + cap], wire

    def _pcap_batches(self) -> Iterator[tuple[bytes, list[Record]]]:
        endian, tick_ns = _PCAP_MAGICS[self._head]
        rest = self._read(20)
        if len(rest) < 20:
            self._warn_truncated("the pcap file header is cut short")
            return
        _major, _minor, _zone, _sigfigs, _snaplen, linkfield = struct.unpack(
            endian + "HHiIII", rest
        )
        linktype = linkfield & 0x0FFFFFFF
        self.facts.link_types.add(linktype)
        rec = struct.Struct(endian + "IIII")
        unpack = rec.unpack_from
        tail: bytes | None = b""
        while True:
            data = self._read(self.block_size)
            buf = tail + data if tail else data
            n = len(buf)
            pos = 0
            recs: list[Record] = []
            append = recs.append
            bad = False
            while pos + 16 <= n:
                sec, frac, incl, orig = unpack(buf, pos)
                if incl > _MAX_RECORD:
                    bad = True
                    break
                end = pos + 16 + incl
                if end > n:
                    break
                append((sec * 1_000_000_000 + frac * tick_ns, linktype, pos + 16, incl, orig))
                pos = end
            if recs:
                yield buf, recs
            tail = self._after_block(buf, len(recs), pos, bad, not data, "packet record")
            if tail is None:
                return

    def _after_block(
        self, buf: bytes, count: int, pos: int, bad: bool, eof: bool, unit: str
    ) -> bytes | None:
        """Count a block's ``count`` records; the bytes after ``pos`` to carry into the next
        block, or ``None`` when reading stops: at corruption, or at the end of the file
        (warning of a gzip error, or of a last ``unit`` cut short)."""
        self.facts.packets += count
        if bad:
            self._warn_corrupt(pos)
            return None
        tail = buf[pos:]
        if not eof:
            return tail
        if self._gzip_error:
            self._warn_truncated(self._gzip_error)
        if tail:
            self._warn_truncated(f"the last {unit} is cut short (truncated capture)")
        return None

    def _warn_corrupt(self, where: int) -> None:
        if not self.facts.truncated:
            self.facts.truncated = True
            self.warnings.append(
                f"corrupt record after packet {self.facts.packets} (near byte {where} of a "
                f"read block); results cover the {self.facts.packets} packets before it"
            )

    def _pcapng_batches(self) -> Iterator[tuple[bytes, list[Record]]]:
        tail: bytes | None = self._head
        ifaces: list[_Interface] = []
        endian = "<"
        u32 = struct.Struct("<I")
        epb = struct.Struct("<IIIII")
        pb = struct.Struct("<HHIIII")
        hdr = struct.Struct("<II")
        last_ts = 0
        eof = False
        while True:
            data = b"" if eof else self._read(self.block_size)
            if not data:
                eof = True
            buf = tail + data if tail else data
            n = len(buf)
            pos = 0
            recs: list[Record] = []
            append = recs.append
            bad = False
            while pos + 12 <= n:
                btype, blen = hdr.unpack_from(buf, pos)
                if btype == _SHB_TYPE:  # the same bytes in either byte order
                    # A new section: its byte order and interfaces start afresh.
                    bom = buf[pos + 8 : pos + 12]
                    if len(bom) < 4:
                        break
                    if bom == b"\x4d\x3c\x2b\x1a":
                        endian = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        endian = ">"
                    else:
                        bad = True
                        break
                    u32 = struct.Struct(endian + "I")
                    epb = struct.Struct(endian + "IIIII")
                    pb = struct.Struct(endian + "HHIIII")
                    hdr = struct.Struct(endian + "II")
                    blen = u32.unpack_from(buf, pos + 4)[0]
                    if blen < 28 or blen % 4 or blen > _MAX_RECORD:
                        bad = True
                        break
                    if pos + blen > n:
                        break
                    ifaces = []
                    pos += blen
                    continue
                if blen < 12 or blen % 4 or blen > _MAX_RECORD:
                    bad = True
                    break
                end = pos + blen
                if end > n:
                    break
                if btype in _PACKET_BLOCKS:
                    if btype == _BT_EPB:
                        iface, hi, lo, cap, orig = epb.unpack_from(buf, pos + 8)
                    else:  # the obsolete Packet Block: a 16-bit interface and a drop count
                        iface, _drops, hi, lo, cap, orig = pb.unpack_from(buf, pos + 8)
                    if iface >= len(ifaces) or cap > blen - 32:
                        bad = True
                        break
                    itf = ifaces[iface]
                    ticks = (hi << 32) | lo
                    if itf.shift:
                        ts = ((ticks * 1_000_000_000) >> itf.shift) + itf.offset_ns
                    else:
                        ts = ticks * itf.mul // itf.div + itf.offset_ns
                    last_ts = ts
                    append((ts, itf.linktype, pos + 28, cap, orig))
                elif btype == _BT_IDB:
                    ifaces.append(self._parse_idb(buf, pos, blen, endian))
                    self.facts.link_types.add(ifaces[-1].linktype)
                elif btype == _BT_SPB:
                    if not ifaces:
                        bad = True
                        break
                    orig = u32.unpack_from(buf, pos + 8)[0]
                    cap = min(orig, blen - 16)
                    if ifaces[0].snaplen:
                        cap = min(cap, ifaces[0].snaplen)
                    # A simple packet has no timestamp: it takes the previous packet's.
                    append((last_ts, ifaces[0].linktype, pos + 12, cap, orig))
                elif btype == _BT_DSB:
                    stype, slen = struct.unpack_from(endian + "II", buf, pos + 8)
                    if stype == DSB_TLS_KEYLOG and slen <= blen - 20:
                        self.facts.tls_secrets.append(bytes(buf[pos + 16 : pos + 16 + slen]))
                pos = end
            if recs:
                yield buf, recs
            tail = self._after_block(buf, len(recs), pos, bad, eof, "pcapng block")
            if tail is None:
                return

    @staticmethod
    def _parse_idb(buf: bytes, pos: int, blen: int, endian: str) -> _Interface:
        linktype, _res, snaplen = struct.unpack_from(endian + "HHI", buf, pos + 8)
        itf = _Interface(linktype=linktype, snaplen=snaplen)
        opt = pos + 16
        end = pos + blen - 4
        while opt + 4 <= end:
            code, olen = struct.unpack_from(endian + "HH", buf, opt)
            if code == 0:
                break
            val = buf[opt + 4 : opt + 4 + olen]
            if code == 9 and olen >= 1:  # if_tsresol
                r = val[0]
                if r & 0x80:
                    itf.shift = r & 0x7F
                    itf.mul, itf.div = 1, 1
                else:
                    itf.shift = 0
                    if r <= 9:
                        itf.mul, itf.div = 10 ** (9 - r), 1
                    else:
                        itf.mul, itf.div = 1, 10 ** (r - 9)
            elif code == 14 and olen >= 8:  # if_tsoffset, seconds
                itf.offset_ns = struct.unpack_from(endian + "q", val)[0] * 1_000_000_000
            opt += 4 + ((olen + 3) & ~3)
        return itf


def count_packets(path: str | os.PathLike[str]) -> int:
    """How many whole packets a capture holds (reads the whole file)."""
    with CaptureReader(path) as r:
        return sum(len(recs) for _buf, recs in r.batches())


# --------------------------------------------------------------------------- writer


class PcapngWriter:
    """A minimal pcapng writer: one section, any number of interfaces, EPBs and DSBs."""

    def __init__(self, f: BinaryIO | io.BufferedWriter) -> None:
        self._f = f
        self._ifaces: dict[int, int] = {}
        shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
        self._block(0x0A0D0D0A, shb_body)

    def _block(self, btype: int, body: bytes) -> None:
        pad = (-len(body)) % 4
        blen = 12 + len(body) + pad
        self._f.write(
            struct.pack("<II", btype, blen) + body + b"\0" * pad + struct.pack("<I", blen)
        )

    def interface(self, linktype: int, snaplen: int = 0) -> int:
        """The interface index for ``linktype`` (nanosecond resolution), adding it if new."""
        idx = self._ifaces.get(linktype)
        if idx is None:
            idx = len(self._ifaces)
            # if_tsresol = 9 (nanoseconds), then opt_endofopt.
            opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
            self._block(_BT_IDB, struct.pack("<HHI", linktype, 0, snaplen) + opts)
            self._ifaces[linktype] = idx
        return idx

    def write(
        self,
        ts_ns: int,
        data: bytes,
        *,
        linktype: int = LINKTYPE_ETHERNET,
        wirelen: int | None = None,
    ) -> None:
        iface = self.interface(linktype)
        body = struct.pack(
            "<IIIII",
            iface,
            (ts_ns >> 32) & 0xFFFFFFFF,
            ts_ns & 0xFFFFFFFF,
            len(data),
            len(data) if wirelen is None else wirelen,
        )
        self._block(_BT_EPB, body + data)

    def write_tls_secrets(self, keylog: bytes) -> None:
        self._block(_BT_DSB, struct.pack("<II", DSB_TLS_KEYLOG, len(keylog)) + keylog)


def write_pcap_header(
    f: BinaryIO, linktype: int = LINKTYPE_ETHERNET, *, nano: bool = False
) -> None:
    """Write a classic pcap file header (little-endian)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, linktype))


def write_pcap_record(f: BinaryIO, ts_ns: int, data: bytes, *, nano: bool = False) -> None:
    sec, rem = divmod(ts_ns, 1_000_000_000)
    frac = rem if nano else rem // 1_000
    f.write(struct.pack("<IIII", sec, frac, len(data), len(data)) + data)
