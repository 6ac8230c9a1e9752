"""The witness side of C2SP tlog-witness (`POST /add-checkpoint`), one test per MUST of the text.

Checkpoints are signed notes built here by hand from the C2SP texts with `cryptography`'s Ed25519,
trees and consistency proofs come from tests/tlog.py (RFC 6962 written out), and cosignatures
are checked with its verifier: nothing of the log's own code makes or checks what is sent."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from gateway.audit.remote import WitnessState
from gateway.audit.witness_server import Misconfigured, witness_app
from gateway.cli import app as cli_app
from gateway.notes import NoteKey, WitnessKey
from tests.tlog import (
    consistency_proof,
    consistent,
    cosigned,
    mth,
    note_key_id,
    open_checkpoint,
    sha256,
)

ORIGIN = "log.example/tree"
LOG = Ed25519PrivateKey.generate()
WITNESS = WitnessKey.generate("witness.example/w1")
WITNESS_PUBLIC = WITNESS.private.public_key().public_bytes_raw()
# Leaf hashes made up, and another history that differs from the third leaf on.
LEAVES = [sha256(b"\x00" + f"event {i}".encode()) for i in range(40)]
FORK = [*LEAVES[:2], *(sha256(b"\x00" + f"forged {i}".encode()) for i in range(2, 40))]


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def vkey(name: str, key: Ed25519PrivateKey) -> str:
    """C2SP signed-note verifier key: name+hex(key ID)+base64(0x01 || public key)."""
    encoded = b64(bytes([0x01]) + raw(key))
    return f"{name}+{note_key_id(name, 0x01, raw(key)).hex()}+{encoded}"


LOG_KEY = NoteKey.parse(vkey(ORIGIN, LOG))


def signature_line(name: str, key: Ed25519PrivateKey, text: str) -> str:
    signature = note_key_id(name, 0x01, raw(key)) + key.sign(text.encode())
    return f"\u2014 {name} {b64(signature)}\n"


def checkpoint(
    size: int,
    tree: Sequence[bytes] = LEAVES,
    *,
    origin: str = ORIGIN,
    signers: Sequence[Ed25519PrivateKey] = (LOG,),
    root: bytes | None = None,
) -> str:
    """C2SP tlog-checkpoint: origin, size and root lines, signed by each of `signers` under the
    origin as key name."""
    text = f"{origin}\n{size}\n{b64(mth(list(tree[:size])) if root is None else root)}\n"
    return text + "\n" + "".join(signature_line(origin, k, text) for k in signers)


def body(old: int, note: str, proof: Sequence[bytes] = ()) -> bytes:
    """tlog-witness: `old <size>`, one base64 proof hash per line, an empty line, the note."""
    return (f"old {old}\n" + "".join(f"{b64(h)}\n" for h in proof) + "\n" + note).encode()


def proof(old: int, size: int, tree: Sequence[bytes] = LEAVES) -> list[bytes]:
    return consistency_proof(old, list(tree[:size]))


class Witness:
    """A witness app on a state file, and an HTTP client of it."""

    def __init__(self, state: Path, log_keys: list[NoteKey] | None = None) -> None:
        self.state = state
        app = witness_app(WITNESS, [LOG_KEY] if log_keys is None else log_keys, state)
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://witness.test"
        )

    async def post(self, content: bytes) -> httpx.Response:
        return await self.http.post("/add-checkpoint", content=content)

    async def add(self, old: int, size: int, tree: Sequence[bytes] = LEAVES) -> httpx.Response:
        """A well-formed submission of the tree of `size`, proved from `old`."""
        hashes = proof(old, size, tree) if 0 < old < size else []
        return await self.post(body(old, checkpoint(size, tree), hashes))

    def stored(self) -> int | None:
        state = WitnessState.load(self.state)
        return None if state is None else state.size


@pytest.fixture
async def witness(tmp_path: Path) -> AsyncIterator[Witness]:
    made = Witness(tmp_path / "witness.json")
    yield made
    await made.http.aclose()


def assert_refused(response: httpx.Response, status: int) -> None:
    """An error answer: the status, a short plain reason, and no cosignature or traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert "\u2014" not in response.text
    assert "Traceback" not in response.text
    assert 0 < len(response.text) < 200


