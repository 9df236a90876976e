"""Frames: the client's own codecs against the document, entering frame mode, sequence
numbers, damaged, empty, unknown and oversized frames, the frame-size bound."""

import hashlib
import struct
import unittest

import protocol as p
from support import ConformanceCase


class Codecs(unittest.TestCase):
    """The client's codecs against the values the document gives (no device)."""

    def test_crc_check_value(self):
        self.assertEqual(p.crc32(b"123456789"), 0xCBF43926)

    def test_documented_example_bytes(self):
        # docs/PROTOCOL.md "Example": Hello { protocol_version: 4 }, then Cancel, both seq 0.
        self.assertEqual(p.hello(), bytes([0x00, 0x04]))
        self.assertEqual(p.crc32(bytes([0, 0, 0, 4])), 0x26291B05)
        self.assertEqual(p.encode_frame(0, p.hello()).hex(" "), "01 01 01 06 04 05 1b 29 26 00")
        self.assertEqual(p.encode_frame(0, p.cancel()).hex(" "), "01 01 06 02 3e b8 4f 11 00")

    def test_cobs_round_trip(self):
        for data in [b"", b"\x00", b"\x00\x00", bytes(range(1, 255)), bytes(range(256)) * 5,
                     b"\x01" * 254, b"\x01" * 255 + b"\x00"]:
            enc = p.cobs_encode(data)
            self.assertNotIn(0, enc)
            self.assertEqual(p.cobs_decode(enc), data)

    def test_postcard_round_trip_of_events(self):
        w = p.Writer()
        w.varint(9).varint(18).string("x").option(7, w.u16)
        ev = p.decode_event(w.done())
        self.assertEqual((ev.kind, ev.code, ev.detail, ev.request), ("Error", "BadField", "x", 7))
        with self.assertRaises(p.DecodeError):
            p.decode_event(w.done() + b"\x00")


class Greeting(ConformanceCase):
    def test_hello_answer(self):
        banner = self.prompt()
        self.assertTrue(banner.strip(), "line mode starts with a banner")
        ev = self.host.greet()
        # The device answers with 0x00 and a frame holding its Hello (numbered 0).
        self.assertEqual(self.host.skipped, b"", "nothing but 0x00 before the Hello frame")
        self.assertEqual(ev.seq, 0)
        self.assertEqual(ev.protocol_version, p.PROTOCOL_VERSION)
        self.assertEqual(ev.max_frame, p.MAX_FRAME)
        self.assertTrue(ev.model_name)
        self.assertEqual(ev.model_hash, p.image_manifest_hash(p.tiny_image()))
        with open(p.tiny_image(), "rb") as f:
            head = f.read(64)
            (manifest_len,) = struct.unpack("<I", head[12:16])
            manifest = f.read(manifest_len)
        self.assertEqual(hashlib.sha256(manifest).digest(), ev.model_hash)
        self.assertIsNone(ev.slot, "a fixed --model has no slot")
        self.assertIsNone(ev.last_flash)
        self.assertEqual(ev.max_baud, 115200, "without --max-baud: the line's own rate")
        st = self.alive_in_frame_mode()
        self.assertEqual(st.context_length, ev.context_length)

    def test_hello_again_in_frame_mode_restarts_numbering(self):
        self.greet()
        for _ in range(3):
            self.alive_in_frame_mode()
        self.assertEqual(self.host.events[-1].seq, 3)
        again = self.host.greet(skip_before=False)
        self.assertEqual(again.seq, 0)
        self.assertEqual(self.alive_in_frame_mode().seq, 1)

    def test_max_baud_and_context_in_hello(self):
        self.start("--max-baud", "921600", "--context", "192", *self.ARGS)
        ev = self.greet()
        self.assertEqual(ev.max_baud, 921600)
        self.assertEqual(ev.context_length, 192)
        self.assertEqual(self.alive_in_frame_mode().context_length, 192)

    def test_unsupported_version(self):
        for version in (p.PROTOCOL_VERSION - 1, p.PROTOCOL_VERSION + 1, 0xFFFF):
            with self.subTest(version=version):
                ev = self.host.greet(version=version)
                self.assertEqual(ev.protocol_version, p.PROTOCOL_VERSION)
                self.host.expect_error("UnsupportedVersion", request=self.host.hello_seq)
                # It stays in frame mode.
                self.alive_in_frame_mode()
                self.host.send(p.goodbye())
                self.host.expect("Goodbye")
                self.prompt()

    def test_device_numbers_wrap_after_65535(self):
        # 65536 answers after the Hello (frame 0): the device's numbers go 65535, 0, 1.
        self.greet()
        batch = b"".join(self.host.frame_bytes(p.status())[1] for _ in range(1024))
        for _ in range(64):
            self.line.write(batch)
            for _ in range(1024):
                self.host.expect("Status")
        self.assertEqual(self.host.events[-1].seq, 0)
        self.assertEqual([e.seq for e in self.host.events[-3:]], [65534, 65535, 0])
        self.assertEqual(self.alive_in_frame_mode().seq, 1)

    def test_host_seq_is_quoted_not_checked(self):
        self.greet()
        for seq in (1000, 5, 65535, 0, 0):
            self.host.send(bytes([200, 1]), seq=seq)
            self.host.expect_error("UnknownMessage", request=seq)
        self.alive_in_frame_mode()


