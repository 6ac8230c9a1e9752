"""A load client that keeps a ledger of every answer: profile reads spread over the gateways, and
grants and withdrawals of a consent, each worker on members of its own, so that what was
acknowledged can be checked against the database afterwards. Bounded in time and loopback only.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx

READ = 'query($id: ID!) { member(id: $id, purpose: "personalized_offers") { id tier incomeBand } }'
GRANT = (
    'mutation($m: ID) { grantConsent(memberId: $m, purpose: "customer_insight", '
    'method: EXPLICIT, noticeVersion: "2026-01", channel: "hatest", evidence: "Ja takk") '
    "{ receiptId } }"
)
WITHDRAW = (
    'mutation($m: ID) { withdrawConsent(memberId: $m, purpose: "customer_insight") { withdrawn } }'
)
# A request not answered within this long counts as hung: the gateway's deadline (5 s) and a
# margin for a machine shared by two PostgreSQL nodes, etcd, two gateways and this client.
CLIENT_TIMEOUT_SECONDS = 8.0


@dataclass
class Entry:
    kind: str  # read | grant | withdraw
    started: float  # time.monotonic()
    ended: float
    status: int  # 0: no answer (transport error or client timeout)
    request_id: str
    member: str
    profile: bool = False  # a read that carried the member's profile
    receipt: str | None = None  # an acknowledged grant's receipt
    withdrawn: bool = False  # an acknowledged withdrawal that withdrew


@dataclass
class Ledger:
    gateways: list[str]
    app_key: str
    readers: list[str]  # members to read
    writers: list[list[str]]  # one list of members per consent worker
    entries: list[Entry] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, *, read_workers: int = 8, max_seconds: float = 600) -> None:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run(read_workers, max_seconds)), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=CLIENT_TIMEOUT_SECONDS + 5)

    def since(self, moment: float) -> list[Entry]:
        return [e for e in list(self.entries) if e.started >= moment]

    async def _run(self, read_workers: int, max_seconds: float) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECONDS, limits=limits) as http:
            until = time.monotonic() + max_seconds
            workers = [self._reader(http, i, until) for i in range(read_workers)]
            workers += [
                self._writer(http, i, members, until) for i, members in enumerate(self.writers)
            ]
            await asyncio.gather(*workers)

    async def _post(
        self, http: httpx.AsyncClient, worker: int, kind: str, query: str, member: str
    ) -> tuple[Entry, dict[str, object]]:
        request_id = uuid.uuid4().hex
        gateway = self.gateways[worker % len(self.gateways)]
        started = time.monotonic()
        body: dict[str, object] = {}
        try:
            response = await http.post(
                f"{gateway}/graphql",
                json={"query": query, "variables": {"id": member, "m": member}},
                headers={"Authorization": f"Bearer {self.app_key}", "X-Request-ID": request_id},
            )
            status = response.status_code
            body = response.json()
        except (httpx.TransportError, ValueError):
            status = 0
        entry = Entry(kind, started, time.monotonic(), status, request_id, member)
        self.entries.append(entry)
        return entry, body

    async def _reader(self, http: httpx.AsyncClient, worker: int, until: float) -> None:
        index = worker
        while not self._stop.is_set() and time.monotonic() < until:
            member = self.readers[index % len(self.readers)]
            index += 7
            entry, body = await self._post(http, worker, "read", READ, member)
            data = body.get("data")
            entry.profile = entry.status == 200 and isinstance(data, dict) and bool(data["member"])
            if entry.status != 200:
                await asyncio.sleep(0.05)  # as a client backs off a little

    async def _writer(
        self, http: httpx.AsyncClient, worker: int, members: list[str], until: float
    ) -> None:
        index = 0
        while not self._stop.is_set() and time.monotonic() < until:
            member = members[index % len(members)]
            index += 1
            entry, body = await self._post(http, worker, "grant", GRANT, member)
            data = body.get("data")
            if entry.status == 200 and isinstance(data, dict) and data.get("grantConsent"):
                entry.receipt = str(data["grantConsent"]["receiptId"])
            entry, body = await self._post(http, worker, "withdraw", WITHDRAW, member)
            data = body.get("data")
            if entry.status == 200 and isinstance(data, dict) and data.get("withdrawConsent"):
                entry.withdrawn = bool(data["withdrawConsent"]["withdrawn"])
            if entry.status != 200:
                await asyncio.sleep(0.05)


@dataclass
class Window:
    """What the ledger saw from a fault until the end of its phase."""

    name: str
    entries: list[Entry]
    fault_at: float
    handled_at: float  # when the HA manager had answered the fault (a new leader, say)

    @property
    def failures(self) -> list[Entry]:
        return [e for e in self.entries if e.status != 200]

    @property
    def outage_seconds(self) -> float:
        """From the first failed request's start to the last failed request's end (0: none)."""
        failed = self.failures
        return max(e.ended for e in failed) - min(e.started for e in failed) if failed else 0.0

    @property
    def back_at(self) -> float | None:
        """When the first request that succeeded after the last failure ended."""
        last_failure = max((e.ended for e in self.failures), default=self.fault_at)
        later = [e.ended for e in self.entries if e.status == 200 and e.started >= last_failure]
        return min(later) if later else None

    def summary(self) -> dict[str, object]:
        statuses = Counter(str(e.status) for e in self.failures)
        back = self.back_at
        return {
            "fault": self.name,
            "requests": len(self.entries),
            "profiles_answered": sum(e.profile for e in self.entries),
            "consent_changes_acknowledged": sum(
                1 for e in self.entries if e.kind != "read" and e.status == 200
            ),
            "outage_seconds": round(self.outage_seconds, 2),
            "statuses_during_outage": dict(statuses),
            # The HA manager's answer: a new leader, or the lost standby no longer waited for.
            "handled_after_fault_seconds": round(self.handled_at - self.fault_at, 2),
            # Service back (the first success after the last failure), after that answer.
            "back_after_seconds": round(back - self.handled_at, 2) if back is not None else None,
        }
