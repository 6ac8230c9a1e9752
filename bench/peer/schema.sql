-- The peer's two ways of serving S1 over the benchmark database (see bench/peer.py).
-- Applied by the database's owner; PostGraphile connects as the gateway's login, like Tillit.
DROP SCHEMA IF EXISTS bench_peer CASCADE;
CREATE SCHEMA bench_peer;
GRANT USAGE ON SCHEMA bench_peer TO tillit_gateway;

-- 1. A plain view of the six fields: no purpose, no consent check, no audit.
CREATE VIEW bench_peer.member_view AS
SELECT m.id, m.tier, m.points, m.member_since,
       e.income_band, e.household_size, e.lifestyle_segment
FROM public.members m
LEFT JOIN LATERAL (
    SELECT max(value #>> '{}') FILTER (WHERE field = 'income_band') AS income_band,
           max((value #>> '{}')::int) FILTER (WHERE field = 'household_size') AS household_size,
           max(value #>> '{}') FILTER (WHERE field = 'lifestyle_segment') AS lifestyle_segment
    FROM public.enrichment_records WHERE member_id = m.id
) e ON true;
COMMENT ON VIEW bench_peer.member_view IS E'@primaryKey id';
GRANT SELECT ON bench_peer.member_view TO tillit_gateway;

-- 2. The same job as Tillit's `member(id, purpose)`: the client (a verified JWT claim) must be
-- allowed the purpose, whose fields (personalized_offers rests on consent: all six) are released
-- only under a valid consent for it, and an access event is inserted in the request's
-- transaction, which commits before the answer.
CREATE TYPE bench_peer.released_member AS (
    id uuid, tier text, points integer, member_since date,
    income_band text, household_size integer, lifestyle_segment text
);

CREATE FUNCTION bench_peer.record_access(
    client uuid, member uuid, purpose text, outcome text, released text[], withheld jsonb,
    consent uuid
) RETURNS void LANGUAGE sql VOLATILE AS $$
    INSERT INTO public.access_events (request_id, operation, actor_kind, client_id, member_id,
        purpose, legal_basis, outcome, fields_requested, fields_released, fields_withheld,
        consent_ids)
    VALUES (gen_random_uuid()::text, 'member', 'CLIENT', client, member, purpose, 'CONSENT',
        outcome, ARRAY['tier', 'points', 'member_since', 'income_band', 'household_size',
        'lifestyle_segment'], released, withheld,
        CASE WHEN consent IS NULL THEN '{}'::uuid[] ELSE ARRAY[consent] END)
$$;
COMMENT ON FUNCTION bench_peer.record_access(uuid, uuid, text, text, text[], jsonb, uuid) IS E'@omit';

CREATE FUNCTION bench_peer.member_for_purpose(member_id uuid, purpose text)
RETURNS bench_peer.released_member LANGUAGE plpgsql STABLE AS $$
DECLARE
    client uuid := nullif(current_setting('jwt.claims.client_id', true), '')::uuid;
    consent uuid;
    found bench_peer.released_member;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.client_purposes cp
                   WHERE cp.client_id = client AND cp.purpose_key = purpose) THEN
        RAISE EXCEPTION 'purpose not permitted' USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT c.id INTO consent FROM public.consent_states c
    WHERE c.member_id = member_for_purpose.member_id AND c.purpose_key = purpose
      AND c.kind = 'GRANTED' AND (c.expires_at IS NULL OR c.expires_at > now());
    SELECT v.id,
           CASE WHEN consent IS NOT NULL THEN v.tier END,
           CASE WHEN consent IS NOT NULL THEN v.points END,
           CASE WHEN consent IS NOT NULL THEN v.member_since END,
           CASE WHEN consent IS NOT NULL THEN v.income_band END,
           CASE WHEN consent IS NOT NULL THEN v.household_size END,
           CASE WHEN consent IS NOT NULL THEN v.lifestyle_segment END
    INTO found FROM bench_peer.member_view v WHERE v.id = member_for_purpose.member_id;
    IF found.id IS NULL THEN
        PERFORM bench_peer.record_access(client, member_id, purpose, 'NOT_FOUND', '{}', '{}', NULL);
        RETURN NULL;
    END IF;
    IF consent IS NULL THEN
        PERFORM bench_peer.record_access(client, member_id, purpose, 'DENIED', '{}',
            '{"tier": "CONSENT_REQUIRED", "points": "CONSENT_REQUIRED",
              "member_since": "CONSENT_REQUIRED", "income_band": "CONSENT_REQUIRED",
              "household_size": "CONSENT_REQUIRED", "lifestyle_segment": "CONSENT_REQUIRED"}',
            NULL);
    ELSE
        PERFORM bench_peer.record_access(client, member_id, purpose, 'RELEASED',
            ARRAY['tier', 'points', 'member_since', 'income_band', 'household_size',
                  'lifestyle_segment'], '{}', consent);
    END IF;
    RETURN found;
END $$;
