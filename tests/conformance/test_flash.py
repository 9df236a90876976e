"""Flashing over the line on a slot directory (slot A: the tiny image): transfers, positions,
resumption, commit and the refusals (NoTransfer, ImageRejected, ImageTooLarge, ChunkRejected,
HashMismatch, SignatureRejected, Storage), and the flash requests during a reply."""

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

import protocol as p
from support import ConformanceCase


def image_bytes():
    with open(p.tiny_image(), "rb") as f:
        return f.read()


def blocks(image):
    return [(o, image[o : o + p.FLASH_BLOCK]) for o in range(0, len(image), p.FLASH_BLOCK)]


class Flash(ConformanceCase):
    SLOTS = True
    ARGS = ("--max-tokens", "300", "--idle-timeout-s", "0")

    def setUp(self):
        super().setUp()
        self.hello = self.greet()
        self.image = image_bytes()
        self.sha = hashlib.sha256(self.image).digest()

    def begin(self, image=None, sha=None, header=None, image_len=None, signature=None):
        image = self.image if image is None else image
        return self.host.send(
            p.flash_begin(
                len(image) if image_len is None else image_len,
                self.sha if sha is None else sha,
                image[:64] if header is None else header,
                signature,
            )
        )

    def next_position(self):
        ev = self.host.expect("FlashNext")
        return ev.offset, ev.at

    def same_position(self, got, want):
        """(offset, at) positions; the end of a block may be named as the next block's start."""
        if got == want:
            return True
        off, at = want
        block_len = min(p.FLASH_BLOCK, len(self.image) - off)
        if at == block_len:
            return got == (off + p.FLASH_BLOCK if off + block_len < len(self.image) else len(self.image), 0)
        if at == 0 and off > 0:
            prev = off - p.FLASH_BLOCK
            return got == (prev, p.FLASH_BLOCK)
        return False

    def send_block(self, offset, block, start=0):
        """Sends a raw block chunk by chunk from `start`, each answered by FlashNext."""
        at = start
        while at < len(block):
            data = block[at : at + p.MAX_FLASH_DATA]
            self.host.send(p.flash_chunk(offset, at, data, encoded_len=len(block)))
            got = self.next_position()
            at += len(data)
            self.assertTrue(self.same_position(got, (offset, at)), (got, (offset, at)))

    def send_all(self):
        for offset, block in blocks(self.image):
            self.send_block(offset, block)

    def test_hello_names_the_slot(self):
        self.assertEqual(self.hello.slot, "A")
        self.assertIsNone(self.hello.last_flash)

    def test_no_transfer(self):
        seq = self.host.send(p.flash_chunk(0, 0, self.image[:100], encoded_len=p.FLASH_BLOCK))
        self.host.expect_error("NoTransfer", request=seq)
        seq = self.host.send(p.flash_commit())
        self.host.expect_error("NoTransfer", request=seq)
        self.host.send(p.flash_abort())
        self.host.expect("Done")

    def test_begin_positions_and_damaged_chunks(self):
        self.begin()
        self.assertEqual(self.next_position(), (0, 0))
        block = self.image[: p.FLASH_BLOCK]
        # A damaged chunk: ChunkRejected and the start of its block.
        seq = self.host.send(p.flash_chunk(0, 0, block[:1000], encoded_len=p.FLASH_BLOCK, crc=0x12345678))
        self.host.expect_error("ChunkRejected", request=seq)
        self.assertEqual(self.next_position(), (0, 0))
        # The right one.
        self.host.send(p.flash_chunk(0, 0, block[:1000], encoded_len=p.FLASH_BLOCK))
        self.assertEqual(self.next_position(), (0, 1000))
        # A repeat gets nothing.
        self.host.send(p.flash_chunk(0, 0, block[:1000], encoded_len=p.FLASH_BLOCK))
        self.host.quiet(0.5)
        # One past the needed position: FlashNext with the needed position, once.
        self.host.send(p.flash_chunk(0, 2000, block[2000:3000], encoded_len=p.FLASH_BLOCK))
        self.assertEqual(self.next_position(), (0, 1000))
        self.host.send(p.flash_chunk(0, 3000, block[3000:4000], encoded_len=p.FLASH_BLOCK))
        self.host.quiet(0.5)
        # Commit before every block: NoTransfer.
        seq = self.host.send(p.flash_commit())
        self.host.expect_error("NoTransfer", request=seq)
        # Still going: the needed chunk moves on.
        self.host.send(p.flash_chunk(0, 1000, block[1000:2000], encoded_len=p.FLASH_BLOCK))
        self.assertEqual(self.next_position(), (0, 2000))
        # Abort: forgotten.
        self.host.send(p.flash_abort())
        self.host.expect("Done")
        seq = self.host.send(p.flash_chunk(0, 2000, block[2000:3000], encoded_len=p.FLASH_BLOCK))
        self.host.expect_error("NoTransfer", request=seq)

    def test_chunk_that_does_not_fit(self):
        self.begin()
        self.next_position()
        # A raw block longer than a block, and a chunk past its block's encoded length.
        seq = self.host.send(p.flash_chunk(0, 0, b"\x01" * 100, encoded_len=p.FLASH_BLOCK + 1))
        self.host.expect_error("ChunkRejected", request=seq)
        self.assertEqual(self.next_position(), (0, 0))
        seq = self.host.send(p.flash_chunk(0, 0, self.image[:100], encoded_len=50))
        self.host.expect_error("ChunkRejected", request=seq)
        self.assertEqual(self.next_position(), (0, 0))

    def test_zstd_block_that_does_not_decompress(self):
        self.begin()
        self.next_position()
        junk = bytes(range(1, 101))
        seq = self.host.send(p.flash_chunk(0, 0, junk, encoding=p.ZSTD, encoded_len=len(junk)))
        self.host.expect_error("ChunkRejected", request=seq)
        self.assertEqual(self.next_position(), (0, 0))

    def test_resume_after_a_block(self):
        self.begin()
        self.assertEqual(self.next_position(), (0, 0))
        first = blocks(self.image)[0]
        self.send_block(*first)
        self.begin()
        self.assertTrue(self.same_position(self.next_position(), (0, p.FLASH_BLOCK)))

    def test_resume_after_a_restart(self):
        # "at least every MiB and at the end": the whole image sent, the device killed and
        # started again, the same FlashBegin resumes at the end and the commit succeeds.
        self.begin()
        self.assertEqual(self.next_position(), (0, 0))
        self.send_all()
        self.dev.proc.kill()
        self.dev.proc.wait()
        self.start(*self.ARGS, slot_dir=self.slot_dir)
        hello = self.greet()
        self.assertEqual(hello.slot, "A")
        self.begin()
        last = blocks(self.image)[-1]
        self.assertTrue(self.same_position(self.next_position(), (last[0], len(last[1]))))
        self.host.send(p.flash_commit())
        self.host.expect("FlashStage", stage="Verifying", timeout=60)
        self.host.expect("FlashStage", stage="Testing", timeout=60)
        self.assertEqual(self.host.expect("FlashDone", timeout=60).slot, "B")

    def test_full_transfer_activates_slot_b(self):
        self.begin()
        self.assertEqual(self.next_position(), (0, 0))
        self.send_all()
        seq = self.host.send(p.flash_commit())
        self.host.expect("FlashStage", stage="Verifying", timeout=60)
        self.host.expect("FlashStage", stage="Testing", timeout=60)
        done = self.host.expect("FlashDone", timeout=60)
        self.assertEqual(done.slot, "B")
        self.assertEqual(done.model_hash, p.image_manifest_hash(p.tiny_image()))
        hello = self.host.greet(skip_before=False)
        self.assertEqual((hello.slot, hello.last_flash), ("B", "Activated"))
        _, events, end = self.host.chat("hi", max_tokens=3)
        self.assertNotEqual(end.reason, "Error", events)
        self.assertTrue(os.path.exists(os.path.join(self.slot_dir, "slot-b.ember")))

    def test_self_test_failed(self):
        # The manifest's self-test ends with its greedy token ids; change the last one (a
        # one-byte varint) and the header's manifest hash: a well-formed image whose
        # self-test cannot pass.
        (mlen,) = struct.unpack("<I", self.image[12:16])
        manifest = bytearray(self.image[64 : 64 + mlen])
        self.assertLess(manifest[-1], 0x7F)
        manifest[-1] += 1
        image = bytearray(self.image)
        image[64 : 64 + mlen] = manifest
        image[16:48] = hashlib.sha256(manifest).digest()
        self.image, self.sha = bytes(image), hashlib.sha256(image).digest()
        self.begin()
        self.assertEqual(self.next_position(), (0, 0))
        self.send_all()
        seq = self.host.send(p.flash_commit())
        self.host.expect("FlashStage", stage="Verifying", timeout=60)
        self.host.expect("FlashStage", stage="Testing", timeout=60)
        self.host.expect_error("SelfTestFailed", request=seq, timeout=60)
        hello = self.host.greet(skip_before=False)
        self.assertEqual((hello.slot, hello.last_flash), ("A", "SelfTestFailed"))
        _, events, end = self.host.chat("hi", max_tokens=3)
        self.assertNotEqual(end.reason, "Error", events)

    def test_hash_mismatch(self):
        self.begin(sha=bytes(32))
        self.next_position()
        self.send_all()
        seq = self.host.send(p.flash_commit())
        self.host.expect("FlashStage", stage="Verifying", timeout=60)
        self.host.expect_error("HashMismatch", request=seq, timeout=60)
        # The transfer is forgotten.
        seq = self.host.send(p.flash_commit())
        self.host.expect_error("NoTransfer", request=seq)
        hello = self.host.greet(skip_before=False)
        self.assertEqual(hello.slot, "A")

    def test_section_failing_its_hash_rejected_at_commit(self):
        # One byte of the last section changed, FlashBegin.sha256 of the changed image: the
        # whole image's hash matches, a section's does not (ImageRejected at commit).
        image = bytearray(self.image)
        image[-1] ^= 0x01
        self.image, self.sha = bytes(image), hashlib.sha256(image).digest()
        self.begin()
        self.assertEqual(self.next_position(), (0, 0))
        self.send_all()
        seq = self.host.send(p.flash_commit())
        self.host.expect("FlashStage", stage="Verifying", timeout=60)
        self.host.expect_error("ImageRejected", request=seq, timeout=60)
        hello = self.host.greet(skip_before=False)
        self.assertEqual(hello.slot, "A")
        _, events, end = self.host.chat("hi", max_tokens=3)
        self.assertNotEqual(end.reason, "Error", events)

    def test_image_rejected(self):
        bad_magic = b"NOTEMBER" + self.image[8:64]
        header_len = struct.unpack("<Q", self.image[48:56])[0]
        self.assertEqual(header_len, len(self.image))
        for name, kwargs in (
            ("magic", dict(header=bad_magic)),
            ("length", dict(image_len=len(self.image) + 1)),
            ("short header", dict(header=self.image[:40])),
            ("version", dict(header=self.image[:8] + b"\xff\x7f" + self.image[10:64])),
        ):
            with self.subTest(name):
                seq = self.begin(**kwargs)
                self.host.expect_error("ImageRejected", request=seq)
        self.alive_in_frame_mode()

    def test_image_too_large(self):
        huge = 1 << 50
        header = self.image[:48] + struct.pack("<Q", huge) + self.image[56:64]
        seq = self.begin(header=header, image_len=huge)
        self.host.expect_error("ImageTooLarge", request=seq)

    def test_flash_requests_during_a_reply(self):
        # All in the Chat's write: read while its reply runs.
        seq, data = self.host.frame_bytes(p.chat("Tell me a long story.", temperature=1.0, seed=1))
        _, begin = self.host.frame_bytes(
            p.flash_begin(len(self.image), self.sha, self.image[:64]))
        _, chunk = self.host.frame_bytes(
            p.flash_chunk(0, 0, self.image[:500], encoded_len=p.FLASH_BLOCK))
        commit, commit_frame = self.host.frame_bytes(p.flash_commit())
        _, abort = self.host.frame_bytes(p.flash_abort())
        self.line.write(data + begin + chunk + commit_frame + abort)
        events = self.host.until_end(seq)
        self.assertIn(events[-1].reason, ("Length", "Eos"), "the reply is not disturbed")
        self.host.quiet(0.3)
        others = [e for e in events if e.kind not in ("Token", "End")]
        self.assertEqual(
            [(e.kind, e.fields.get("offset"), e.fields.get("at"), e.fields.get("code"),
              e.fields.get("request")) for e in others],
            [("FlashNext", 0, 0, None, None), ("FlashNext", 0, 500, None, None),
             ("Error", None, None, "Busy", commit), ("Done", None, None, None, None)],
        )


