"""A small, independent client of Ember's serial protocol (docs/PROTOCOL.md, version 4).

Written from the document alone: COBS, CRC-32, postcard, every Request and Event, a raw PTY
line with timeouts, and a launcher for the real `emberd`. Standard library only.

Environment (see README.md, "Test it"):

- ``EMBERD``: the `emberd` binary (default: ``<repo>/target/release/emberd``);
- ``EMBER_TINY_IMAGE``: the tiny synthetic model's image; when unset it is made once with
  ``EMBER`` (default ``<repo>/target/release/ember``): ``ember synth --seed 42`` and
  ``ember quantize``;
- ``EMBER_CONFORMANCE_PATIENCE``: seconds any single expectation may take (default 20).
"""

import math
import os
import select
import struct
import subprocess
import tempfile
import termios
import time
import tty
import zlib

PROTOCOL_VERSION = 4
MAX_FRAME = 2048  # encoded bytes per frame, including the 0x00 delimiter
MAX_TEXT = 1024  # Chat.text, Message.text, SetSystem.text
MAX_STOPS = 4
MAX_STOP = 32
MAX_TOKEN = 128
MAX_CHUNK = 256
MAX_DETAIL = 128
MAX_MODEL_NAME = 64
MAX_LINE = 1024
MAX_PROBE = 64  # bytes after a 0x00 in line mode before they are taken as typed
MAX_FLASH_DATA = 1792
FLASH_BLOCK = 64 * 1024
STANDARD_BAUDS_LOW, STANDARD_BAUDS_HIGH = 9600, 4_000_000

PATIENCE = float(os.environ.get("EMBER_CONFORMANCE_PATIENCE", "20"))

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


# ---------------------------------------------------------------------------------------------
# CRC-32, COBS, frames


def crc32(data):
    """CRC-32/ISO-HDLC, the zlib CRC."""
    return zlib.crc32(data) & 0xFFFFFFFF


def cobs_encode(data):
    """Textbook COBS: the result holds no 0x00."""
    out = bytearray()
    block = bytearray()
    full = False  # the last group was 254 bytes without a zero (code 0xFF)
    for b in data:
        full = False
        if b == 0:
            out.append(len(block) + 1)
            out += block
            block = bytearray()
        else:
            block.append(b)
            if len(block) == 254:
                out.append(255)
                out += block
                block = bytearray()
                full = True
    if not full:  # a 0xFF group at the very end needs no final group
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def cobs_decode(data):
    """Inverse of cobs_encode; ValueError on a malformed encoding."""
    out = bytearray()
    i = 0
    while i < len(data):
        code = data[i]
        if code == 0:
            raise ValueError("0x00 inside a COBS frame")
        end = i + code
        if end > len(data):
            raise ValueError("COBS block runs past the frame")
        out += data[i + 1 : end]
        i = end
        if code != 255 and i < len(data):
            out.append(0)
    return bytes(out)


def frame_body(seq, payload):
    head = struct.pack("<H", seq & 0xFFFF) + payload
    return head + struct.pack("<I", crc32(head))


def encode_frame(seq, payload):
    """cobs(seq ‖ payload ‖ crc) ‖ 0x00"""
    return cobs_encode(frame_body(seq, payload)) + b"\x00"


def decode_frame(encoded):
    """(seq, payload) of a frame's bytes before its delimiter; ValueError if damaged."""
    body = cobs_decode(encoded)
    if len(body) < 6:
        raise ValueError("frame body shorter than 6 bytes")
    (crc,) = struct.unpack("<I", body[-4:])
    if crc != crc32(body[:-4]):
        raise ValueError("bad CRC")
    (seq,) = struct.unpack("<H", body[:2])
    return seq, body[2:-4]


# ---------------------------------------------------------------------------------------------
# postcard


