"""Line mode, as a person in a serial console sees it: banner and prompt, echo, line ends,
editing (backspace over multi-byte characters, Ctrl-U, Tab, escape sequences, control bytes),
Ctrl-C, commands and /set validation, over-long and non-UTF-8 lines, and that control
characters never reach the terminal."""

import re
import unittest

import protocol as p
from support import ConformanceCase

SETTINGS = ("temperature", "top_k", "top_p", "repeat_penalty", "seed", "max_tokens")


def is_error(out):
    return b"error:" in out


class Basics(ConformanceCase):
    def test_banner_prompt_echo(self):
        banner = self.prompt()
        self.assertTrue(banner.strip())
        self.line.type("abc")
        self.assertEqual(self.line.read_until(b"abc", timeout=5), b"abc")

    def test_output_uses_crlf(self):
        self.prompt()
        out = self.command("/help")
        self.assertIn(b"\r\n", out)
        self.assertIsNone(re.search(rb"(?<!\r)\n", out), "a bare LF in %r" % out)

    def test_help_lists_commands(self):
        self.prompt()
        out = self.command("/help").decode()
        for cmd in ("/reset", "/system", "/set", "/stats", "/help"):
            self.assertIn(cmd, out)

    def test_each_line_end_once(self):
        self.prompt()
        for end in ("\r", "\n", "\r\n"):
            with self.subTest(end=end):
                self.line.type("/system ends" + end)
                out = self.line.read_quiet(0.5)
                self.assertEqual(out.count(b"> "), 1, "one line, one prompt: %r" % out)
                self.assertFalse(is_error(out), out)
        self.line.type("/system\r")
        out = self.line.read_until(b"> ")
        self.assertIn(b"ends", out)

    def test_empty_line_gives_a_prompt(self):
        self.prompt()
        self.line.type("\r")
        self.assertFalse(is_error(self.prompt()))


class Editing(ConformanceCase):
    def setUp(self):
        super().setUp()
        self.prompt()

    def set_and_show(self, typed):
        """Types `/system ` + typed + CR, returns what /system shows afterwards."""
        out = self.command("/system " + typed if isinstance(typed, str) else b"/system " + typed)
        self.assertFalse(is_error(out), out)
        return self.system_prompt()

    def test_backspace_and_del_erase_whole_characters(self):
        for erase in ("\x08", "\x7f"):
            for ch in ("x", "é", "€", "🔥"):
                with self.subTest(erase=erase, ch=ch):
                    self.assertEqual(self.set_and_show("ab" + ch + erase + "c"), "abc")
        self.assertEqual(self.set_and_show("a€🔥\x7f\x7f\x7fbc"), "bc")

    def test_backspace_on_empty_line(self):
        self.line.type("\x7f\x7f\x08")
        self.assertEqual(self.set_and_show("ok"), "ok")

    def test_ctrl_u_erases_the_line(self):
        self.command("/system first")
        self.line.type("/system junk \xe2\x82\xac\x15")
        self.line.type("/system kept\r")
        self.prompt()
        self.assertEqual(self.system_prompt(), "kept")

    def test_tab_is_a_space(self):
        self.assertEqual(self.set_and_show("a\tb"), "a b")

    def test_escape_sequences_ignored(self):
        self.assertEqual(self.set_and_show("a\x1b[Db\x1b[A\x1b[1;5Cc"), "abc")

    def test_other_control_bytes_ignored_and_not_echoed(self):
        self.line.type("/system a\x01\x02\x05\x06\x0b\x0c\x0e\x1a\x1cb")
        echo = self.line.read_until(b"b")
        self.assertFalse(any(c < 0x20 and c not in (8, 13, 10) for c in echo), echo)
        self.line.type("\r")
        self.prompt()
        self.assertEqual(self.system_prompt(), "ab")

    def test_ctrl_c_at_prompt_clears_line(self):
        self.command("/system base")
        self.line.type("/system changed\x03")
        self.prompt()  # Ctrl-C: a new prompt
        self.line.type("\r")
        self.prompt()
        self.assertEqual(self.system_prompt(), "base")


