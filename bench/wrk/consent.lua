-- S3: grantConsent then withdrawConsent, by an app capturing consent for random members.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local grant = '{"query":"mutation($m: ID!) { grantConsent(memberId: $m, purpose: \\"customer_insight\\", '
  .. 'method: CONDITIONAL, noticeVersion: \\"2026-01\\", channel: \\"bench\\", evidence: \\"bench\\") '
  .. '{ receiptId } }","variables":{"m":"%s"}}'
local withdraw = '{"query":"mutation($m: ID!) { withdrawConsent(memberId: $m, '
  .. 'purpose: \\"customer_insight\\") { withdrawn } }","variables":{"m":"%s"}}'
local granted, turn = {}, 0
request = function()
  turn = turn + 1
  if turn % 2 == 1 or #granted == 0 then
    local id = random_id()
    granted[#granted + 1] = id
    return wrk.format(nil, "/graphql", nil, string.format(grant, id))
  end
  return wrk.format(nil, "/graphql", nil, string.format(withdraw, table.remove(granted, 1)))
end
