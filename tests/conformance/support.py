"""The base of the conformance cases: a fresh `emberd` per test, checked after it."""

import os
import shutil
import tempfile
import unittest

import protocol as p

# Replies are kept short: the tiny model is fast, but the machine may be slow and shared.
DEFAULT_ARGS = ("--max-tokens", "16", "--idle-timeout-s", "0")


class ConformanceCase(unittest.TestCase):
    """Starts `emberd` with `ARGS` (a class attribute) for each test; `self.dev`, `self.host`,
    `self.line`. After the test, every frame the device sent must have been a well-formed
    event within the documented limits, and the device must still be running."""

    ARGS = DEFAULT_ARGS
    SLOTS = False  # serve a slot directory (slot A: the tiny image) instead of --model
    maxDiff = 4000

    def setUp(self):
        self.start()

    def start(self, *args, slot_dir=None):
        if getattr(self, "dev", None):
            self.dev.stop()
        if slot_dir is None and self.SLOTS:
            slot_dir = self.make_slot_dir()
        self.dev = p.Emberd(*(args or self.ARGS), slot_dir=slot_dir)
        self.host = self.dev.host
        self.line = self.dev.line
        self.addCleanup(self.dev.stop)
        return self.dev

    def make_slot_dir(self):
        d = tempfile.mkdtemp(prefix="ember-conformance-slots-")
        self.addCleanup(shutil.rmtree, d, True)
        shutil.copy(p.tiny_image(), os.path.join(d, "slot-a.ember"))
        self.slot_dir = d
        return d

    def tearDown(self):
        dev = self.dev
        problems = list(dev.host.problems)
        if not dev.alive():
            problems.append("emberd exited (%s)" % dev.proc.returncode)
        if problems:
            self.fail(
                "the device broke the protocol:\n  "
                + "\n  ".join(problems)
                + "\nemberd log:\n"
                + dev.log_text()
            )

    # frame mode

    def greet(self, version=p.PROTOCOL_VERSION):
        """Leaves line mode (skipping its banner) and returns the device's Hello."""
        return self.host.greet(version)

    def alive_in_frame_mode(self):
        """The device answers a Status in frame mode; returns it."""
        self.host.send(p.status())
        return self.host.expect("Status")

    # line mode

    def prompt(self):
        """Reads up to the next prompt `> `; returns the text before it."""
        return self.line.read_until(b"> ")[:-2]

    def command(self, text):
        """Types a line (CR) and returns what the device printed up to the next prompt."""
        self.line.type(text + "\r")
        return self.prompt()

    def system_prompt(self):
        """The system prompt as `/system` shows it (the text after the echoed command)."""
        out = self.command("/system").decode()
        shown = out.split("/system\r\n", 1)[1].strip("\r\n")
        # Shown as `system prompt: TEXT` (the label is not part of the prompt).
        label = "system prompt: "
        return shown[len(label):] if shown.startswith(label) else shown