def assert_stale(response: httpx.Response, size: int) -> None:
    assert response.status_code == 409
    assert response.headers["content-type"] == "text/x.tlog.size"
    assert response.text == f"{size}\n"


# -- the proof generator against both verifiers ---------------------------------------------------


def test_the_proof_generator_agrees_with_rfc_6962_and_the_gateway() -> None:
    from gateway.audit.tree import verify_consistency

    for n in range(1, 34):
        for m in range(1, n + 1):
            hashes = proof(m, n)
            old, new = mth(LEAVES[:m]), mth(LEAVES[:n])
            assert consistent(m, n, old, new, hashes), (m, n)
            assert verify_consistency(m, n, old, new, hashes), (m, n)
    assert proof(4, 8) == [mth(LEAVES[4:8])]  # RFC 6962 2.1.3's example shapes
    assert proof(3, 7) == [LEAVES[2], LEAVES[3], mth(LEAVES[:2]), mth(LEAVES[4:7])]


# -- 200: cosigned, recorded ------------------------------------------------------------------


async def test_a_first_checkpoint_with_old_size_zero_is_cosigned(witness: Witness) -> None:
    """A witness that never cosigned this origin takes old size 0, with an empty proof; the
    answer is one or more `— ` note signature lines, cosignatures by its key on the checkpoint."""
    note = checkpoint(5)
    before = int(time.time())

    response = await witness.post(body(0, note))

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    lines = response.text.splitlines(keepends=True)
    assert lines
    assert all(ln.startswith("\u2014 ") and ln.endswith("\n") for ln in lines)
    stamped = cosigned(note + response.text, WITNESS.name, WITNESS_PUBLIC)
    assert stamped is not None
    assert before <= stamped <= int(time.time())
    # Bound to this checkpoint: it does not verify over another one.
    assert cosigned(checkpoint(6) + response.text, WITNESS.name, WITNESS_PUBLIC) is None
    assert witness.stored() == 5


@pytest.mark.parametrize(("old", "size"), [(1, 2), (4, 8), (5, 12), (7, 8), (8, 33), (6, 6)])
async def test_a_checkpoint_proved_consistent_with_the_last_cosigned_is_cosigned(
    witness: Witness, old: int, size: int
) -> None:
    """Growth with an RFC 6962 consistency proof from the old size (and the same checkpoint
    again, old size = size, same root: cosigned again)."""
    assert (await witness.add(0, old)).status_code == 200

    response = await witness.add(old, size)

    assert response.status_code == 200, response.text
    assert cosigned(checkpoint(size) + response.text, WITNESS.name, WITNESS_PUBLIC) is not None
    assert witness.stored() == size


async def test_the_submitted_checkpoint_may_carry_other_signatures(witness: Witness) -> None:
    """Several signatures: those by unknown keys (another key under the log's name, another
    witness's cosignature) are ignored; the log's own verifies."""
    stranger = Ed25519PrivateKey.generate()
    note = checkpoint(5, signers=(stranger, LOG))
    text = note.split("\n\n")[0] + "\n"
    other = WitnessKey.generate("other.example/w").cosign(text, 1).line

    response = await witness.post(body(0, note + other))

    assert response.status_code == 200, response.text
    assert cosigned(note + response.text, WITNESS.name, WITNESS_PUBLIC) is not None


# -- 409: the old size is not the size last cosigned -----------------------------------------------


async def test_an_old_size_other_than_the_last_cosigned_is_409_with_that_size(
    witness: Witness,
) -> None:
    """409, Content-Type exactly text/x.tlog.size, body the latest cosigned size and a newline;
    0 before any cosignature (a client may ask with old 0 to learn it)."""
    assert_stale(await witness.add(3, 5), 0)
    assert (await witness.add(0, 5)).status_code == 200

    assert_stale(await witness.add(0, 12), 5)
    assert_stale(await witness.add(3, 12), 5)
    assert_stale(await witness.add(8, 12), 5)
    assert witness.stored() == 5


async def test_the_same_size_with_another_root_is_409(witness: Witness) -> None:
    """A second tree of the size already cosigned: a fork, refused, the record kept."""
    assert (await witness.add(0, 5)).status_code == 200

    assert_refused(await witness.post(body(5, checkpoint(5, FORK))), 409)
    # Never cosigned: size 0 is the empty tree, whose root is SHA-256 of nothing.
    fresh = Witness(witness.state.with_name("fresh.json"))
    assert_refused(await fresh.post(body(0, checkpoint(0, root=bytes(32)))), 409)
    assert (await fresh.post(body(0, checkpoint(0)))).status_code == 200
    assert witness.stored() == 5


