"""A reply while it runs: Cancel during prefill and decode, Status and Busy during a reply,
interleavings (two Chats in one write, a Chat while busy, a new host's Hello mid-reply, 0x00 +
Hello during a person's reply), sentences, and a host that stops reading (Stalled)."""

import re
import time
import unittest

import protocol as p
from support import ConformanceCase

LONG = 400  # tokens: a reply that is still running when the test acts on it
PROMPT = "Tell me a long story about the station."
# A seed whose sampled reply to PROMPT runs to the token limit: with <|endoftext|> ending a
# reply (as in llama.cpp), most seeds' replies end within a few dozen tokens.
LONG_SEED = 2


class DuringReply(ConformanceCase):
    ARGS = ("--max-tokens", str(LONG), "--idle-timeout-s", "0")

    def setUp(self):
        super().setUp()
        self.greet()

    def start_reply(self, **options):
        """Sends a Chat and waits for its first Token; returns the Chat's seq."""
        options.setdefault("temperature", 1.0)
        options.setdefault("seed", LONG_SEED)
        seq = self.host.send(p.chat(PROMPT, **options))
        ev = self.host.next_event()
        self.assertEqual(ev.kind, "Token", "the reply starts with a Token: %r" % ev)
        return seq

    def rest_of_reply(self, seq):
        events = self.host.until_end(seq)
        return events, events[-1]

    def test_cancel_during_decode(self):
        # A reply of the tiny model takes ~60 ms: if it ended before the Cancel arrived (a slow
        # machine), that is no fault of the device's; try again.
        for attempt in range(3):
            seq = self.start_reply()
            self.host.send(p.cancel())
            events, end = self.rest_of_reply(seq)
            ack = self.host.expect("CancelAck")
            if end.reason != "Cancelled" and not ack.was_generating:
                self.host.send(p.reset())
                self.host.expect("Done")
                continue
            self.assertEqual(end.reason, "Cancelled")
            self.assertTrue(ack.was_generating)
            self.assertLess(end.stats["generated_tokens"], LONG)
            self.assertEqual({e.kind for e in events[:-1]} - {"Token"}, set(), events)
            self.host.quiet(0.3)
            self.assertEqual(self.alive_in_frame_mode().turns, 1)
            return
        self.fail("every reply ended before its Cancel arrived")

    def test_cancel_during_prefill(self):
        # Chat and Cancel in one write, a long prompt: the cancel lands during the prefill.
        before = self.alive_in_frame_mode()
        seq, data = self.host.frame_bytes(p.chat("station " * 45, session=before.session))
        _, cancel = self.host.frame_bytes(p.cancel())
        self.line.write(data + cancel)
        events = self.host.until_end(seq)
        end = events[-1]
        self.assertEqual(end.reason, "Cancelled", events)
        self.host.expect("CancelAck", was_generating=True)
        if end.stats["generated_tokens"] == 0:
            self.assertEqual([e.kind for e in events], ["End"])
            st = self.alive_in_frame_mode()
            self.assertEqual(st.turns, before.turns, "a reply cancelled before its first token leaves no turn")
        else:
            self.fail("cancel did not land in the prefill: %r" % end)

    def test_status_during_reply(self):
        before = self.alive_in_frame_mode()
        seq = self.start_reply(session=before.session)
        self.host.send(p.status())
        events, end = self.rest_of_reply(seq)
        during = [e for e in events if e.kind == "Status"]
        self.assertEqual(len(during), 1, events)
        # "the status from before the reply"
        self.assertEqual(during[0].fields, before.fields)
        self.assertIn(end.reason, ("Length", "Eos"))
        after = self.alive_in_frame_mode()
        self.assertEqual((after.turns, after.replies), (before.turns + 1, before.replies + 1))

    def test_busy_requests(self):
        # In the same write as the Chat: read while its reply runs, whatever the machine's speed.
        seq, data = self.host.frame_bytes(p.chat(PROMPT, temperature=1.0, seed=LONG_SEED))
        busy = {}
        for name, payload in (("Reset", p.reset()), ("SetSystem", p.set_system("x")),
                              ("Goodbye", p.goodbye()), ("SetBaud", p.set_baud(115200))):
            s, frame = self.host.frame_bytes(payload)
            busy[s] = name
            data += frame
        self.line.write(data)
        events, end = self.rest_of_reply(seq)
        self.assertIn(end.reason, ("Length", "Eos"), "the reply goes on")
        errors = {e.request: e.code for e in events if e.kind == "Error"}
        self.assertEqual(errors, {s: "Busy" for s in busy}, busy)
        self.host.quiet(0.3)
        self.assertEqual(self.alive_in_frame_mode().turns, 1, "Reset/SetSystem were dropped")

    def test_chat_while_busy(self):
        for attempt in range(3):
            seq = self.start_reply()
            second = self.host.send(p.chat("another", max_tokens=2))
            events, end = self.rest_of_reply(seq)
            self.assertIn(end.reason, ("Length", "Eos"))
            mine = [e for e in self.host.events if getattr(e, "request", None) == second]
            if not mine:  # the first reply had ended when the second Chat arrived
                self.host.until_end(second)
                self.host.send(p.reset())  # try again
                self.host.expect("Done")
                continue
            # Error { Busy } then End { Error }, both quoting the second Chat's seq, during the
            # first reply (before its End).
            self.assertEqual([(e.kind, getattr(e, "code", None) or e.reason) for e in mine],
                             [("Error", "Busy"), ("End", "Error")])
            self.assertTrue(p.zero_stats(mine[-1]), mine)
            self.host.quiet(0.3)
            self.assertEqual(self.alive_in_frame_mode().turns, 1)
            return
        self.fail("every reply ended before the second Chat arrived")

    def test_two_chats_in_one_write(self):
        a, fa = self.host.frame_bytes(p.chat(PROMPT, temperature=1.0, seed=LONG_SEED))
        b, fb = self.host.frame_bytes(p.chat("second", max_tokens=2))
        self.line.write(fa + fb)
        events = self.host.until_end(a)
        try:
            while not any(e.kind == "End" and e.request == b for e in self.host.events):
                self.host.next_event()
        except p.Timeout:
            self.fail("no End for the second Chat: %r" % self.host.events[-6:])
        ends = [e for e in self.host.events if e.kind == "End"]
        self.assertEqual(sorted(e.request for e in ends), sorted([a, b]))
        self.assertIn(events[-1].reason, ("Length", "Eos"))
        errors = [e for e in self.host.events if e.kind == "Error"]
        self.assertEqual([(e.code, e.request) for e in errors], [("Busy", b)])
        self.assertEqual([e.reason for e in ends if e.request == b], ["Error"])
        # "at once (before the first's End)"
        self.assertEqual([e.request for e in ends], [b, a], ends)
        self.assertTrue(p.zero_stats(ends[0]), ends)

    def test_new_hosts_hello_stops_the_reply(self):
        for attempt in range(3):
            seq = self.start_reply()
            # Another host: 0x00 + Hello, numbered from 0.
            self.line.write(b"\x00" + p.encode_frame(0, p.hello()))
            events = []
            while True:
                ev = self.host.next_event()
                events.append(ev)
                if ev.kind == "Hello":
                    break
            ends = [e for e in events if e.kind == "End"]
            if [e.reason for e in ends] in (["Length"], ["Eos"]):
                continue  # the reply ended before the Hello arrived
            self.assertEqual([(e.reason, e.request) for e in ends], [("Cancelled", seq)], events)
            self.assertNotIn("CancelAck", [e.kind for e in events])
            self.assertEqual(events[-1].seq, 0)
            self.host.quiet(0.3)
            self.assertEqual(self.alive_in_frame_mode().seq, 1)
            return
        self.fail("every reply ended before the Hello arrived")


