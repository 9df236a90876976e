"""Message: history without generation. The index rule (taken, copy, gap), the role order
(an assistant message follows a user message; pieces of one role join), a Chat after a held
user message, Busy during a reply, BadField for its fields, and what a remembered
conversation does to the next reply."""

import unittest

import protocol as p
from support import ConformanceCase

PROMPT = "Tell me a story about the station."
HISTORY = [
    ("User", "What is "),
    ("User", "the station?"),
    ("Assistant", "It is a place "),
    ("Assistant", "where trains stop."),
]
LONG = 400  # tokens: a reply still running when the next frames arrive
LONG_SEED = 2  # a seed whose sampled reply to PROMPT runs long (see test_replies.py)
# The tiny model's greedy reply hardly depends on what comes before the last message; a seeded
# sample does (and is as repeatable): replies are compared sampled, with their prompt tokens.
SAMPLING = dict(temperature=1.0, seed=7)


class Codec(unittest.TestCase):
    def test_documented_encoding(self):
        # variant 12, session, index (varint), role (0 User, 1 Assistant), text
        self.assertEqual(p.message(300, "Assistant", "ok", session=1),
                         bytes([12, 1, 0xAC, 0x02, 1, 2]) + b"ok")


class Messages(ConformanceCase):
    def setUp(self):
        super().setUp()
        self.greet()

    def send_message(self, index, role, text, session=1):
        return self.host.send(p.message(index, role, text, session))

    def take(self, index, role, text, session=1):
        self.send_message(index, role, text, session)
        self.host.expect("Done")

    def remember(self, messages, session=1, start=0):
        for i, (role, text) in enumerate(messages):
            self.take(start + i, role, text, session)
        return start + len(messages)

    def reply(self, text, session=1):
        """The seeded reply to a Chat of `text` and its prompt tokens."""
        _, events, end = self.host.chat(text, session, max_tokens=12, **SAMPLING)
        self.assertIn(end.reason, ("Eos", "Length"), events)
        return p.reply_text(events), end.stats["prompt_tokens"]

    def new_conversation(self):
        self.host.send(p.reset())
        self.host.expect("Done")

    def test_in_order_messages_are_done_and_make_turns(self):
        self.host.send(p.set_system("Answer briefly."))
        self.host.expect("Done")
        self.take(0, "User", HISTORY[0][1])
        self.take(1, "User", HISTORY[1][1])
        self.assertEqual(self.alive_in_frame_mode().turns, 0, "a user message alone is no turn")
        self.take(2, "Assistant", HISTORY[2][1])
        st = self.alive_in_frame_mode()
        self.assertEqual((st.turns, st.replies), (1, 0), "answered: a turn, and no reply ran")
        self.take(3, "Assistant", HISTORY[3][1])
        self.assertEqual(self.alive_in_frame_mode().turns, 1, "pieces of one answer")
        self.host.quiet(0.3)

    def test_a_remembered_conversation_changes_the_next_reply(self):
        # The same seeded sample, after a remembered turn and without one.
        plain, plain_prompt = self.reply(PROMPT)
        self.new_conversation()
        self.remember(HISTORY)
        text, prompt = self.reply(PROMPT)
        self.assertGreater(prompt, plain_prompt, "the remembered turn is prefilled with the chat")
        self.assertNotEqual(text, plain)
        self.assertEqual(self.alive_in_frame_mode().turns, 2)

    def test_a_copy_is_done_and_taken_once(self):
        self.remember(HISTORY)
        once = self.reply(PROMPT)
        self.new_conversation()
        # Every message sent twice (as when its Done is lost), and an old one again later.
        for i, (role, text) in enumerate(HISTORY):
            self.take(i, role, text)
            self.take(i, role, text)
        self.take(0, "User", HISTORY[0][1])
        self.assertEqual(self.reply(PROMPT), once)

    def test_a_gap_is_out_of_order_and_changes_nothing(self):
        self.take(0, "User", "Hello")
        seq = self.send_message(2, "User", "lost one before me")
        ev = self.host.expect_error("OutOfOrder", request=seq)
        self.assertIn("1", ev.detail, "the detail says how many were taken")
        self.host.quiet(0.3)
        self.take(1, "User", " there")
        self.take(2, "Assistant", "Hi.")
        self.assertEqual(self.alive_in_frame_mode().turns, 1)
        # The same conversation sent in order gives the same reply.
        after_gap = self.reply(PROMPT)
        self.new_conversation()
        self.remember([("User", "Hello there"), ("Assistant", "Hi.")])
        self.assertEqual(self.reply(PROMPT), after_gap)

    def test_an_assistant_message_must_follow_a_user_message(self):
        seq = self.send_message(0, "Assistant", "Unasked.")
        self.host.expect_error("OutOfOrder", request=seq)
        # Nothing was taken: index 0 is still next.
        self.take(0, "User", "Hi")
        self.take(1, "Assistant", "Hello.")
        # After a Chat's reply the next message must start with User again; the count goes on.
        self.reply("How are you?")
        seq = self.send_message(2, "Assistant", "More of the reply.")
        self.host.expect_error("OutOfOrder", request=seq)
        self.take(2, "User", "Thanks.")
        self.assertEqual(self.alive_in_frame_mode().turns, 2)

    def test_a_chat_completes_a_held_user_message(self):
        # Pieces of a user message + a Chat with the last piece = one Chat with the whole text.
        whole = self.reply(PROMPT)
        self.new_conversation()
        self.take(0, "User", "Tell me a ")
        self.take(1, "User", "story about ")
        self.assertEqual(self.reply("the station."), whole)
        self.assertEqual(self.alive_in_frame_mode().turns, 1)

    def test_another_session_starts_a_new_conversation(self):
        self.remember(HISTORY, session=1)
        self.reply(PROMPT, session=1)
        self.take(0, "User", "Hi", session=2)
        st = self.alive_in_frame_mode()
        self.assertEqual((st.session, st.turns), (2, 0))
        # And the count restarted: 1 is next, 2 is a gap.
        seq = self.send_message(2, "User", "x", session=2)
        self.host.expect_error("OutOfOrder", request=seq)

    def test_reset_and_set_system_restart_the_count(self):
        for forget in (p.reset(), p.set_system("Be brief.")):
            with self.subTest(forget=forget):
                self.remember(HISTORY)
                self.host.send(forget)
                self.host.expect("Done")
                self.assertEqual(self.alive_in_frame_mode().turns, 0)
                seq = self.send_message(1, "User", "x")
                self.host.expect_error("OutOfOrder", request=seq)
                seq = self.send_message(0, "Assistant", "x")
                self.host.expect_error("OutOfOrder", request=seq)

    def test_bad_fields(self):
        for payload in (p.message(0, 2, "an unknown role"), p.message(0, "User", "x" * (p.MAX_TEXT + 1)),
                        p.message(0, "User", b"caf\xc3"), p.message(0, "User", "x") + b"\x00",
                        p.message(0, "User", "x")[:-2]):
            with self.subTest(payload=payload[:8]):
                seq = self.host.send(payload)
                self.host.expect_error("BadField", request=seq)
        self.host.quiet(0.3)  # no End: a Message is not a Chat
        # At the bound: taken.
        self.take(0, "User", "é" * (p.MAX_TEXT // 2))
        self.take(1, "User", "")


class DuringReply(ConformanceCase):
    ARGS = ("--max-tokens", str(LONG), "--idle-timeout-s", "0")

    def test_busy_and_nothing_changes(self):
        self.greet()
        # In the same write as the Chat: read while its reply runs, whatever the machine's speed.
        seq, data = self.host.frame_bytes(p.chat(PROMPT, temperature=1.0, seed=LONG_SEED))
        busy, frame = self.host.frame_bytes(p.message(0, "User", "too late"))
        self.line.write(data + frame)
        events = self.host.until_end(seq)
        self.assertIn(events[-1].reason, ("Length", "Eos"), "the reply goes on")
        mine = [e for e in events if getattr(e, "request", None) == busy]
        self.assertEqual([(e.kind, e.code) for e in mine], [("Error", "Busy")])
        self.host.quiet(0.3)
        # The refused message was not taken: index 0 is still next.
        self.host.send(p.message(0, "User", "now"))
        self.host.expect("Done")


if __name__ == "__main__":
    unittest.main()