# -- 422: the proof --------------------------------------------------------------------------------


async def test_a_consistency_proof_that_does_not_verify_is_422(witness: Witness) -> None:
    assert (await witness.add(0, 5)).status_code == 200
    good = proof(5, 12)
    forked = body(5, checkpoint(12, FORK), proof(5, 12, FORK))
    assert forked != body(5, checkpoint(12), good)

    # The other history, with its own valid-looking proof: it does not extend what was cosigned.
    assert_refused(await witness.post(forked), 422)
    assert_refused(await witness.post(body(5, checkpoint(12), good[:-1])), 422)
    assert_refused(await witness.post(body(5, checkpoint(12), [*good, good[0]])), 422)
    assert_refused(await witness.post(body(5, checkpoint(12), good[::-1])), 422)
    assert_refused(await witness.post(body(5, checkpoint(12), [])), 422)
    # Between equal sizes the proof is empty.
    assert_refused(await witness.post(body(5, checkpoint(5), [LEAVES[0]])), 422)
    assert witness.stored() == 5


async def test_a_proof_from_old_size_zero_must_be_empty(witness: Witness) -> None:
    """The proof MUST be empty if the old size is zero: a well-formed body whose proof cannot
    be a consistency proof (RFC 6962 defines none from 0) fails as a proof, 422."""
    assert_refused(await witness.post(body(0, checkpoint(5), [LEAVES[0]])), 422)
    assert witness.stored() is None


# -- 404, 403: the log and its signature ----------------------------------------------------------


async def test_an_unknown_origin_is_404(witness: Witness) -> None:
    other = Ed25519PrivateKey.generate()
    note = checkpoint(5, origin="elsewhere.example/log", signers=(other,))

    assert_refused(await witness.post(body(0, note)), 404)
    # Signed with the watched log's key, under another origin: still not a log known here.
    assert_refused(await witness.post(body(0, checkpoint(5, origin="x.example/log"))), 404)
    assert witness.stored() is None


async def test_a_checkpoint_no_trusted_key_signed_is_403(witness: Witness) -> None:
    stranger = Ed25519PrivateKey.generate()
    note = checkpoint(5)
    text, signature = note.split("\n\n")
    name, encoded = signature.split(" ")[1:]
    damaged = bytearray(base64.b64decode(encoded))
    damaged[-1] ^= 1

    # Another key under the log's name.
    assert_refused(await witness.post(body(0, checkpoint(5, signers=(stranger,)))), 403)
    # The log's key ID with a signature that does not verify.
    forged = f"{text}\n\n\u2014 {name} {b64(bytes(damaged))}\n"
    assert_refused(await witness.post(body(0, forged)), 403)
    # Signed over another text.
    assert_refused(await witness.post(body(0, checkpoint(6)[: len(text)] + note[len(text) :])), 403)
    assert witness.stored() is None


# -- 400: sizes and malformed bodies --------------------------------------------------------------


async def test_an_old_size_above_the_checkpoint_size_is_400(witness: Witness) -> None:
    assert (await witness.add(0, 12)).status_code == 200

    assert_refused(await witness.post(body(12, checkpoint(5))), 400)
    assert witness.stored() == 12


