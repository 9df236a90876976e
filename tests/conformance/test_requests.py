"""Every request and its answer in frame mode: Chat (options, stops, settings, End and its
stats), Cancel, Reset, SetSystem, Status, Goodbye, SetBaud; fields at, below and above their
bounds (BadField, BadSetting, TooLong)."""

import hashlib
import unittest

import protocol as p
from support import ConformanceCase

PROMPT = "Tell me a story about the station."


class Chat(ConformanceCase):
    def setUp(self):
        super().setUp()
        self.hello = self.greet()

    def test_reply_and_end(self):
        seq, events, end = self.host.chat(PROMPT, max_tokens=8)
        kinds = [e.kind for e in events]
        self.assertEqual(set(kinds[:-1]), {"Token"}, events)
        self.assertEqual(end.request, seq)
        self.assertIn(end.reason, ("Eos", "Length"))
        s = end.stats
        if end.reason == "Length":
            self.assertEqual(s["generated_tokens"], 8)
        self.assertLessEqual(s["generated_tokens"], 8)
        self.assertGreater(s["prompt_tokens"], 0)
        self.assertLessEqual(s["time_to_first_token_ms"], s["total_ms"])
        self.assertTrue(p.finite(s["decode_tokens_per_second"]))
        self.assertGreaterEqual(s["decode_tokens_per_second"], 0)
        self.assertGreaterEqual(s["context_used"], s["prompt_tokens"] + s["generated_tokens"] - 1)
        self.assertLessEqual(s["context_used"], self.hello.context_length)
        self.assertEqual(s["turns_dropped"], 0)
        self.host.quiet(0.3)

    def test_greedy_is_deterministic_and_reset_forgets(self):
        _, a, end_a = self.host.chat(PROMPT, max_tokens=12, temperature=0.0)
        self.host.send(p.reset())
        self.host.expect("Done")
        self.assertEqual(self.alive_in_frame_mode().turns, 0)
        _, b, end_b = self.host.chat(PROMPT, max_tokens=12, temperature=0.0)
        self.assertEqual(p.reply_text(a), p.reply_text(b))
        self.assertEqual(end_a.stats["prompt_tokens"], end_b.stats["prompt_tokens"])

    def test_max_tokens_option_and_default(self):
        _, _, end = self.host.chat(PROMPT, max_tokens=3)
        self.assertLessEqual(end.stats["generated_tokens"], 3)
        # No max_tokens: the device's own (--max-tokens 16).
        self.host.send(p.reset())
        self.host.expect("Done")
        _, _, end = self.host.chat(PROMPT)
        self.assertLessEqual(end.stats["generated_tokens"], 16)
        if end.reason == "Length":
            self.assertEqual(end.stats["generated_tokens"], 16)

    def test_sampling_options_are_taken(self):
        # A seeded sample is repeatable; every option within its range is accepted.
        opts = dict(max_tokens=10, temperature=1.5, top_k=5, top_p=0.9, repeat_penalty=1.1, seed=7)
        _, a, end = self.host.chat(PROMPT, **opts)
        self.assertNotEqual(end.reason, "Error", a)
        self.host.send(p.reset())
        self.host.expect("Done")
        _, b, _ = self.host.chat(PROMPT, **opts)
        self.assertEqual(p.reply_text(a), p.reply_text(b))
        # top_p = 1 is inside (0, 1].
        _, _, end = self.host.chat(PROMPT, session=2, max_tokens=2, top_p=1.0)
        self.assertNotEqual(end.reason, "Error")

    def test_tokens_are_whole_utf8(self):
        # Decoding checks it: a Token that is not UTF-8 is an undecodable event (a problem).
        _, events, _ = self.host.chat("naïve café 🔥 — ünïcödé", max_tokens=24, temperature=1.0, seed=3)
        self.assertTrue(all(isinstance(e.text, str) for e in events if e.kind == "Token"))

    def test_stop_sequence(self):
        _, events, _ = self.host.chat(PROMPT, max_tokens=24, temperature=0.0)
        full = p.reply_text(events)
        # A stop inside the greedy reply: the same reply up to it, the stop never sent.
        cut = None
        for i in range(2, len(full) - 2):
            stop = full[i : i + 3]
            if stop.strip() and full.find(stop) == i and not any(p.is_control(c) for c in stop):
                cut = i
                break
        if cut is None:
            self.skipTest("greedy reply too short for a stop: %r" % full)
        stop = full[cut : cut + 3]
        self.host.send(p.reset())
        self.host.expect("Done")
        _, events, end = self.host.chat(PROMPT, max_tokens=24, temperature=0.0, stop=[stop])
        self.assertEqual(end.reason, "Stop", events)
        self.assertEqual(p.reply_text(events), full[:cut])

    def test_stops_at_their_bounds(self):
        four = ["ä" * 16, "b" * 32, "\x00zz", "🔥" * 8]  # 32, 32, 3, 32 bytes
        self.assertEqual([len(s.encode()) for s in four], [32, 32, 3, 32])
        _, events, end = self.host.chat(PROMPT, max_tokens=4, stop=four)
        self.assertIn(end.reason, ("Eos", "Length", "Stop"), events)
        _, events, end = self.host.chat(PROMPT, max_tokens=4, stop=[])
        self.assertIn(end.reason, ("Eos", "Length"), events)

    def test_text_at_bound(self):
        for text in ("x" * p.MAX_TEXT, "é" * (p.MAX_TEXT // 2), "🔥" * (p.MAX_TEXT // 4)):
            with self.subTest(chars=len(text)):
                self.host.send(p.reset())
                self.host.expect("Done")
                seq, events, end = self.host.chat(text, max_tokens=1)
                # Within the field's bound: a reply, or TooLong (the tiny model's 512-position
                # context holds fewer tokens), never BadField.
                errors = [e.code for e in events if e.kind == "Error"]
                self.assertIn(errors, ([], ["TooLong"]), events)
                self.assertEqual(end.request, seq)

    def test_empty_text(self):
        seq, events, end = self.host.chat("", max_tokens=2)
        self.assertEqual(end.request, seq)
        self.assertNotIn("Error", [e.kind for e in events])


class BadFields(ConformanceCase):
    """A known request whose fields do not decode within their limits: BadField (a Chat also
    gets End { Error })."""

    def setUp(self):
        super().setUp()
        self.greet()

    def refused_chat(self, payload, code="BadField"):
        seq = self.host.send(payload)
        self.host.expect_error(code, request=seq)
        end = self.host.expect("End", reason="Error", request=seq)
        self.assertTrue(p.zero_stats(end), end)
        return seq

    def test_text_below_at_and_over_bound_in_one_session(self):
        # SetSystem: 1023 and 1024 bytes are taken, 1025 is a BadField.
        for n, answer in ((p.MAX_TEXT - 1, "Done"), (p.MAX_TEXT, "Done"), (p.MAX_TEXT + 1, None)):
            with self.subTest(n=n):
                seq = self.host.send(p.set_system("z" * n))
                if answer:
                    self.host.expect(answer)
                else:
                    self.host.expect_error("BadField", request=seq)
        # Chat: 1023 bytes decode (a reply or TooLong: never BadField); 1025 do not.
        seq, events, end = self.host.chat("z" * (p.MAX_TEXT - 1), max_tokens=1)
        self.assertNotIn("BadField", [e.code for e in events if e.kind == "Error"], events)
        self.assertEqual(end.request, seq)
        self.refused_chat(p.chat("z" * (p.MAX_TEXT + 1)))

    def test_text_over_bound(self):
        self.refused_chat(p.chat("x" * (p.MAX_TEXT + 1)))
        self.refused_chat(p.chat("é" * (p.MAX_TEXT // 2) + "x"))

    def test_too_many_stops(self):
        self.refused_chat(p.chat(PROMPT, stop=["a", "b", "c", "d", "e"]))

    def test_stop_too_long(self):
        self.refused_chat(p.chat(PROMPT, stop=["s" * (p.MAX_STOP + 1)]))
        self.refused_chat(p.chat(PROMPT, stop=["é" * 16 + "x"]))

    def test_text_not_utf8(self):
        self.refused_chat(p.chat(b"caf\xc3", max_tokens=2))
        self.refused_chat(p.chat(b"\xff\xfe", max_tokens=2))
        self.refused_chat(p.chat(PROMPT, stop=[b"\xc3("]))

    def test_bad_enum_bool_option_values(self):
        base = p.chat(PROMPT)
        # sentences: bool 2
        self.refused_chat(base[:-1] + b"\x02")
        # max_tokens: Option tag 2
        w = p.Writer().varint(1).u32(1).string(PROMPT)
        self.refused_chat(w.done() + b"\x02" + p.chat_options()[1:])

    def test_trailing_bytes(self):
        self.refused_chat(p.chat(PROMPT) + b"\x00")
        for payload in (p.status() + b"\x00", p.hello() + b"\x00", p.reset() + b"\x01",
                        p.set_baud(115200) + b"\x00"):
            with self.subTest(payload=payload):
                seq = self.host.send(payload)
                self.host.expect_error("BadField", request=seq)
        self.alive_in_frame_mode()

    def test_truncated_fields(self):
        self.refused_chat(p.chat(PROMPT)[:-1])
        for payload in (bytes([0]), bytes([11]), bytes([4, 5, ord("a")]), bytes([7, 1])):
            with self.subTest(payload=payload):
                seq = self.host.send(payload)
                self.host.expect_error("BadField", request=seq)

    def test_set_system_bounds(self):
        self.host.send(p.set_system("y" * p.MAX_TEXT))
        self.host.expect("Done")
        self.host.send(p.set_system(""))
        self.host.expect("Done")
        seq = self.host.send(p.set_system("y" * (p.MAX_TEXT + 1)))
        self.host.expect_error("BadField", request=seq)
        seq = self.host.send(p.set_system(b"\xc3\x28"))
        self.host.expect_error("BadField", request=seq)

    def test_flash_fields_at_and_over_their_bounds(self):
        # On a fixed --model every flash request that decodes gets FlashUnavailable: so a field
        # at its bound decodes, one byte over it does not (BadField).
        image = open(p.tiny_image(), "rb").read()
        sha = bytes(32)
        for data, code in ((image[:p.MAX_FLASH_DATA - 1], "FlashUnavailable"),
                           (image[:p.MAX_FLASH_DATA], "FlashUnavailable"),
                           (image[:p.MAX_FLASH_DATA + 1], "BadField")):
            with self.subTest(chunk=len(data)):
                seq = self.host.send(p.flash_chunk(0, 0, data, encoded_len=p.FLASH_BLOCK))
                self.host.expect_error(code, request=seq)
        for header, code in ((image[:63], "FlashUnavailable"), (image[:64], "FlashUnavailable"),
                             (image[:65], "BadField")):
            with self.subTest(header=len(header)):
                seq = self.host.send(p.flash_begin(len(image), sha, header))
                self.host.expect_error(code, request=seq)
        self.alive_in_frame_mode()

    def test_flash_chunk_bad_encoding(self):
        seq = self.host.send(p.flash_chunk(0, 0, b"abc", encoding=2))
        self.host.expect_error("BadField", request=seq)

    def test_device_goes_on(self):
        self.refused_chat(p.chat("x" * 2000))
        _, events, end = self.host.chat(PROMPT, max_tokens=2)
        self.assertNotEqual(end.reason, "Error", events)


class BadSettings(ConformanceCase):
    def setUp(self):
        super().setUp()
        self.greet()

    def test_each_bad_setting(self):
        nan, inf = float("nan"), float("inf")
        cases = [
            dict(temperature=-1.0), dict(temperature=-0.1), dict(temperature=nan),
            dict(temperature=inf),
            dict(temperature=-inf),
            dict(top_p=0.0), dict(top_p=1.0001), dict(top_p=-0.5), dict(top_p=nan),
            dict(repeat_penalty=0.0), dict(repeat_penalty=-1.0), dict(repeat_penalty=nan),
            dict(repeat_penalty=inf), dict(max_tokens=0),
            # "an empty stop sequence": BadSetting, not BadField (the Limits table)
            dict(stop=[""]), dict(stop=["a", ""]),
        ]
        for opts in cases:
            with self.subTest(**{k: repr(v) for k, v in opts.items()}):
                seq = self.host.send(p.chat(PROMPT, **opts))
                self.host.expect_error("BadSetting", request=seq)
                end = self.host.expect("End", reason="Error", request=seq)
                self.assertTrue(p.zero_stats(end), end)
        st = self.alive_in_frame_mode()
        self.assertEqual(st.turns, 0, "refused chats leave no turn")

    def test_good_edges(self):
        for opts in (dict(temperature=0.0), dict(top_p=1.0), dict(top_p=1e-6),
                     dict(repeat_penalty=1e-3), dict(max_tokens=1), dict(top_k=0), dict(seed=2**64 - 1)):
            with self.subTest(**{k: repr(v) for k, v in opts.items()}):
                opts.setdefault("max_tokens", 2)
                _, events, end = self.host.chat(PROMPT, **opts)
                self.assertNotEqual(end.reason, "Error", events)


class TooLong(ConformanceCase):
    ARGS = ("--max-tokens", "4", "--context", "64", "--idle-timeout-s", "0")

    def test_message_longer_than_the_context(self):
        self.greet()
        seq = self.host.send(p.chat("word " * 200))
        self.host.expect_error("TooLong", request=seq)
        end = self.host.expect("End", reason="Error", request=seq)
        self.assertTrue(p.zero_stats(end), end)
        _, events, end = self.host.chat("hi", max_tokens=2)
        self.assertNotEqual(end.reason, "Error", events)


class CancelResetSystemStatus(ConformanceCase):
    ARGS = ("--max-tokens", "16", "--idle-timeout-s", "0")

    def setUp(self):
        super().setUp()
        self.hello = self.greet()

    def test_cancel_when_idle(self):
        self.host.send(p.cancel())
        self.host.expect("CancelAck", was_generating=False)
        self.host.quiet(0.3)

    def test_status_counts_turns_and_sessions(self):
        st = self.alive_in_frame_mode()
        self.assertEqual((st.turns, st.context_length), (0, self.hello.context_length))
        replies = st.replies
        _, _, e1 = self.host.chat(PROMPT, session=7, max_tokens=4)
        st = self.alive_in_frame_mode()
        self.assertEqual((st.session, st.turns, st.replies), (7, 1, replies + 1))
        self.assertEqual(st.context_used, e1.stats["context_used"])
        _, _, e2 = self.host.chat("And then?", session=7, max_tokens=4)
        st = self.alive_in_frame_mode()
        self.assertEqual((st.session, st.turns, st.replies), (7, 2, replies + 2))
        self.assertEqual(st.context_used, e2.stats["context_used"])
        self.assertGreater(e2.stats["context_used"], e1.stats["context_used"])
        # Another session: a new conversation.
        _, _, e3 = self.host.chat("And then?", session=8, max_tokens=4)
        st = self.alive_in_frame_mode()
        self.assertEqual((st.session, st.turns), (8, 1))
        self.assertLess(e3.stats["context_used"], e2.stats["context_used"])

    def test_turn_prefills_only_new_text(self):
        self.host.send(p.set_system("You are a helpful assistant. " * 20))
        self.host.expect("Done")
        _, _, e1 = self.host.chat("hi", session=3, max_tokens=2)
        _, _, e2 = self.host.chat("hi", session=3, max_tokens=2)
        self.assertLess(e2.stats["prompt_tokens"], e1.stats["prompt_tokens"])

    def test_set_system_forgets(self):
        self.host.chat(PROMPT, max_tokens=2)
        self.assertEqual(self.alive_in_frame_mode().turns, 1)
        self.host.send(p.set_system("Answer briefly."))
        self.host.expect("Done")
        self.assertEqual(self.alive_in_frame_mode().turns, 0)

    def test_reset(self):
        self.host.chat(PROMPT, max_tokens=2)
        self.host.send(p.reset())
        self.host.expect("Done")
        st = self.alive_in_frame_mode()
        self.assertEqual(st.turns, 0)

    def test_goodbye(self):
        self.host.send(p.goodbye())
        self.host.expect("Goodbye")
        # Line mode again: a prompt, and typed lines are served.
        self.prompt()
        self.assertEqual(self.command("/system Be brief.").count(b"error"), 0)
        self.assertEqual(self.system_prompt(), "Be brief.")


class ContextFull(ConformanceCase):
    ARGS = ("--max-tokens", "24", "--context", "128", "--idle-timeout-s", "0")

    def test_oldest_turns_dropped(self):
        hello = self.greet()
        dropped = 0
        turns = []
        for i in range(12):
            _, events, end = self.host.chat("Tell me more about item %d." % i, session=1)
            self.assertIn(end.reason, ("Eos", "Length"), events)
            self.assertLessEqual(end.stats["context_used"], hello.context_length)
            dropped += end.stats["turns_dropped"]
            turns.append(self.alive_in_frame_mode().turns)
        self.assertGreater(dropped, 0, "a 128-position context overflows in 12 turns")
        self.assertLess(turns[-1], 12)


class Baud(ConformanceCase):
    ARGS = ("--max-tokens", "16", "--idle-timeout-s", "0", "--max-baud", "921600")

    def setUp(self):
        super().setUp()
        self.greet()

    def test_switch_within_max(self):
        for baud in (921600, 9600, 115200):
            with self.subTest(baud=baud):
                self.host.send(p.set_baud(baud))
                self.host.expect("BaudSwitch", baud=baud)
                # A PTY carries any rate: greet at the new one.
                ev = self.host.greet(skip_before=False)
                self.assertEqual(ev.seq, 0)
                self.alive_in_frame_mode()

    def test_refused_rates(self):
        for baud in (1843200, 4000000, 4000001, 12345, 9599, 0, 100000):
            with self.subTest(baud=baud):
                seq = self.host.send(p.set_baud(baud))
                self.host.expect_error("BadSetting", request=seq)
        self.alive_in_frame_mode()

    def test_no_greeting_after_switch_falls_back(self):
        self.host.send(p.set_baud(460800))
        self.host.expect("BaudSwitch", baud=460800)
        # No frame for more than 2 s: the device goes back to its own rate and goes on.
        self.line.nothing_for(2.5)
        ev = self.host.greet(skip_before=False)
        self.assertEqual(ev.seq, 0)

    def test_goodbye_after_switch(self):
        self.host.send(p.set_baud(921600))
        self.host.expect("BaudSwitch")
        self.host.greet(skip_before=False)
        self.host.send(p.goodbye())
        self.host.expect("Goodbye")
        self.prompt()


class HighMaxBaud(ConformanceCase):
    ARGS = ("--max-tokens", "16", "--idle-timeout-s", "0", "--max-baud", "4000000")

    def test_top_standard_rate(self):
        self.greet()
        self.host.send(p.set_baud(4000000))
        self.host.expect("BaudSwitch", baud=4000000)
        self.host.greet(skip_before=False)
        for baud in (4000001, 5000000):
            seq = self.host.send(p.set_baud(baud))
            self.host.expect_error("BadSetting", request=seq)


class FlashOnFixedModel(ConformanceCase):
    def test_flash_unavailable(self):
        self.greet()
        with open(p.tiny_image(), "rb") as f:
            image = f.read()
        seq = self.host.send(p.flash_begin(len(image), hashlib.sha256(image).digest(), image[:64]))
        self.host.expect_error("FlashUnavailable", request=seq)
        for payload in (p.flash_chunk(0, 0, image[:100]), p.flash_commit()):
            seq = self.host.send(payload)
            self.host.expect_error("FlashUnavailable", request=seq)
        self.alive_in_frame_mode()


if __name__ == "__main__":
    unittest.main()
