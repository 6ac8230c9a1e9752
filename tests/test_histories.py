"""Random concurrent histories of members' lives through two gateway processes, checked after each.

Jepsen's way, counted rather than timed: each history enrols a handful of members, then sends a
random mix of enrol, grant, withdraw, object, lift, update, enrich, cleanse, leave and erase at
them all at once, spread over two gateway processes, and checks afterwards that

- nothing answered 5xx or INTERNAL_SERVER_ERROR;
- every answered change has its access event (by request id) and its effect in the database;
- no closed or erased member has a consent in force, an enriched value, or a grant after closing;
- every enriched value is covered by a consent in force;
- nothing of an erased member's personal data remains in any table.

After the last history the log is sealed and `tillit audit verify` must pass. `make test` runs
TILLIT_HISTORIES (default 40) histories; set it higher by hand for the longer form. A failure
names the history's seed: TILLIT_HISTORY_SEED=<seed> TILLIT_HISTORIES=1 runs it alone.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
import os
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from bench.loadtest import Gateway, World, fresh_database, prepare, tillit_cli
from gateway.access.auth import mint_member_token
from gateway.access.clients import create_client
from gateway.access.purposes import read_policy_file
from gateway.domain import Capability, LegalBasis, Role
from gateway.settings import Settings
from gateway.store import db as gateway_db
from gateway.store.db import asyncpg_dsn

HISTORIES = int(os.environ.get("TILLIT_HISTORIES", "40"))
FIRST_SEED = int(os.environ.get("TILLIT_HISTORY_SEED", "0")) or random.randrange(1, 10**9)
MEMBERS = 3
OPERATIONS = (6, 14)  # operations a history sends at once, at least and at most
LOG = Path(__file__).resolve().parent.parent / "bench" / "results" / "test-histories.log"

POLICY = {p.key: p for p in read_policy_file()}
OFFERS = POLICY["personalized_offers"].sign_up_wording
INSIGHT = POLICY["customer_insight"].sign_up_wording
assert OFFERS is not None
assert INSIGHT is not None
# The codes a refusal may carry in these histories: each is an answer, none a failure.
EXPECTED_CODES = {
    "NOT_FOUND",
    "MEMBERSHIP_INACTIVE",
    "ALREADY_MEMBER",
    "CONSENT_REQUIRED",
    "CONSENT_WITHDRAWN",
    "CONSENT_EXPIRED",
    "OBJECTED",
    "CONFIRMATION_REQUIRED",
    "CONFLICT",
}

ENROLL = """
mutation($member: NewMemberInput!, $consents: [SignUpConsentInput!]) {
  enrollMember(member: $member, termsVersion: "2026-01", channel: "web-signup",
               consents: $consents, purpose: "membership_service") {
    memberId receipts { receiptId purpose }
  }
}
"""
GRANT = """
mutation($member: ID, $purpose: String!, $method: ConsentMethod!, $evidence: String!) {
  grantConsent(memberId: $member, purpose: $purpose, method: $method, noticeVersion: "2026-01",
               channel: "app", evidence: $evidence) { receiptId }
}
"""
WITHDRAW = """
mutation($member: ID, $purpose: String!) {
  withdrawConsent(memberId: $member, purpose: $purpose) { withdrawn eventId }
}
"""
OBJECT = 'mutation { objectToProcessing(purpose: "data_quality") { objectedAt } }'
LIFT = 'mutation { withdrawObjection(purpose: "data_quality") { lifted } }'
UPDATE = (
    "mutation($changes: ProfileChangesInput!) { updateMyProfile(changes: $changes) { changed } }"
)
ENRICH = """
mutation($member: ID!, $band: String!) {
  recordEnrichment(memberId: $member, purpose: "personalized_offers", source: "Broker",
                   values: { incomeBand: $band }) { written }
}
"""
CLEANSE = """
mutation($member: ID!, $city: String!) {
  recordCleansing(memberId: $member, field: "city", newValue: $city, source: "Register",
                  purpose: "data_quality") { changed recordId }
}
"""
LEAVE = "mutation { leaveClub { closed } }"
ERASE = "mutation($email: String!) { eraseMe(confirmEmail: $email) { receiptId } }"


@dataclass
class Cluster:
    world: World
    url: str  # the superuser's, for the checks
    app_key: str
    gateways: list[Gateway]
    secret: str


@dataclass
class Person:
    """A member of one history: who they are, so that their erasure can be looked for."""

    id: str
    email: str
    first_name: str
    last_name: str
    token: str


@dataclass
class Sent:
    name: str
    person: Person | None
    request_id: str
    status: int = 0
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> dict[str, Any] | None:
        data = self.body.get("data") or {}
        value = next(iter(data.values()), None) if data else None
        return value if isinstance(value, dict) else None

    @property
    def codes(self) -> list[str]:
        return [str(e.get("extensions", {}).get("code")) for e in self.body.get("errors", [])]


@pytest.fixture(scope="module")
async def cluster(server_url: str) -> AsyncIterator[Cluster]:
    name = f"tillit_hist_{uuid.uuid4().hex[:10]}"
    url = await fresh_database(server_url, name)
    world = await prepare(url, members=0)
    engine = gateway_db.create_engine(url, Settings(dev=True), pool_size=1)
    try:
        async with engine.begin() as connection:
            app = await create_client(
                connection,
                name="histories-app",
                role=Role.APP,
                purposes=[
                    "membership_service",
                    "personalized_offers",
                    "customer_insight",
                    "data_quality",
                ],
                capabilities=[
                    Capability.ENROLL,
                    Capability.CAPTURE_CONSENT,
                    Capability.ENRICH,
                    Capability.CLEANSE,
                ],
            )
    finally:
        await engine.dispose()
    LOG.parent.mkdir(exist_ok=True)
    env = {**world.env, "TILLIT_RATE_LIMIT_PER_SECOND": "0"}
    gateways = [Gateway(env, workers=1, log=LOG) for _ in range(2)]
    try:
        yield Cluster(world, url, app.key, gateways, world.env["TILLIT_MEMBER_TOKEN_SECRET"])
    finally:
        for gateway in gateways:
            gateway.stop()
        admin = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class History:
    def __init__(self, cluster: Cluster, http: httpx.AsyncClient, seed: int) -> None:
        self.cluster = cluster
        self.http = http
        self.seed = seed
        self.random = random.Random(seed)
        self.sent: list[Sent] = []
        self.people: list[Person] = []

    async def send(
        self, name: str, person: Person | None, query: str, variables: dict[str, Any], token: str
    ) -> Sent:
        sent = Sent(name, person, f"h{self.seed}-{len(self.sent)}")
        self.sent.append(sent)
        gateway = self.random.choice(self.cluster.gateways)
        response = await self.http.post(
            f"{gateway.url}/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": sent.request_id},
        )
        sent.status = response.status_code
        sent.body = response.json()
        return sent

    def new_member(self) -> dict[str, Any]:
        tag = uuid.uuid4().hex[:12]
        return {
            "firstName": f"Fornavn{tag}",
            "lastName": f"Etternavn{tag}",
            "email": f"h{tag}@example.no",
            "phone": "+4791234567",
            "street": f"Gate{tag} 1",
            "postalCode": "0150",
            "city": "Oslo",
            "country": "NO",
        }

    def sign_up_consents(self) -> list[dict[str, Any]]:
        chosen = []
        if self.random.random() < 0.6:
            chosen.append(
                {
                    "purpose": "personalized_offers",
                    "method": "EXPLICIT",
                    "noticeVersion": "2026-01",
                    "evidence": OFFERS.nb,  # type: ignore[union-attr]
                }
            )
        if self.random.random() < 0.6:
            chosen.append(
                {
                    "purpose": "customer_insight",
                    "method": "CONDITIONAL",
                    "noticeVersion": "2026-01",
                    "evidenceSha256": hashlib.sha256(INSIGHT.en.encode()).hexdigest(),  # type: ignore[union-attr]
                }
            )
        return chosen

    async def enrol(self, member: dict[str, Any]) -> Sent:
        return await self.send(
            "enrol",
            None,
            ENROLL,
            {"member": member, "consents": self.sign_up_consents()},
            self.cluster.app_key,
        )

    async def run(self) -> None:
        for _ in range(MEMBERS):
            member = self.new_member()
            sent = await self.enrol(member)
            assert sent.answer is not None, (self.seed, sent.body)
            member_id = sent.answer["memberId"]
            token = mint_member_token(
                uuid.UUID(member_id), self.cluster.secret, dt.timedelta(hours=1)
            )
            self.people.append(
                Person(member_id, member["email"], member["firstName"], member["lastName"], token)
            )
            sent.person = self.people[-1]
        count = self.random.randint(*OPERATIONS)
        await asyncio.gather(*(self.operation() for _ in range(count)))

    async def operation(self) -> Sent:
        person = self.random.choice(self.people)
        app, me = self.cluster.app_key, person.token
        kind = self.random.choice(
            [
                "grant",
                "grant_by_app",
                "withdraw",
                "withdraw_insight",
                "object",
                "lift",
                "update",
                "update_email",
                "enrich",
                "cleanse",
                "leave",
                "erase",
                "enrol_twin",
            ]
        )
        if kind == "grant":
            variables = {
                "member": None,
                "purpose": "personalized_offers",
                "method": "EXPLICIT",
                "evidence": "Ja takk",
            }
            return await self.send(kind, person, GRANT, variables, me)
        if kind == "grant_by_app":
            variables = {
                "member": person.id,
                "purpose": "customer_insight",
                "method": "CONDITIONAL",
                "evidence": "Vilkår",
            }
            return await self.send(kind, person, GRANT, variables, app)
        if kind == "withdraw":
            variables = {"member": None, "purpose": "personalized_offers"}
            return await self.send(kind, person, WITHDRAW, variables, me)
        if kind == "withdraw_insight":
            variables = {"member": None, "purpose": "customer_insight"}
            return await self.send(kind, person, WITHDRAW, variables, me)
        if kind == "object":
            return await self.send(kind, person, OBJECT, {}, me)
        if kind == "lift":
            return await self.send(kind, person, LIFT, {}, me)
        if kind == "update":
            changes = {"phone": f"+479{self.random.randrange(10**7):07d}"}
            return await self.send(kind, person, UPDATE, {"changes": changes}, me)
        if kind == "update_email":
            # One address the members of a history race for: one may have it.
            changes = {"email": f"shared{self.seed}@example.no"}
            return await self.send(kind, person, UPDATE, {"changes": changes}, me)
        if kind == "enrich":
            variables = {"member": person.id, "band": self.random.choice(["250-500k", "500-750k"])}
            return await self.send(kind, person, ENRICH, variables, app)
        if kind == "cleanse":
            variables = {"member": person.id, "city": self.random.choice(["Bergen", "Tromsø"])}
            return await self.send(kind, person, CLEANSE, variables, app)
        if kind == "leave":
            return await self.send(kind, person, LEAVE, {}, me)
        if kind == "erase":
            return await self.send(kind, person, ERASE, {"email": person.email}, me)
        # Two sign-ups racing for one new address: one member, one ALREADY_MEMBER.
        member = self.new_member()
        member["email"] = f"twin{self.seed}@example.no"
        return await self.enrol(member)


CATEGORIES_OF = {
    key: {c.value for c in p.categories}
    for key, p in POLICY.items()
    if p.legal_basis is LegalBasis.CONSENT
}
IN_FORCE = (
    "SELECT member_id, purpose_key, occurred_at FROM consent_states "
    "WHERE member_id = ANY($1::uuid[]) AND kind = 'GRANTED' AND expires_at > now()"
)


async def check(connection: asyncpg.Connection, history: History) -> list[str]:
    """What this history broke, in words; empty when every invariant holds."""
    broken: list[str] = []
    sent = history.sent
    for s in sent:
        if s.status >= 500 or "INTERNAL_SERVER_ERROR" in s.codes:
            broken.append(f"{s.request_id} {s.name} answered {s.status}: {s.body}")
        elif unexpected := set(s.codes) - EXPECTED_CODES:
            broken.append(f"{s.request_id} {s.name} answered {sorted(unexpected)}: {s.body}")
    ids = [uuid.UUID(p.id) for p in history.people]
    members = {
        r["id"]: r
        for r in await connection.fetch(
            "SELECT id, membership_status, closed_at FROM members WHERE id = ANY($1::uuid[])", ids
        )
    }
    erased = {
        r["member_id"]
        for r in await connection.fetch(
            "SELECT member_id FROM erasures WHERE member_id = ANY($1::uuid[])", ids
        )
    }
    in_force = collections.defaultdict(dict)
    for r in await connection.fetch(IN_FORCE, ids):
        in_force[r["member_id"]][r["purpose_key"]] = r["occurred_at"]
    enriched = collections.defaultdict(list)
    for r in await connection.fetch(
        "SELECT member_id, field, category FROM enrichment_records "
        "WHERE member_id = ANY($1::uuid[])",
        ids,
    ):
        enriched[r["member_id"]].append(r)

    # Every answered change has its access event and its effect.
    audited = {
        r["request_id"]
        for r in await connection.fetch(
            "SELECT DISTINCT request_id FROM access_events WHERE request_id = ANY($1::text[])",
            [s.request_id for s in sent],
        )
    }
    for s in sent:
        answer = s.answer
        if answer is None or s.status != 200:
            continue
        if s.request_id not in audited:
            broken.append(f"{s.request_id} {s.name} answered without its access event")
        member = uuid.UUID(s.person.id) if s.person else None
        if s.name in ("grant", "grant_by_app"):
            found = await connection.fetchval(
                "SELECT count(*) FROM consent_events WHERE id = $1", uuid.UUID(answer["receiptId"])
            )
            if not found:
                broken.append(f"{s.request_id} granted a consent that is not stored")
        elif s.name == "erase" and member not in erased:
            broken.append(f"{s.request_id} answered an erasure that is not recorded")
        elif s.name == "leave" and member in members:
            if members[member]["membership_status"] != "CLOSED":
                broken.append(f"{s.request_id} answered a closing of a member still active")
        elif s.name == "cleanse" and answer["changed"] and member in members:
            found = await connection.fetchval(
                "SELECT count(*) FROM cleansing_records WHERE id = $1",
                uuid.UUID(answer["recordId"]),
            )
            if not found:
                broken.append(f"{s.request_id} answered a cleansing that is not stored")

    for person in history.people:
        member_id = uuid.UUID(person.id)
        row = members.get(member_id)
        gone = row is None
        if gone and member_id not in erased:
            broken.append(f"member {person.id} vanished without an erasure")
        if not gone and member_id in erased:
            broken.append(f"member {person.id} erased but still there")
        closed = gone or row["membership_status"] == "CLOSED"
        if closed and in_force[member_id]:
            broken.append(f"member {person.id} closed or erased with {in_force[member_id]}")
        if closed and enriched[member_id]:
            broken.append(f"member {person.id} closed or erased with enriched values")
        if not gone and row["closed_at"] is not None:
            later = await connection.fetchval(
                "SELECT count(*) FROM consent_events WHERE member_id = $1 AND kind = 'GRANTED' "
                "AND occurred_at > $2",
                member_id,
                row["closed_at"],
            )
            if later:
                broken.append(f"member {person.id} was granted a consent after closing")
        for record in enriched[member_id]:
            covering = [
                key
                for key in in_force[member_id]
                if record["category"] in CATEGORIES_OF.get(key, set())
            ]
            if not covering:
                broken.append(f"member {person.id} keeps {record['field']} without a consent")
        if gone:
            for table in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ):
                name = table["tablename"]
                for needle in (person.email, person.first_name, person.last_name):
                    hits = await connection.fetchval(
                        f'SELECT count(*) FROM "{name}" t WHERE t::text LIKE $1',
                        f"%{needle}%",
                    )
                    if hits:
                        broken.append(f"erased member {person.id}: {needle!r} left in {name}")
    return broken


@pytest.mark.timeout(1800)
async def test_random_concurrent_histories_keep_every_invariant(cluster: Cluster) -> None:
    outcomes: collections.Counter[str] = collections.Counter()
    connection = await asyncpg.connect(asyncpg_dsn(cluster.url))
    try:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            for n in range(HISTORIES):
                history = History(cluster, http, FIRST_SEED + n)
                await history.run()
                broken = await check(connection, history)
                assert not broken, f"history seed {history.seed}: " + "; ".join(broken[:10])
                for s in history.sent:
                    outcomes[f"{s.name}:{(s.codes or ['ok'])[0]}"] += 1
    finally:
        await connection.close()

    sealed = tillit_cli(cluster.world.env, "audit", "seal")
    verified = tillit_cli(cluster.world.env, "audit", "verify")
    assert sealed.returncode == 0, sealed.stderr
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # The histories did reach the orders that matter: erasures, closings and refusals among them.
    assert outcomes["erase:ok"] > 0
    assert outcomes["leave:ok"] > 0
    assert sum(v for k, v in outcomes.items() if k.endswith(":NOT_FOUND")) > 0
    print(f"{HISTORIES} histories from seed {FIRST_SEED}:", dict(sorted(outcomes.items())))