NOTE = checkpoint(5)
HASH = b64(LEAVES[0])
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
NONCANONICAL = HASH[:-2] + _ALPHABET[_ALPHABET.index(HASH[-2]) | 1] + "="


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"old 0\n",
        b"old 0\n\n",
        ("\n" + NOTE).encode(),
        ("old 00\n\n" + NOTE).encode(),
        ("old 01\n\n" + NOTE).encode(),
        ("old -1\n\n" + NOTE).encode(),
        ("old +1\n\n" + NOTE).encode(),
        ("old 1 \n\n" + NOTE).encode(),
        ("old  1\n\n" + NOTE).encode(),
        ("old\t1\n\n" + NOTE).encode(),
        ("OLD 1\n\n" + NOTE).encode(),
        ("old 0x1\n\n" + NOTE).encode(),
        ("old \u0663\n\n" + NOTE).encode(),  # an Arabic-Indic three
        ("old 1" + "0" * 30 + "\n\n" + NOTE).encode(),
        ("old 0\r\n\r\n" + NOTE).encode(),
        ("old 0\n" + NOTE).encode(),  # no empty line before the checkpoint
        f"old 0\n{HASH}".encode(),  # no newline after a proof line
        f"old 0\n{HASH[:-4]}\n\n{NOTE}".encode(),  # not 32 bytes
        f"old 0\n{HASH}{HASH}\n\n{NOTE}".encode(),
        f"old 0\n{NONCANONICAL}\n\n{NOTE}".encode(),  # unused bits set: not canonical
        f"old 0\n{HASH} \n\n{NOTE}".encode(),
        f"old 0\n{b64(bytes(32)).replace('A', '-')}\n\n{NOTE}".encode(),
        ("old 0\n" + f"{HASH}\n" * 64 + "\n" + NOTE).encode(),  # over 63 proof lines
        ("old 0\n\n" + NOTE[:-1]).encode(),  # the note's last line unterminated
        ("old 0\n\n" + NOTE.split("\n\n")[0] + "\n").encode(),  # not signed
        ("old 0\n\n" + NOTE.replace("\n5\n", "\n\u0665\n")).encode(),  # size in other digits
        ("old 0\n\n" + NOTE.replace("\n5\n", "\n05\n")).encode(),
        ("old 0\n\n" + NOTE.replace("\n5\n", "\n\u00b2\n")).encode(),  # a superscript two
        ("old 0\n\n" + NOTE.replace("\n5\n", "\n" + "9" * 5000 + "\n")).encode(),
        b"old 0\n\n\xff\xfe",
    ],
)
async def test_a_malformed_body_is_400(witness: Witness, content: bytes) -> None:
    assert_refused(await witness.post(content), 400)
    assert witness.stored() is None


async def test_63_proof_lines_are_read_64_are_refused(witness: Witness) -> None:
    """The limit is the text's: 63 lines parse (and fail as a proof), 64 do not parse."""
    assert (await witness.add(0, 5)).status_code == 200

    assert_refused(await witness.post(body(5, checkpoint(12), [LEAVES[0]] * 63)), 422)
    assert_refused(await witness.post(body(5, checkpoint(12), [LEAVES[0]] * 64)), 400)


async def test_a_body_over_64_kib_is_413(witness: Witness) -> None:
    assert_refused(await witness.post(b"old 0\n\n" + b"x" * 70_000), 413)

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 4096

    # Without a Content-Length: counted as it arrives.
    response = await witness.http.post("/add-checkpoint", content=chunked())
    assert_refused(response, 413)


async def test_only_post_is_served(witness: Witness) -> None:
    assert (await witness.http.get("/add-checkpoint")).status_code == 405


# -- persisted before the answer; atomic check-and-record ------------------------------------------


async def test_the_checkpoint_is_recorded_before_the_answer_and_survives_a_restart(
    witness: Witness,
) -> None:
    note = checkpoint(5)
    response = await witness.post(body(0, note))

    # On disk by the time the answer arrives: the checkpoint, signed by the log and this witness.
    saved = json.loads(witness.state.read_text())
    assert (saved["origin"], saved["size"], saved["root"]) == (ORIGIN, 5, b64(mth(LEAVES[:5])))
    assert saved["log_keys"] == [LOG_KEY.vkey]
    assert open_checkpoint(saved["note"], ORIGIN, raw(LOG)) == (5, mth(LEAVES[:5]))
    assert cosigned(saved["note"], WITNESS.name, WITNESS_PUBLIC) == saved["cosigned_at"]
    assert saved["note"].endswith(response.text)

    # A new process on the same file, with no --log-key: the key pinned in the state is trusted.
    restarted = Witness(witness.state, log_keys=[])
    assert_stale(await restarted.add(0, 12), 5)
    assert_refused(await restarted.post(body(5, checkpoint(12, FORK), proof(5, 12, FORK))), 422)
    assert (await restarted.add(5, 12)).status_code == 200
    assert Witness(witness.state, log_keys=[]).stored() == 12


