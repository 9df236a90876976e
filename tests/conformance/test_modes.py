"""Entering and leaving frame mode: 0x00 + Hello, the stray 0x00 of line mode (its 1 s and
64-byte bounds), frames that are not a Hello, the line editor emptied at each switch, Goodbye,
the idle timeout; the same reply in both modes (control characters dropped in line mode)."""

import time
import unittest

import protocol as p
from support import ConformanceCase


class Enter(ConformanceCase):
    def setUp(self):
        super().setUp()
        self.prompt()

    def test_zeros_before_hello_restart_the_wait(self):
        self.line.write(b"\x00\x00\x00")
        ev = self.host.greet(skip_before=True)
        self.assertEqual(ev.protocol_version, p.PROTOCOL_VERSION)

    def test_each_zero_restarts_the_one_second_wait(self):
        # 0x00, then 0x00 every 0.6 s: the Hello comes 1.8 s after the first, 0.6 s after the last.
        for _ in range(4):
            self.line.write(b"\x00")
            time.sleep(0.6)
        ev = self.host.greet(skip_before=True)
        self.assertEqual(ev.seq, 0)
        self.alive_in_frame_mode()

    def test_hello_after_the_wait_is_typed(self):
        # The Hello frame comes 1.5 s after the 0x00: too late; its bytes are typed instead.
        self.command("/system base")
        self.line.write(b"\x00")
        time.sleep(1.5)
        self.line.write(p.encode_frame(0, p.hello())[:-1])
        self.line.read_quiet(0.5)
        self.line.type("\x15/system\r")
        out = self.line.read_until(b"> ")
        self.assertNotIn(b"\x00", out, "no frame mode")
        self.assertIn(b"base", out)

    def test_frame_that_is_not_hello_is_dropped(self):
        self.command("/system base")
        for payload in (p.status(), p.chat("hi"), bytes([200])):
            with self.subTest(payload=payload):
                self.line.write(b"\x00" + p.encode_frame(0, payload))
                # Dropped silently: no answer, no echo, still line mode.
                self.assertTrue(self.line.nothing_for(1.5), self.line.pending)
                self.assertEqual(self.system_prompt(), "base")

    def test_damaged_hello_is_dropped(self):
        frame = bytearray(p.encode_frame(0, p.hello()))
        frame[3] ^= 0x40
        self.line.write(b"\x00" + bytes(frame))
        self.assertTrue(self.line.nothing_for(1.5), self.line.pending)
        self.command("/system still line mode")
        self.assertEqual(self.system_prompt(), "still line mode")

    def test_stray_zero_then_typing_loses_nothing(self):
        # A 0x00 then typed text without a delimiter: after 1 s the bytes are taken as typed.
        self.line.type("/sys")
        self.line.read_until(b"/sys", timeout=5)
        self.line.write(b"\x00")
        self.line.type("tem kept")
        # Held, not echoed, for (about) 1 s.
        self.assertTrue(self.line.nothing_for(0.6), self.line.pending)
        self.line.read_until(b"tem kept", timeout=5)
        self.line.type("\r")
        self.prompt()
        self.assertEqual(self.system_prompt(), "kept")

    def test_stray_zero_then_64_bytes_are_held(self):
        # At the bound: 64 bytes after the 0x00 are held (the frame may still end), and a 0x00
        # within the second ends a frame, which is not a Hello: dropped, nothing typed.
        self.command("/system base")
        text = "/system " + "q" * 56
        self.assertEqual(len(text), p.MAX_PROBE)
        self.line.write(b"\x00" + text.encode())
        self.assertTrue(self.line.nothing_for(0.4), self.line.pending)
        self.line.write(b"\x00")
        self.assertTrue(self.line.nothing_for(1.2), self.line.pending)
        self.assertEqual(self.system_prompt(), "base")

    def test_stray_zero_then_65_bytes_are_typed_at_once(self):
        # Over the bound: the 65th byte ends the wait before its second is up; every byte is
        # taken as typed.
        text = "/system " + "q" * 57
        self.assertEqual(len(text), p.MAX_PROBE + 1)
        start = time.monotonic()
        self.line.write(b"\x00" + text.encode())
        self.line.read_until(b"q" * 57, timeout=5)
        self.assertLess(time.monotonic() - start, 0.9, "typed before the 1 s wait ended")
        self.line.type("\r")
        self.prompt()
        self.assertEqual(self.system_prompt(), "q" * 57)

    def test_stray_zero_edits_held_bytes(self):
        # The held bytes are typed: a backspace among them edits.
        self.line.write(b"\x00/system ab\x7fc")
        self.line.read_until(b"/system", timeout=5)
        self.line.type("\r")
        self.prompt()
        self.assertEqual(self.system_prompt(), "ac")

    def test_editor_emptied_on_entering_and_leaving(self):
        self.command("/system base")
        self.line.type("/system junk")
        self.line.read_until(b"junk", timeout=5)
        self.host.greet()
        self.host.send(p.goodbye())
        self.host.expect("Goodbye")
        self.prompt()
        self.line.type("\r")
        self.prompt()
        self.assertEqual(self.system_prompt(), "base")

    def test_goodbye_then_typing(self):
        self.host.greet()
        self.host.send(p.goodbye())
        self.host.expect("Goodbye")
        self.prompt()
        self.line.type("/system typed after")
        self.assertEqual(self.line.read_until(b"after", timeout=5), b"/system typed after")
        self.line.type("\r")
        self.prompt()
        self.assertEqual(self.system_prompt(), "typed after")

    def test_frame_mode_hello_frames_after_goodbye(self):
        for _ in range(2):
            ev = self.host.greet()
            self.assertEqual(ev.seq, 0)
            self.host.send(p.goodbye())
            self.host.expect("Goodbye")
            self.prompt()


