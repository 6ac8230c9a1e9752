-- S1: member(id, purpose) with 3 base and 3 enriched fields, a random member each time.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local body = '{"query":"query($id: ID!, $purpose: String!) { member(id: $id, purpose: $purpose) '
  .. '{ id tier points memberSince incomeBand householdSize lifestyleSegment } }",'
  .. '"variables":{"id":"%s","purpose":"personalized_offers"}}'
request = function() return wrk.format(nil, "/graphql", nil, string.format(body, random_id())) end