async def test_nothing_is_cosigned_when_the_record_cannot_be_written(
    witness: Witness, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await witness.add(0, 5)).status_code == 200

    def full_disk(self: WitnessState, path: Path) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(WitnessState, "save", full_disk)
        assert_refused(await witness.add(5, 12), 500)
    # Not recorded in memory either: the witness still expects the old size 5.
    assert_stale(await witness.add(12, 20), 5)
    assert (await witness.add(5, 12)).status_code == 200


@pytest.mark.parametrize("larger_first", [False, True])
async def test_concurrent_submissions_never_roll_the_record_back(
    witness: Witness, monkeypatch: pytest.MonkeyPatch, larger_first: bool
) -> None:
    """The text's race: A (size N) and B (size N+K) both checked against the same old size,
    then both recorded, the later record rolling back K leaves. Saving is made slow so that,
    without one lock over check and record, both would be checked before either is saved."""
    assert (await witness.add(0, 5)).status_code == 200
    saved: list[int] = []
    save = WitnessState.save

    def slow_save(self: WitnessState, path: Path) -> None:
        saved.append(self.size)
        time.sleep(0.05)
        save(self, path)

    monkeypatch.setattr(WitnessState, "save", slow_save)
    sizes = [20, 8] if larger_first else [8, 20]

    answers = await asyncio.gather(*(witness.add(5, size) for size in sizes))

    ok = [size for size, r in zip(sizes, answers, strict=True) if r.status_code == 200]
    assert len(ok) == 1, [r.status_code for r in answers]
    for r in answers:
        if r.status_code != 200:
            assert_stale(r, ok[0])
    assert saved == ok
    assert witness.stored() == ok[0]

    # Many at once from the same old size: one is recorded, the record only grows.
    many = await asyncio.gather(*(witness.add(ok[0], ok[0] + k) for k in range(1, 11)))
    assert [r.status_code for r in many].count(200) == 1
    assert saved == sorted(saved)
    assert witness.stored() == saved[-1]


# -- configuration, and the command -------------------------------------------------------------


def test_the_witness_refuses_to_start_without_one_log_to_trust(tmp_path: Path) -> None:
    state = tmp_path / "w.json"
    other = NoteKey.parse(vkey("elsewhere.example/log", Ed25519PrivateKey.generate()))

    with pytest.raises(Misconfigured, match="no log key"):
        witness_app(WITNESS, [], state)
    with pytest.raises(Misconfigured, match="several logs"):
        witness_app(WITNESS, [LOG_KEY, other], state)
    with pytest.raises(Misconfigured, match="Ed25519 signing key"):
        witness_app(WITNESS, [WITNESS.public], state)
    WitnessState(ORIGIN, [LOG_KEY.vkey], 5, mth(LEAVES[:5]), "", 0).save(state)
    with pytest.raises(Misconfigured, match="several logs"):
        witness_app(WITNESS, [other], state)


async def test_the_witness_serve_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}

    def run(app: Any, **options: Any) -> None:
        served.update(options, app=app)

    monkeypatch.setattr("uvicorn.run", run)
    # The command sets up logging for a terminal; the test process keeps its own.
    monkeypatch.setattr("gateway.logs.configure_logging", lambda *a, **k: None)
    key_file, state = tmp_path / "w.key", tmp_path / "w.json"
    key_file.write_text(WITNESS.skey + "\n")
    runner = CliRunner()
    args = ["audit", "witness-serve", "--key", str(key_file), "--state", str(state)]

    refused = runner.invoke(cli_app, args)
    assert refused.exit_code == 2
    assert "no log key" in refused.output
    result = runner.invoke(cli_app, [*args, "--log-key", LOG_KEY.vkey, "--port", "7999"])

    assert result.exit_code == 0, result.output
    assert (served["host"], served["port"]) == ("127.0.0.1", 7999)
    transport = httpx.ASGITransport(app=served["app"])
    async with httpx.AsyncClient(transport=transport, base_url="http://w.test") as http:
        response = await http.post("/add-checkpoint", content=body(0, checkpoint(5)))
    assert response.status_code == 200
    assert cosigned(checkpoint(5) + response.text, WITNESS.name, WITNESS_PUBLIC) is not None
    # Restarted with no --log-key: the key is pinned in the state file.
    assert runner.invoke(cli_app, args).exit_code == 0