class PersonInterrupted(ConformanceCase):
    ARGS = ("--max-tokens", str(LONG), "--idle-timeout-s", "0", "--temperature", "1")

    def test_hello_during_line_mode_reply(self):
        self.prompt()
        for attempt in range(3):
            self.line.type("Tell me a very long story\r")
            self.line.read_until(b"story\r\n", timeout=5)
            while not self.line.pending:
                self.line.fill(1)
            self.line.write(b"\x00" + p.encode_frame(0, p.hello()))
            text = self.host.skip_to_frame_start()
            ev = self.host.expect("Hello")
            self.assertEqual(ev.seq, 0)
            if b" ^C" not in text and text.endswith(b"> "):
                # The reply ended before the 0x00 arrived: back to line mode, again.
                self.host.send(p.goodbye())
                self.host.expect("Goodbye")
                self.prompt()
                continue
            self.assertIn(b" ^C", text)
            self.alive_in_frame_mode()
            return
        self.fail("every reply ended before the Hello arrived")


class Sentences(ConformanceCase):
    ARGS = ("--max-tokens", "300", "--idle-timeout-s", "0")

    def check(self, events):
        kinds = [e.kind for e in events]
        self.assertEqual(kinds[0], "SynthesizeStart", kinds)
        self.assertEqual(kinds[-2:], ["SynthesizeStop", "End"], kinds)
        self.assertEqual(kinds.count("SynthesizeStart"), 1)
        self.assertEqual(kinds.count("SynthesizeStop"), 1)
        reply = ""
        chunks = []
        for e in events:
            if e.kind == "Token":
                reply += e.text
            elif e.kind == "SynthesizeChunk":
                chunks.append(e.text)
                # A chunk is text already sent as tokens.
                said = squash("".join(chunks))
                self.assertTrue(squash(reply).startswith(said), (chunks, reply))
        # The sentences are the reply, cut at whitespace.
        self.assertEqual(squash("".join(chunks)), squash(reply))
        # In order, each a piece of the reply; each but the last ends a sentence (., !, ?, …
        # or a blank line after it) or was cut at whitespace because the next word would not
        # have fitted in 256 bytes.
        at = 0
        for i, c in enumerate(chunks):
            while at < len(reply) and reply[at] in p.WHITESPACE:
                at += 1
            self.assertTrue(reply.startswith(c, at), (c, reply[at:at + 300]))
            at += len(c)
            if i == len(chunks) - 1:
                break
            gap = at
            while gap < len(reply) and reply[gap] in p.WHITESPACE:
                gap += 1
            word = gap
            while word < len(reply) and reply[word] not in p.WHITESPACE:
                word += 1
            next_word = reply[gap:word]
            list_item = re.fullmatch(r"[-*+]|\d{1,3}[.)]", next_word) is not None
            ends = (
                c.rstrip(CLOSERS)[-1:] in ".!?\u2026"
                or reply[at:gap].count("\n") >= 2
                or ("\n" in reply[at:gap] and list_item)
            )
            # The device holds at most 256 bytes of a sentence: when the next word and the
            # whitespace after it do not fit, the sentence is cut at its last whitespace; a word
            # longer than that is cut anywhere.
            cut = len(reply[at - len(c):word + 1].encode()) > p.MAX_CHUNK or gap == at
            self.assertTrue(ends or cut, "chunk %r ends no sentence and was not cut; then %r"
                            % (c, reply[at:word]))
        return reply, chunks

    def test_sentences_cover_the_reply(self):
        self.greet()
        total = 0
        for seed in range(3):
            _, events, end = self.host.chat(PROMPT, sentences=True, temperature=1.0, seed=seed)
            reply, chunks = self.check(events)
            total += len(chunks)
            for c in chunks:
                self.assertLessEqual(len(c.encode()), p.MAX_CHUNK)
                self.assertEqual(c, c.strip(p.WHITESPACE))
                self.assertTrue(c)
        self.assertGreater(total, 0)

    def test_without_sentences_no_synthesize_events(self):
        self.greet()
        _, events, _ = self.host.chat(PROMPT, sentences=False, max_tokens=30)
        self.assertFalse([e for e in events if e.kind.startswith("Synthesize")])

    def test_cancelled_reply_still_stops_synthesis(self):
        self.greet()
        seq = self.host.send(p.chat(PROMPT, sentences=True, temperature=1.0, seed=LONG_SEED))
        first = self.host.next_event()
        self.assertEqual(first.kind, "SynthesizeStart")
        self.host.send(p.cancel())
        events = [first] + self.host.until_end(seq)
        kinds = [e.kind for e in events]
        self.assertEqual(events[-1].reason, "Cancelled")
        self.assertEqual(kinds[-2], "SynthesizeStop", kinds)
        self.host.expect("CancelAck", was_generating=True)