class BadFrames(ConformanceCase):
    def setUp(self):
        super().setUp()
        self.greet()

    def assert_goes_on(self):
        self.assertEqual(self.alive_in_frame_mode().kind, "Status")

    def test_bad_crc(self):
        body = bytearray(p.frame_body(7, p.status()))
        body[-1] ^= 0x01
        self.line.write(p.cobs_encode(bytes(body)) + b"\x00")
        ev = self.host.expect_error("BadFrame", request=None)
        self.host.quiet(0.3)
        self.assert_goes_on()


    def test_bad_cobs(self):
        # A code byte pointing past the end of the frame.
        self.line.write(bytes([0x09, 0x01, 0x02, 0x03]) + b"\x00")
        self.host.expect_error("BadFrame", request=None)
        self.assert_goes_on()

    def test_too_short(self):
        for body in (b"\x01", b"\x01\x02\x03\x04\x05"):
            with self.subTest(body=body):
                self.line.write(p.cobs_encode(body) + b"\x00")
                self.host.expect_error("BadFrame", request=None)
        self.assert_goes_on()

    def test_garbage_then_a_request(self):
        self.line.write(b"hello there\r\n\x00")
        self.host.expect_error("BadFrame", request=None)
        self.assert_goes_on()

    def test_empty_frames_are_ignored(self):
        self.line.write(b"\x00\x00\x00")
        self.host.quiet(0.5)
        self.assert_goes_on()

    def test_unknown_message(self):
        for payload in (bytes([13]), bytes([0x80, 0x01]), bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), b""):
            with self.subTest(payload=payload):
                seq = self.host.send(payload)
                self.host.expect_error("UnknownMessage", request=seq)
        self.assert_goes_on()


def padded_frame(seq, size):
    """A frame of exactly `size` encoded bytes before its delimiter holding an unknown
    request (variant 200 followed by filler)."""
    for filler in range(size, 0, -1):
        raw = p.encode_frame(seq, bytes([0xC8, 0x01]) + b"\x55" * filler)[:-1]
        if len(raw) == size:
            return raw + b"\x00"
        if len(raw) < size:
            break
    raise AssertionError("no frame of %d bytes" % size)


class FrameSize(ConformanceCase):
    def setUp(self):
        super().setUp()
        self.greet()

    def test_largest_frame_is_read(self):
        # 2047 and 2048 bytes with the delimiter: read, decoded (an unknown request, quoted).
        for size in (p.MAX_FRAME - 1, p.MAX_FRAME):
            with self.subTest(size=size):
                seq = self.host.seq
                self.host.seq += 1
                frame = padded_frame(seq, size - 1)
                self.assertEqual(len(frame), size)
                self.line.write(frame)
                self.host.expect_error("UnknownMessage", request=seq)
        self.alive_in_frame_mode()

    def test_one_byte_more_is_oversized(self):
        seq = self.host.seq
        self.host.seq += 1
        self.line.write(padded_frame(seq, p.MAX_FRAME))
        self.host.expect_error("Oversized", request=None)
        self.host.quiet(0.3)
        self.alive_in_frame_mode()

    def test_long_run_reported_once(self):
        self.line.write(b"\x55" * 10000 + b"\x00")
        self.host.expect_error("Oversized", request=None)
        self.host.quiet(0.5)
        self.alive_in_frame_mode()

    def test_largest_valid_requests(self):
        # A Chat whose text is at its bound is a frame well below the bound.
        seq = self.host.send(p.set_system("s" * p.MAX_TEXT))
        self.host.expect("Done")
        seq, events, end = self.host.chat("é" * (p.MAX_TEXT // 2), max_tokens=1)
        # Read and decoded: a reply, or TooLong for the tiny model's context.
        self.assertIn([e.code for e in events if e.kind == "Error"], ([], ["TooLong"]), events)
        self.assertEqual(end.request, seq)


if __name__ == "__main__":
    unittest.main()
