-- S1 for the peer doing Tillit's job: purpose check, consent check and an access event, in SQL.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local body = '{"query":"query($id: UUID!, $purpose: String!) { memberForPurpose(memberId: $id, '
  .. 'purpose: $purpose) { id tier points memberSince incomeBand householdSize lifestyleSegment } }",'
  .. '"variables":{"id":"%s","purpose":"personalized_offers"}}'
request = function() return wrk.format(nil, "/graphql", nil, string.format(body, random_id())) end
