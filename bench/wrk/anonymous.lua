-- A1: one kind of anonymous request (BENCH_ANON_KIND), no credentials (BENCH_KEY empty);
-- positions and tiles at random within the signed tree of BENCH_TREE_SIZE events.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local kind = os.getenv("BENCH_ANON_KIND")
local size = tonumber(os.getenv("BENCH_TREE_SIZE"))

local function inclusion()
  local query = "/audit/proof/inclusion?size=" .. size
  for _ = 1, 2 do query = query .. "&position=" .. math.random(size) end
  return wrk.format("GET", query)
end

local function tile()
  local index = math.random(0, math.floor(size / 256) - 1)
  local path = string.format("%03d", index % 1000)
  if index >= 1000 then path = string.format("x%03d/", math.floor(index / 1000)) .. path end
  return wrk.format("GET", "/audit/tile/0/" .. path)
end

local requests = {
  ["inclusion-2"] = inclusion,
  consistency = function()
    return wrk.format("GET", "/audit/proof/consistency?from=" .. math.random(size) .. "&to=" .. size)
  end,
  tile = tile,
  checkpoint = function() return wrk.format("GET", "/audit/checkpoint") end,
  keys = function() return wrk.format("GET", "/audit/keys") end,
  purposes = function()
    return wrk.format("POST", "/graphql", {["Content-Type"] = "application/json"},
      '{"query":"{ purposes { key legalBasis categories title { nb en } } }"}')
  end,
}
request = requests[kind]