class Writer:
    def __init__(self):
        self.out = bytearray()

    def varint(self, n):
        assert n >= 0
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                self.out.append(b | 0x80)
            else:
                self.out.append(b)
                return self

    u16 = u32 = u64 = varint

    def f32(self, x):
        self.out += struct.pack("<f", x)
        return self

    def bool(self, b):
        self.out.append(1 if b else 0)
        return self

    def raw(self, data):
        self.out += data
        return self

    def bytes(self, data):
        """A sequence of u8 (or a string's bytes): varint length + bytes."""
        self.varint(len(data))
        self.out += data
        return self

    def string(self, text):
        return self.bytes(text.encode() if isinstance(text, str) else text)

    def option(self, value, write):
        if value is None:
            self.out.append(0)
        else:
            self.out.append(1)
            write(value)
        return self

    def done(self):
        return bytes(self.out)


class DecodeError(Exception):
    pass


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def byte(self):
        if self.pos >= len(self.data):
            raise DecodeError("payload ends early")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self, bits):
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift > bits + 7:
                raise DecodeError("varint too long")
        if n >= 1 << bits:
            raise DecodeError("varint overflows u%d" % bits)
        return n

    def u16(self):
        return self.varint(16)

    def u32(self):
        return self.varint(32)

    def u64(self):
        return self.varint(64)

    def f32(self):
        return struct.unpack("<f", self.take(4))[0]

    def bool(self):
        b = self.byte()
        if b > 1:
            raise DecodeError("bool %d" % b)
        return b == 1

    def take(self, n):
        if self.pos + n > len(self.data):
            raise DecodeError("payload ends early")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def bytes(self):
        return self.take(self.u32())

    def string(self):
        raw = self.bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError("string is not UTF-8: %r" % raw) from e

    def option(self, read):
        tag = self.byte()
        if tag == 0:
            return None
        if tag == 1:
            return read()
        raise DecodeError("Option tag %d" % tag)

    def enum(self, names):
        i = self.u32()
        if i >= len(names):
            raise DecodeError("enum value %d of %s" % (i, names))
        return names[i]

    def finish(self):
        if self.pos != len(self.data):
            raise DecodeError("%d trailing bytes" % (len(self.data) - self.pos))


# ---------------------------------------------------------------------------------------------
# Requests (host → device)

REQUESTS = [
    "Hello",
    "Chat",
    "Cancel",
    "Reset",
    "SetSystem",
    "Status",
    "Goodbye",
    "FlashBegin",
    "FlashChunk",
    "FlashCommit",
    "FlashAbort",
    "SetBaud",
    "Message",
]
REQ = {name: i for i, name in enumerate(REQUESTS)}
ROLES = ["User", "Assistant"]


def hello(version=PROTOCOL_VERSION):
    return Writer().varint(REQ["Hello"]).u16(version).done()


def chat_options(
    max_tokens=None,
    temperature=None,
    top_k=None,
    top_p=None,
    repeat_penalty=None,
    seed=None,
    stop=(),
    sentences=False,
):
    w = Writer()
    w.option(max_tokens, w.u32)
    w.option(temperature, w.f32)
    w.option(top_k, w.u32)
    w.option(top_p, w.f32)
    w.option(repeat_penalty, w.f32)
    w.option(seed, w.u64)
    w.varint(len(stop))
    for s in stop:
        w.string(s)
    w.bool(sentences)
    return w.done()


def chat(text, session=1, **options):
    """`text` may be bytes (e.g. not UTF-8)."""
    w = Writer().varint(REQ["Chat"]).u32(session).string(text)
    return w.raw(chat_options(**options)).done()


def cancel():
    return Writer().varint(REQ["Cancel"]).done()


def reset():
    return Writer().varint(REQ["Reset"]).done()


def set_system(text):
    return Writer().varint(REQ["SetSystem"]).string(text).done()


def status():
    return Writer().varint(REQ["Status"]).done()


def goodbye():
    return Writer().varint(REQ["Goodbye"]).done()


def flash_begin(image_len, sha256, header, signature=None):
    w = Writer().varint(REQ["FlashBegin"]).u64(image_len).raw(sha256).bytes(header)
    return w.option(signature, lambda rs: w.raw(rs[0]).raw(rs[1])).done()


RAW, ZSTD = 0, 1