# Closing quotes and brackets may follow a sentence's final punctuation.
CLOSERS = "\"')]}\u201d\u2019\u00bb"


def squash(text):
    return "".join(c for c in text if c not in p.WHITESPACE)


class Stalled(ConformanceCase):
    """A host that stops reading during a reply. A reply of the tiny model is ~5 KB, less than
    a PTY holds, so the line is first filled with answers to Status requests (sized from a
    first run that measures how much the device's end of the PTY takes before it blocks),
    then a Chat's reply overflows it."""

    ARGS = ("--max-tokens", "450", "--idle-timeout-s", "0", "--write-timeout-ms", "300")

    def status_frames(self, n):
        return b"".join(self.host.frame_bytes(p.status())[1] for _ in range(n))

    def measure_room(self):
        """Bytes of Status answers the line takes before the device's writes block."""
        self.greet()
        self.host.send(p.status())
        size = len(self.host.next_frame().raw) + 1
        self.line.write(self.status_frames(2500))
        time.sleep(2)
        data = self.line.read_quiet(0.5)
        room, expect = 0, None
        for raw in data.split(b"\x00"):
            if len(raw) + 1 != size:
                break
            try:
                seq, payload = p.decode_frame(raw)
            except ValueError:
                break
            if expect is not None and seq != expect:
                break
            expect = (seq + 1) & 0xFFFF
            room += size
        self.assertLess(room, 2500 * size, "the line never blocked")
        return room, size

    def test_host_that_stops_reading(self):
        room, size = self.measure_room()
        self.dev.stop()
        self.start()
        self.greet()
        # The reply's size, read in full once (a short reply's half may fit in the line's slack
        # and never stall it).
        opts = dict(temperature=1.0, seed=LONG_SEED, sentences=True, session=2)
        seq, data = self.host.frame_bytes(p.chat(PROMPT, **opts))
        self.line.write(data)
        reply = self.line.read_quiet(0.5)
        self.assertTrue(reply.endswith(b"\x00"))
        self.host.send(p.reset())
        self.host.next_frame()
        self.host.send(p.status())
        self.assertEqual(len(self.host.next_frame().raw) + 1, size)
        # Fill all but half a reply with Status answers, then the same reply again.
        fill = max(0, room - len(reply) // 2) // size
        seq, data = self.host.frame_bytes(p.chat(PROMPT, **opts))
        self.line.write(self.status_frames(fill) + data)
        time.sleep(2)
        self.line.read_quiet(0.5)
        self.line.pending.clear()
        self.assertTrue(self.line.nothing_for(1.0), "the device dropped its output")
        # Anything from the host: first the abandoned reply's Error { Stalled } and End.
        self.host.zeros = 0
        self.host.expected_seq = None
        self.host.send(p.status())
        first = self.host.next_frame()
        self.assertIsNone(first.error, first.raw)
        ev = p.decode_event(first.payload, first.seq)
        self.assertEqual((ev.kind, ev.fields.get("code"), ev.fields.get("request")),
                         ("Error", "Stalled", seq), ev)
        self.assertGreaterEqual(first.zeros_before, 1, "an extra 0x00 before the next frame")
        self.host.expected_seq = (first.seq + 1) & 0xFFFF
        self.host.expect("End", reason="Cancelled", request=seq)
        self.host.expect("Status")
        self.host.quiet(0.3)
        self.alive_in_frame_mode()


if __name__ == "__main__":
    unittest.main()