class Commands(ConformanceCase):
    def setUp(self):
        super().setUp()
        self.prompt()

    def test_set_shows_every_setting(self):
        out = self.command("/set").decode()
        for name in SETTINGS:
            self.assertIn(name, out)

    def test_set_takes_valid_values(self):
        for name, value in (("temperature", "0.7"), ("top_k", "5"), ("top_p", "0.5"),
                            ("repeat_penalty", "1.3"), ("seed", "18446744073709551615"),
                            ("max_tokens", "7"), ("top_p", "1")):
            with self.subTest(name=name, value=value):
                out = self.command("/set %s %s" % (name, value))
                self.assertFalse(is_error(out), out)
                shown = self.command("/set").decode()
                self.assertRegex(shown, r"%s\D*%s" % (name, re.escape(value)))

    def test_set_refuses_bad_values(self):
        before = self.command("/set")
        for name, value in (("temperature", "-1"), ("temperature", "nan"), ("temperature", "inf"),
                            ("temperature", "hot"), ("top_p", "0"), ("top_p", "1.5"),
                            ("top_p", "nan"), ("repeat_penalty", "0"), ("repeat_penalty", "-2"),
                            ("repeat_penalty", "inf"), ("max_tokens", "0"), ("max_tokens", "-3"),
                            ("top_k", "abc"), ("seed", "-1"), ("seed", "18446744073709551616"),
                            ("colour", "1")):
            with self.subTest(name=name, value=value):
                out = self.command("/set %s %s" % (name, value))
                self.assertTrue(is_error(out), "no error for /set %s %s: %r" % (name, value, out))
        self.assertEqual(self.command("/set").split(b"\n", 1)[1], before.split(b"\n", 1)[1])

    def test_max_tokens_setting_bounds_a_reply(self):
        self.command("/set max_tokens 2")
        self.command("Hello there")
        out = self.command("/stats").decode()
        self.assertRegex(out, r"\b[0-2]\b")

    def test_unknown_commands(self):
        for cmd in ("/bogus", "/", "/set temperature", "/sets"):
            with self.subTest(cmd=cmd):
                self.assertTrue(is_error(self.command(cmd)), cmd)
        self.assertFalse(is_error(self.command("/reset")))

    def test_system_set_and_show(self):
        self.assertFalse(is_error(self.command("/system Speak like a pirate.")))
        self.assertEqual(self.system_prompt(), "Speak like a pirate.")

    def test_stats_after_a_reply(self):
        self.command("Hello there")
        out = self.command("/stats")
        self.assertFalse(is_error(out))
        self.assertRegex(out.decode(), r"\d")