def flash_chunk(offset, at, data, encoding=RAW, encoded_len=None, crc=None):
    w = Writer().varint(REQ["FlashChunk"]).u64(offset).u32(at).varint(encoding)
    w.u32(len(data) if encoded_len is None else encoded_len)
    w.u32(crc32(data) if crc is None else crc)
    return w.bytes(data).done()


def flash_commit():
    return Writer().varint(REQ["FlashCommit"]).done()


def flash_abort():
    return Writer().varint(REQ["FlashAbort"]).done()


def set_baud(baud):
    return Writer().varint(REQ["SetBaud"]).u32(baud).done()


def message(index, role, text, session=1):
    """A Message: `role` is "User", "Assistant" or a raw variant index; `text` may be bytes."""
    role = ROLES.index(role) if isinstance(role, str) else role
    return Writer().varint(REQ["Message"]).u32(session).u32(index).varint(role).string(text).done()


# ---------------------------------------------------------------------------------------------
# Events (device → host)

EVENTS = [
    "Hello",
    "Token",
    "SynthesizeStart",
    "SynthesizeChunk",
    "SynthesizeStop",
    "End",
    "CancelAck",
    "Done",
    "Status",
    "Error",
    "Goodbye",
    "FlashNext",
    "FlashStage",
    "FlashDone",
    "BaudSwitch",
]
SLOTS = ["A", "B"]
FLASH_OUTCOMES = ["Activated", "SelfTestFailed", "TrialInterrupted"]
END_REASONS = ["Eos", "Stop", "Length", "Cancelled", "Error"]
FLASH_STAGES = ["Verifying", "Testing"]
ERROR_CODES = [
    "BadFrame",
    "Oversized",
    "UnknownMessage",
    "Busy",
    "TooLong",
    "BadSetting",
    "UnsupportedVersion",
    "Stalled",
    "Engine",
    "FlashUnavailable",
    "NoTransfer",
    "ImageRejected",
    "ImageTooLarge",
    "HashMismatch",
    "SignatureRejected",
    "SelfTestFailed",
    "Storage",
    "ChunkRejected",
    "BadField",
    "Downgrade",
    "OutOfOrder",
]


class Event:
    """A decoded event: `kind` (its variant's name), `seq` (the frame's), fields as attributes."""

    def __init__(self, kind, seq=None, **fields):
        self.kind = kind
        self.seq = seq
        self.fields = fields
        self.__dict__.update(fields)

    def __repr__(self):
        inner = ", ".join("%s=%r" % kv for kv in self.fields.items())
        return "%s#%s{%s}" % (self.kind, self.seq, inner)


STATS = [
    ("prompt_tokens", "u32"),
    ("generated_tokens", "u32"),
    ("time_to_first_token_ms", "u32"),
    ("total_ms", "u32"),
    ("decode_tokens_per_second", "f32"),
    ("context_used", "u32"),
    ("turns_dropped", "u32"),
]


def decode_event(payload, seq=None):
    """The Event a payload holds; DecodeError if it is not one (whole payload consumed)."""
    r = Reader(payload)
    kind = r.enum(EVENTS)
    f = {}
    if kind == "Hello":
        f["protocol_version"] = r.u16()
        f["model_name"] = r.string()
        f["model_hash"] = r.take(32)
        f["context_length"] = r.u32()
        f["max_frame"] = r.u32()
        f["slot"] = r.option(lambda: r.enum(SLOTS))
        f["last_flash"] = r.option(lambda: r.enum(FLASH_OUTCOMES))
        f["max_baud"] = r.u32()
    elif kind in ("Token", "SynthesizeChunk"):
        f["text"] = r.string()
    elif kind == "End":
        f["reason"] = r.enum(END_REASONS)
        f["stats"] = {name: getattr(r, ty)() for name, ty in STATS}
        f["request"] = r.u16()
    elif kind == "CancelAck":
        f["was_generating"] = r.bool()
    elif kind == "Status":
        for name in ("session", "turns", "context_used", "context_length", "replies"):
            f[name] = r.u32()
    elif kind == "Error":
        f["code"] = r.enum(ERROR_CODES)
        f["detail"] = r.string()
        f["request"] = r.option(r.u16)
    elif kind == "FlashNext":
        f["offset"] = r.u64()
        f["at"] = r.u32()
    elif kind == "FlashStage":
        f["stage"] = r.enum(FLASH_STAGES)
    elif kind == "FlashDone":
        f["slot"] = r.enum(SLOTS)
        f["model_hash"] = r.take(32)
    elif kind == "BaudSwitch":
        f["baud"] = r.u32()
    r.finish()
    return Event(kind, seq, **f)