class Idle(ConformanceCase):
    ARGS = ("--max-tokens", "8", "--idle-timeout-s", "1")

    def test_idle_timeout_returns_to_line_mode(self):
        self.prompt()
        self.command("/system base")
        self.line.type("/system junk")
        self.line.read_until(b"junk", timeout=5)
        self.host.greet()
        start = time.monotonic()
        text = self.prompt()
        waited = time.monotonic() - start
        self.assertIn(b"(no program spoke for 1 s: back in line mode)", text)
        self.assertGreaterEqual(waited, 0.9)
        # The editor was emptied: the junk typed before the Hello is gone.
        self.line.type("\r")
        self.prompt()
        self.assertEqual(self.system_prompt(), "base")

    def test_status_holds_frame_mode(self):
        self.prompt()
        self.host.greet()
        end = time.monotonic() + 3
        while time.monotonic() < end:
            self.alive_in_frame_mode()
            time.sleep(0.4)
        self.assertNotIn(b"back in line mode", bytes(self.line.pending))
        self.alive_in_frame_mode()

    def test_no_timeout_while_reply_runs_and_counts_from_its_end(self):
        self.start("--max-tokens", "8", "--idle-timeout-s", "1")
        self.prompt()
        self.host.greet()
        seq, events, end = self.host.chat("hi", max_tokens=8)
        self.assertNotEqual(end.reason, "Error")
        # Right after the End the device is still in frame mode.
        self.alive_in_frame_mode()
        self.prompt()  # then the timeout

    def test_greeting_again_after_timeout(self):
        self.prompt()
        self.host.greet()
        self.prompt()
        ev = self.host.greet()
        self.assertEqual(ev.seq, 0)
        self.alive_in_frame_mode()


class SameReplyBothModes(ConformanceCase):
    ARGS = ("--max-tokens", "60", "--idle-timeout-s", "0", "--temperature", "0")

    def test_line_mode_shows_frame_mode_text_without_control_characters(self):
        # Frame mode: the model's text as is; line mode: the same without control characters.
        self.prompt()
        found = None
        self.host.greet()
        for seed in range(12):
            self.host.send(p.reset())
            self.host.expect("Done")
            _, events, _ = self.host.chat("Say anything", temperature=2.0, seed=seed)
            text = p.reply_text(events)
            if found is None or any(p.is_control(c) and c not in "\r\n" for c in text):
                found = (seed, text)
                if any(p.is_control(c) and c not in "\r\n" for c in text):
                    break
        seed, text = found
        self.host.send(p.goodbye())
        self.host.expect("Goodbye")
        self.prompt()
        self.command("/set temperature 2")
        self.command("/set seed %d" % seed)
        self.command("/reset")
        self.line.type("Say anything\r")
        self.line.read_until(b"anything\r\n", timeout=5)
        out = self.prompt().decode("utf-8")
        strip = lambda s: "".join(c for c in s if not p.is_control(c))
        self.assertEqual(strip(out).strip(), strip(text).strip())
        self.assertFalse([c for c in out if p.is_control(c) and c not in "\r\n"], repr(out))


if __name__ == "__main__":
    unittest.main()
