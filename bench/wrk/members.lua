-- S2: members(ids, purpose) with 100 random members.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local head = '{"query":"query($ids: [ID!]!, $purpose: String!) { members(ids: $ids, purpose: $purpose) '
  .. '{ id tier points memberSince incomeBand householdSize lifestyleSegment } }",'
  .. '"variables":{"purpose":"personalized_offers","ids":["'
request = function()
  local chosen, seen = {}, {}
  while #chosen < 100 do
    local id = random_id()
    if not seen[id] then seen[id] = true; chosen[#chosen + 1] = id end
  end
  return wrk.format(nil, "/graphql", nil, head .. table.concat(chosen, '","') .. '"]}}')
end
