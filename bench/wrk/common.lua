-- Shared by the benchmark's wrk scripts: member ids, the key, and a JSON summary at the end.
ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do ids[#ids + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))

function random_id() return ids[math.random(#ids)] end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"status_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end

-- BENCH_ECHO=1: print the first answer (the benchmark checks that it holds data, not errors).
if os.getenv("BENCH_ECHO") then
  local printed = false
  response = function(status, headers, body)
    if not printed then printed = true; io.write(body:gsub("\n", " ") .. "\n") end
  end
end