LIMITS = {
    ("Hello", "model_name"): MAX_MODEL_NAME,
    ("Token", "text"): MAX_TOKEN,
    ("SynthesizeChunk", "text"): MAX_CHUNK,
    ("Error", "detail"): MAX_DETAIL,
}


def limit_violations(event):
    """The documented field limits an event breaks (a list of messages; empty: none)."""
    out = []
    if event.kind == "Token" and not event.text:
        out.append("an empty Token (1 … 128 bytes): %r" % event)
    for (kind, field), limit in LIMITS.items():
        if event.kind == kind and len(event.fields[field].encode()) > limit:
            out.append(
                "%s.%s is %d bytes (at most %d): %r"
                % (kind, field, len(event.fields[field].encode()), limit, event)
            )
    if event.kind == "Hello" and event.max_frame != MAX_FRAME:
        out.append("Hello.max_frame is %d, not %d" % (event.max_frame, MAX_FRAME))
    if event.kind == "SynthesizeChunk":
        t = event.text
        if not t or t != t.strip(WHITESPACE):
            out.append("SynthesizeChunk is empty or not trimmed: %r" % t)
    return out


# Unicode White_Space (what "trimmed" is taken to mean).
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(
    chr(c) for c in range(0x2000, 0x200B)
) + "\u2028\u2029\u202f\u205f\u3000"


def is_control(ch):
    """A C0 control character or DEL (what line mode must never send from the model)."""
    return ord(ch) < 0x20 or ord(ch) == 0x7F


# ---------------------------------------------------------------------------------------------
# The line


class Timeout(AssertionError):
    pass


class Line:
    """A raw PTY (the host's end of emberd's line), read with timeouts."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)
        attrs = termios.tcgetattr(self.fd)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        self.pending = bytearray()  # bytes read but not yet consumed

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def write(self, data):
        view = memoryview(bytes(data))
        deadline = time.monotonic() + PATIENCE
        while view:
            try:
                n = os.write(self.fd, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Timeout("the device takes no bytes")
                select.select([], [self.fd], [], 0.05)

    def type(self, text, gap=0.0):
        """Writes `text` a byte at a time, as a person types."""
        data = text.encode() if isinstance(text, str) else text
        for i in range(len(data)):
            self.write(data[i : i + 1])
            if gap:
                time.sleep(gap)

    def fill(self, timeout):
        """Reads what arrives within `timeout` seconds (at least one read); True if any."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:  # EIO: the other end closed
            raise AssertionError("the line failed: %s" % e) from e
        self.pending += data
        return bool(data)

    def read_until(self, needle, timeout=None):
        """Consumes and returns everything up to and including `needle` (bytes)."""
        needle = needle.encode() if isinstance(needle, str) else needle
        deadline = time.monotonic() + (PATIENCE if timeout is None else timeout)
        while True:
            i = self.pending.find(needle)
            if i >= 0:
                out = bytes(self.pending[: i + len(needle)])
                del self.pending[: i + len(needle)]
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout("no %r within the time; saw %r" % (needle, bytes(self.pending)))
            self.fill(min(left, 0.2))

    def read_quiet(self, quiet=0.5, limit=None):
        """Consumes what arrives until the line has been quiet for `quiet` seconds."""
        deadline = time.monotonic() + (PATIENCE if limit is None else limit)
        while time.monotonic() < deadline:
            if not self.fill(quiet):
                break
        out = bytes(self.pending)
        self.pending.clear()
        return out

    def nothing_for(self, seconds):
        """True if no byte arrives within `seconds` (pending bytes count as arrived)."""
        if self.pending:
            return False
        return not self.fill(seconds)


# ---------------------------------------------------------------------------------------------
# Frame mode over a Line