class FlashStorage(ConformanceCase):
    SLOTS = True

    def test_storage_error(self):
        # slot-b.ember is a directory: the device cannot write the other slot.
        os.mkdir(os.path.join(self.slot_dir, "slot-b.ember"))
        self.greet()
        image = image_bytes()
        seq = self.host.send(p.flash_begin(len(image), hashlib.sha256(image).digest(), image[:64]))
        ev = self.host.next_event()
        if ev.kind == "FlashNext":
            seq = self.host.send(p.flash_chunk(0, 0, image[:1000], encoded_len=p.FLASH_BLOCK))
            ev = self.host.next_event()
        self.assertEqual((ev.kind, getattr(ev, "code", None), ev.fields.get("request")),
                         ("Error", "Storage", seq))


def ember_binary():
    return os.environ.get("EMBER") or os.path.join(p.REPO, "target", "release", "ember")


class FlashSigned(ConformanceCase):
    SLOTS = True

    def setUp(self):
        if not os.path.exists(ember_binary()):
            self.skipTest("needs `ember keygen` (EMBER)")
        d = self.make_slot_dir()
        keys = tempfile.mkdtemp(prefix="ember-conformance-keys-")
        self.addCleanup(shutil.rmtree, keys, True)
        subprocess.run([ember_binary(), "keygen", "-o", os.path.join(keys, "k")], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.keys = keys
        shutil.copy(os.path.join(keys, "k.pub"), os.path.join(d, "flash.pub"))
        self.start(*self.ARGS, slot_dir=d)

    def test_unsigned_and_wrongly_signed_refused(self):
        self.greet()
        image = image_bytes()
        sha = hashlib.sha256(image).digest()
        for sig in (None, (b"\x01" * 32, b"\x02" * 32)):
            with self.subTest(signature=sig is not None):
                seq = self.host.send(p.flash_begin(len(image), sha, image[:64], sig))
                self.host.expect_error("SignatureRejected", request=seq)

    def test_signed_image_accepted(self):
        # `ember sign` writes the signature as hex (r ‖ s) on its last line.
        self.greet()
        image = image_bytes()
        sig = os.path.join(self.keys, "image.sig")
        subprocess.run([ember_binary(), "sign", "--key", os.path.join(self.keys, "k.key"), "-o", sig,
                        p.tiny_image()], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        with open(sig) as f:
            rs = bytes.fromhex(f.read().split()[-1])
        self.assertEqual(len(rs), 64)
        sha = hashlib.sha256(image).digest()
        self.host.send(p.flash_begin(len(image), sha, image[:64], (rs[:32], rs[32:])))
        self.assertEqual((self.host.expect("FlashNext").offset, self.host.events[-1].at), (0, 0))
        # The same signature with another sha256 is refused.
        seq = self.host.send(p.flash_begin(len(image), bytes(32), image[:64], (rs[:32], rs[32:])))
        self.host.expect_error("SignatureRejected", request=seq)


if __name__ == "__main__":
    unittest.main()