class LongAndInvalidLines(ConformanceCase):
    def setUp(self):
        super().setUp()
        self.prompt()

    def test_line_at_bound(self):
        for fill in ("s", "é", "🔥"):
            with self.subTest(fill=fill):
                prefix = "/system "
                room = p.MAX_LINE - len(prefix)
                text = fill * (room // len(fill.encode()))
                text += "s" * (room - len(text.encode()))
                line = prefix + text
                self.assertEqual(len(line.encode()), p.MAX_LINE)
                self.line.write(line.encode() + b"\r")
                out = self.prompt()
                self.assertFalse(is_error(out), out[-200:])
                self.assertEqual(self.system_prompt(), text)

    def test_line_over_bound(self):
        self.command("/system base")
        line = "/system " + "s" * (p.MAX_LINE - 8 + 1)
        self.assertEqual(len(line), p.MAX_LINE + 1)
        self.line.write(line.encode() + b"\r")
        out = self.prompt()
        self.assertTrue(is_error(out), out[-200:])
        self.assertEqual(self.system_prompt(), "base")
        # A much longer one, and a message to the model.
        self.line.write(b"m" * 5000 + b"\r")
        self.assertTrue(is_error(self.prompt()))
        self.assertEqual(self.system_prompt(), "base")

    def test_invalid_utf8(self):
        self.command("/system base")
        for bad in (b"/system \xff\xfe", b"/system caf\xc3", b"\xc3\x28 hello", b"/system \xed\xa0\x80"):
            with self.subTest(bad=bad):
                self.line.write(bad + b"\r")
                out = self.prompt()
                self.assertTrue(is_error(out), out)
        self.assertEqual(self.system_prompt(), "base")


class Replies(ConformanceCase):
    ARGS = ("--max-tokens", "400", "--idle-timeout-s", "0")

    def setUp(self):
        super().setUp()
        self.prompt()

    def test_ctrl_c_during_reply(self):
        for attempt in range(3):
            self.line.type("Tell me a very long story\r")
            self.line.read_until(b"story\r\n", timeout=5)
            # Wait for some of the reply, then stop it.
            while not self.line.pending:
                self.line.fill(1)
            self.line.write(b"\x03")
            out = self.prompt()
            if b" ^C" not in out:
                self.prompt()  # the reply ended first; Ctrl-C met the prompt
                continue
            self.assertIn(b" ^C", out)
            stats = self.command("/stats").decode()
            generated = [int(n) for n in re.findall(r"(\d+) generated", stats)]
            if generated:
                self.assertLess(generated[0], 400, stats)
            return
        self.fail("every reply ended before its Ctrl-C arrived")

    def test_stray_zero_during_reply_ends_by_itself(self):
        # A 0x00 (and no greeting) during a reply: the reply goes on to its prompt, the wait
        # ends by itself, and line mode serves the next line.
        self.command("/system base")
        self.line.type("Tell me a very long story\r")
        self.line.read_until(b"story\r\n", timeout=5)
        self.line.write(b"\x00xyz")
        out = self.prompt()
        self.assertNotIn(b"\x00", out, "no frame mode")
        # The held bytes come back as typed once the 1 s is up (or were ignored, typed during
        # the reply); Ctrl-U clears them either way.
        self.line.read_quiet(1.5)
        self.line.type("\x15/system after\r")
        out = self.prompt()
        self.assertFalse(is_error(out), out)
        self.assertNotIn(b"\x00", out)
        self.assertEqual(self.system_prompt(), "after")

    def test_typing_during_reply_is_ignored(self):
        self.command("/system base")
        self.command("/set max_tokens 200")
        # A sampled reply that runs to the limit (the greedy one ends after 78 tokens).
        self.command("/set temperature 1")
        self.command("/set seed 3")
        self.line.type("Tell me a very long story\r")
        self.line.read_until(b"story\r\n", timeout=5)
        self.line.write(b"/system changed\r")
        out = self.prompt()
        self.assertNotIn(b"changed", out)
        self.assertEqual(self.system_prompt(), "base")

    def test_no_control_characters_reach_the_terminal(self):
        # Sampled replies at high temperature: whatever the model writes, line mode sends no
        # control character but CR and LF (and Tab: see below), and every LF follows a CR.
        self.command("/set temperature 2")
        self.command("/set max_tokens 120")
        for seed in range(4):
            self.command("/set seed %d" % seed)
            self.command("/reset")
            self.line.type("Say anything\r")
            self.line.read_until(b"anything\r\n", timeout=5)
            out = self.prompt()
            # PROTOCOL.md: "Control characters in the model's output are not sent." The device
            # passes Tab through (its own tests/serial.rs expects it, as a harmless one): taken
            # as the document's intent, reported as an ambiguity.
            bad = [c for c in out if (c < 0x20 and c not in (0x0D, 0x0A, 0x09)) or c == 0x7F]
            self.assertEqual(bad, [], "control bytes in %r" % out)
            self.assertIsNone(re.search(rb"(?<!\r)\n", out), out)


if __name__ == "__main__":
    unittest.main()
