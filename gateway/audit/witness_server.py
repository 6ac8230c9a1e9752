"""The witness side of C2SP tlog-witness: an HTTP endpoint a log pushes `add-checkpoint` to, which
cosigns a checkpoint only if it extends, append-only, the last one this witness cosigned for that
log, and records it before answering.

The pull form (gateway/audit/remote.py's `witness_once`) asks a Tillit gateway for its checkpoint
and proofs; this form is asked by the log (Tillit's or any log speaking the protocol) and checks
what it is sent. Both keep the same state file, a `WitnessState`, so a witness can move from one
form to the other, though not run both on one file at once. One log per witness: the state file
holds one origin.

Served by `tillit audit witness-serve`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.audit.remote import WitnessState
from gateway.audit.tree import EMPTY_ROOT, HASH_SIZE, verify_consistency
from gateway.notes import ED25519, Note, NoteError, NoteKey, TreeHead, WitnessKey, open_checkpoint

log = structlog.get_logger("tillit.witness")

MAX_BODY_BYTES = 64 * 1024
# tlog-witness: "The client MUST NOT send more than 63 consistency proof lines" (a proof in a tree
# of up to 2^64 leaves has at most 2 * 64 - 1 hashes in theory, 63 in practice for 2^63).
MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"
# ASCII digits only (`\d` would take any Unicode digit); 20 digits hold any 64-bit size, and the
# bound keeps int() far from Python's limit on long decimal strings.
_DECIMAL = r"(0|[1-9][0-9]{0,19})"
_OLD_LINE = re.compile(f"old {_DECIMAL}")
_SIZE_LINE = re.compile(_DECIMAL)


class Misconfigured(ValueError):
    """The witness cannot start: its keys and state file do not name one log it can check."""


class Rejected(Exception):
    """A request the witness answers with an error status; the message is the short reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Stale(Exception):
    """The client's old size is not the size last cosigned: a 409 carrying that size."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


@dataclass(frozen=True)
class Submission:
    """A parsed add-checkpoint body: the old size, the proof hashes and the checkpoint note."""

    old: int
    proof: list[bytes]
    note: str


@dataclass(frozen=True)
class Opened:
    """A submission whose checkpoint was signed by the watched log."""

    old: int
    proof: list[bytes]
    head: TreeHead
    note: Note


# -- the request body ---------------------------------------------------------------------------


def parse_body(body: bytes) -> Submission:
    """The old size line, the proof lines and the blank line, each checked to the letter of the
    text, then the rest as the checkpoint (parsed later, after its origin is known)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(400, "the body is not UTF-8") from None
    head, separator, note = text.partition("\n")
    found = _OLD_LINE.fullmatch(head)
    if not separator or found is None:
        raise Rejected(400, "the body must start with `old <size>` and a newline")
    proof: list[bytes] = []
    while True:
        line, separator, note = note.partition("\n")
        if not separator:
            raise Rejected(400, "no empty line between the proof and the checkpoint")
        if line == "":
            break
        if len(proof) == MAX_PROOF_LINES:
            raise Rejected(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
        proof.append(_proof_hash(line))
    return Submission(int(found.group(1)), proof, note)


def _proof_hash(line: str) -> bytes:
    """One proof line: the canonical base64 of a SHA-256 hash (one spelling per hash)."""
    try:
        value = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected(400, "a consistency proof line is not base64") from None
    if len(value) != HASH_SIZE or base64.b64encode(value).decode() != line:
        raise Rejected(400, "a consistency proof line is not the base64 of a 32-byte hash")
    return value


def open_submission(submission: Submission, origin: str, keys: list[NoteKey]) -> Opened:
    """The checkpoint's form (400), its origin (404), the log's signature (403) and the sizes
    (400), in the order the text states them."""
    try:
        note = Note.parse(submission.note)
        head = TreeHead.parse_body(note.text)
    except ValueError as exc:  # NoteError, or int() of a size in digits that are not ASCII
        raise Rejected(400, f"not a checkpoint: {exc}") from None
    if _SIZE_LINE.fullmatch(note.text.split("\n")[1]) is None:
        raise Rejected(400, "not a checkpoint: the size is not an ASCII decimal")
    if head.origin != origin:
        raise Rejected(404, "this witness does not know the log of that origin")
    try:
        # Signatures by keys not trusted here are skipped; one by a trusted key that fails
        # refuses the note, as a checkpoint with a forged line of the log's is not the log's.
        open_checkpoint(submission.note, keys)
    except NoteError as exc:
        raise Rejected(403, f"no signature by a trusted key of the log verifies: {exc}") from None
    if submission.old > head.size:
        raise Rejected(400, "the old size is larger than the checkpoint's size")
    return Opened(submission.old, submission.proof, head, note)


# -- the checks against what was cosigned -------------------------------------------------------


def check_growth(opened: Opened, state: WitnessState | None) -> None:
    """Stale old size (409 with the size), same size with another root (409), a proof that does
    not show the new tree extends the cosigned one (422)."""
    # Never cosigned is the empty tree: size 0, whose RFC 6962 root is SHA-256 of nothing.
    size, root = (0, EMPTY_ROOT) if state is None else (state.size, state.root)
    head = opened.head
    if opened.old != size:
        raise Stale(size)
    if head.size == size:
        # Before the proof: a same-size proof is empty and "fails" on any other root, but the
        # text answers this case, a fork, with 409.
        if head.root != root:
            raise Rejected(409, "a different tree of this size was cosigned: the log forked")
        if opened.proof:
            raise Rejected(422, "the consistency proof between equal sizes must be empty")
        return
    if size == 0:
        # Every tree extends the empty one; a proof from it is not defined, so any is wrong.
        if opened.proof:
            raise Rejected(422, "the consistency proof from size 0 must be empty")
        return
    if not verify_consistency(size, head.size, root, head.root, opened.proof):
        raise Rejected(422, "the consistency proof does not verify")


# -- the app --------------------------------------------------------------------------------------


class Witness:
    """One witness key watching one log; the lock makes check-and-record one step, so two
    submissions checked against the same size cannot both be recorded (the later record would
    roll the first back)."""

    def __init__(self, key: WitnessKey, log_keys: list[NoteKey], state_path: Path) -> None:
        self.key = key
        self.state_path = state_path
        self.state = WitnessState.load(state_path)
        self.log_keys = _trusted(log_keys, self.state)
        self.origin = self.log_keys[0].name
        self.lock = asyncio.Lock()

    async def add_checkpoint(self, body: bytes) -> str:
        """The cosignature lines for the checkpoint in `body`, once it is recorded."""
        opened = open_submission(parse_body(body), self.origin, self.log_keys)
        async with self.lock:
            check_growth(opened, self.state)
            timestamp = int(time.time())
            cosignature = self.key.cosign(opened.note.text, timestamp)
            state = self._next_state(opened, cosignature.line, timestamp)
            previous = self.state
            # In a thread: the fsync must not stall the loop, and the lock still holds everyone
            # else out until the record is on disk.
            await asyncio.to_thread(self._record, state)
        log.info(
            "witness_cosigned",
            origin=self.origin,
            size=opened.head.size,
            previous=None if previous is None else previous.size,
        )
        return cosignature.line

    def _record(self, state: WitnessState) -> None:
        # The memory follows the file in the same thread, so that a request cancelled while
        # saving (at shutdown) cannot leave the two disagreeing.
        state.save(self.state_path)
        self.state = state

    def _next_state(self, opened: Opened, line: str, timestamp: int) -> WitnessState:
        # The log's signatures and this witness's only, as the pull form records them.
        signed = [s for k in self.log_keys for s in opened.note.by(k)]
        note = Note(opened.note.text, tuple(signed)).render() + line
        vkeys = sorted(k.vkey for k in self.log_keys)
        return WitnessState(self.origin, vkeys, opened.head.size, opened.head.root, note, timestamp)


def _trusted(log_keys: list[NoteKey], state: WitnessState | None) -> list[NoteKey]:
    """The log keys given and those pinned in the state file, which must all be one log's
    Ed25519 keys (the origin is the key name)."""
    try:
        pinned = [] if state is None else [NoteKey.parse(v) for v in state.log_keys]
    except NoteError as exc:
        raise Misconfigured(f"a log key pinned in the state file is not a vkey: {exc}") from None
    keys = list(dict.fromkeys([*log_keys, *pinned]))
    if not keys:
        raise Misconfigured("no log key to trust: give --log-key (then it is pinned in the state)")
    if any(k.kind != ED25519 for k in keys):
        raise Misconfigured("a log key must be an Ed25519 signing key (type 0x01)")
    origins = {k.name for k in keys} | ({state.origin} if state is not None else set())
    if len(origins) != 1:
        named = ", ".join(sorted(origins))
        raise Misconfigured(f"the log keys and the state file name several logs: {named}")
    return keys


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Rejected(413, "the body is too large")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise Rejected(413, "the body is too large")
        chunks.append(chunk)
    return b"".join(chunks)


def witness_app(key: WitnessKey, log_keys: list[NoteKey], state_path: Path) -> Starlette:
    """The witness's HTTP app, `POST /add-checkpoint` only. Raises Misconfigured (and
    remote.Refused for an unreadable state file) before serving anything."""
    witness = Witness(key, log_keys, state_path)

    async def add_checkpoint(request: Request) -> Response:
        try:
            lines = await witness.add_checkpoint(await _read_body(request))
        except Stale as stale:
            # Exactly this Content-Type: Starlette would append a charset to a text/ type.
            headers = {"content-type": SIZE_CONTENT_TYPE}
            return Response(f"{stale.size}\n", 409, headers=headers)
        except Rejected as rejected:
            if rejected.status in (409, 422):
                # A fork or a bad proof from a trusted log is what a witness is for: say so.
                log.warning("witness_refused", origin=witness.origin, reason=str(rejected))
            return PlainTextResponse(f"{rejected}\n", rejected.status)
        except ClientDisconnect:
            return PlainTextResponse("", 400)
        except OSError as exc:
            log.error("witness_state_not_saved", error=type(exc).__name__)
            return PlainTextResponse("the witness could not record the checkpoint\n", 500)
        return PlainTextResponse(lines)

    return Starlette(routes=[Route("/add-checkpoint", add_checkpoint, methods=["POST"])])