class Frame:
    def __init__(self, raw, seq=None, payload=None, error=None, zeros_before=0):
        self.raw = raw  # bytes before the delimiter
        self.seq = seq
        self.payload = payload
        self.error = error  # why it could not be read, or None
        self.zeros_before = zeros_before  # empty frames (0x00 bytes) right before it


class Host:
    """The host's side of frame mode: numbers its frames, reads and checks the device's.

    Every frame received is checked against the document: COBS, CRC, at most MAX_FRAME bytes,
    a known Event whose payload is consumed, the field limits. `problems` collects
    violations; tests assert it stays empty (see ConformanceCase.tearDown).
    """

    def __init__(self, line):
        self.line = line
        self.seq = 0
        self.frames = []  # every Frame received
        self.events = []  # every Event received
        self.problems = []
        self.zeros = 0
        self.strict = True  # damaged device frames are problems
        self.expected_seq = None  # the device's next seq, once known

    # sending

    def send(self, payload, seq=None):
        """Sends one frame; returns its seq."""
        if seq is None:
            seq = self.seq
            self.seq = (self.seq + 1) & 0xFFFF
        self.line.write(encode_frame(seq, payload))
        return seq

    def frame_bytes(self, payload, seq=None):
        if seq is None:
            seq = self.seq
            self.seq = (self.seq + 1) & 0xFFFF
        return seq, encode_frame(seq, payload)

    def greet(self, version=PROTOCOL_VERSION, skip_before=True):
        """0x00 + Hello; returns the device's Hello (read past line-mode output if asked)."""
        seq, data = self.frame_bytes(hello(version))
        self.line.write(b"\x00" + data)
        if skip_before:
            self.skip_to_frame_start()
        ev = self.expect("Hello")
        self.hello_seq = seq
        return ev

    def skip_to_frame_start(self, timeout=None):
        """Drops line-mode text up to the first 0x00 (the device's frame-mode start)."""
        text = self.line.read_until(b"\x00", timeout)
        self.zeros += 1
        self.skipped = text[:-1]
        return text[:-1]

    # receiving

    def next_frame(self, timeout=None):
        """The next non-empty frame (Frame), or Timeout."""
        deadline = time.monotonic() + (PATIENCE if timeout is None else timeout)
        while True:
            i = self.line.pending.find(b"\x00")
            if i == 0:
                del self.line.pending[:1]
                self.zeros += 1
                continue
            if i > 0:
                raw = bytes(self.line.pending[:i])
                del self.line.pending[: i + 1]
                return self._frame(raw)
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(
                    "no frame from the device; pending %r; last events %r"
                    % (bytes(self.line.pending), self.events[-5:])
                )
            self.line.fill(min(left, 0.2))

    def _frame(self, raw):
        zeros, self.zeros = self.zeros, 0
        frame = Frame(raw, zeros_before=zeros)
        if len(raw) + 1 > MAX_FRAME:
            self.problems.append("device frame of %d bytes" % (len(raw) + 1))
        try:
            frame.seq, frame.payload = decode_frame(raw)
        except ValueError as e:
            frame.error = str(e)
        self.frames.append(frame)
        return frame

    def next_event(self, timeout=None):
        while True:
            frame = self.next_frame(timeout)
            if frame.error is not None:
                if self.strict:
                    self.problems.append("damaged device frame (%s): %r" % (frame.error, frame.raw))
                continue
            try:
                ev = decode_event(frame.payload, frame.seq)
            except DecodeError as e:
                self.problems.append("undecodable event %r: %s" % (frame.payload, e))
                continue
            ev.zeros_before = frame.zeros_before
            self.problems += limit_violations(ev)
            if ev.kind == "Hello":
                if ev.seq != 0:
                    self.problems.append("the Hello answer has seq %d, not 0" % ev.seq)
            elif self.expected_seq is not None and ev.seq != self.expected_seq:
                self.problems.append(
                    "device seq %d after %d (frames are numbered 0, 1, 2, …)"
                    % (ev.seq, (self.expected_seq - 1) & 0xFFFF)
                )
            self.expected_seq = (ev.seq + 1) & 0xFFFF
            self.events.append(ev)
            return ev

    def expect(self, kind, timeout=None, **fields):
        ev = self.next_event(timeout)
        if ev.kind != kind:
            raise AssertionError("expected %s, got %r" % (kind, ev))
        for k, v in fields.items():
            if ev.fields.get(k) != v:
                raise AssertionError("expected %s.%s == %r, got %r" % (kind, k, v, ev))
        return ev

    def expect_error(self, code, request="any", timeout=None):
        ev = self.expect("Error", timeout)
        if ev.code != code:
            raise AssertionError("expected Error %s, got %r" % (code, ev))
        if request != "any" and ev.request != request:
            raise AssertionError(
                "expected Error %s for request %r, got %r" % (code, request, ev)
            )
        return ev

    def quiet(self, seconds=0.5):
        """Asserts the device sends no frame within `seconds`; returns nothing."""
        try:
            frame = self.next_frame(seconds)
        except Timeout:
            return
        ev = None
        if frame.error is None:
            try:
                ev = decode_event(frame.payload, frame.seq)
            except DecodeError:
                pass
        raise AssertionError("expected silence, got %r" % (ev or frame.raw))

    def until_end(self, request, timeout=None):
        """Events up to and including the End for `request`."""
        out = []
        while True:
            ev = self.next_event(timeout)
            out.append(ev)
            if ev.kind == "End" and ev.request == request:
                return out

    def chat(self, text, session=1, **options):
        """Sends a Chat and reads its reply; returns (seq, events, End)."""
        seq = self.send(chat(text, session, **options))
        events = self.until_end(seq)
        return seq, events, events[-1]


