-- S1 for the peer over a plain view: the six fields of one random member, no purpose, no audit.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local body = '{"query":"query($id: UUID!) { memberViewById(id: $id) '
  .. '{ id tier points memberSince incomeBand householdSize lifestyleSegment } }",'
  .. '"variables":{"id":"%s"}}'
request = function() return wrk.format(nil, "/graphql", nil, string.format(body, random_id())) end