def zero_stats(end):
    """A refused Chat's End carries zero stats."""
    return all(v == 0 for v in end.stats.values())


def reply_text(events):
    return "".join(ev.text for ev in events if ev.kind == "Token")


# ---------------------------------------------------------------------------------------------
# The device


def emberd_path():
    return os.environ.get("EMBERD") or os.path.join(REPO, "target", "release", "emberd")


_IMAGE = None


def tiny_image():
    """The tiny synthetic model's image (EMBER_TINY_IMAGE, or made once with `ember`)."""
    global _IMAGE
    if _IMAGE:
        return _IMAGE
    path = os.environ.get("EMBER_TINY_IMAGE")
    if not path:
        ember = os.environ.get("EMBER") or os.path.join(REPO, "target", "release", "ember")
        d = tempfile.mkdtemp(prefix="ember-conformance-")
        gguf, path = os.path.join(d, "tiny.gguf"), os.path.join(d, "tiny.ember")
        subprocess.run([ember, "synth", "-o", gguf, "--seed", "42"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            [ember, "quantize", gguf, "-o", path, "--quiet", "--no-report"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    _IMAGE = path
    return path


def image_manifest_hash(path):
    """The SHA-256 of the manifest as the image header holds it (bytes 16..48)."""
    with open(path, "rb") as f:
        return f.read(48)[16:48]


class Emberd:
    """`emberd --pty` on the tiny image (or a slot directory); the host's end of its line."""

    def __init__(self, *args, image=None, slot_dir=None, threads=2):
        self.log = tempfile.NamedTemporaryFile(prefix="emberd-", suffix=".log", delete=False)
        source = ["--slot-dir", slot_dir] if slot_dir else ["--model", image or tiny_image()]
        argv = [emberd_path(), *source, "--pty", "--threads", str(threads), *map(str, args)]
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], PATIENCE)
        if not ready:
            self.stop()
            raise AssertionError("emberd printed no PTY path: %s" % self.log_text())
        path = self.proc.stdout.readline().decode().strip()
        if not path.startswith("/dev/"):
            self.stop()
            raise AssertionError("emberd printed %r: %s" % (path, self.log_text()))
        self.path = path
        self.line = Line(path)
        self.host = Host(self.line)

    def alive(self):
        return self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log.name, "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "line", None):
            self.line.close()
        self.proc.stdout.close()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def finite(x):
    return not (math.isnan(x) or math.isinf(x))
