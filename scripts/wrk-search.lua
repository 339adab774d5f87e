-- wrk script: POSTs JSON bodies read from $WRK_BODIES (one per line) round-robin, and prints a
-- JSON summary line (requests, QPS, p50/p99 latency in ms, errors by kind) when done.
local bodies = {}
local path = os.getenv("WRK_BODIES")
for line in io.lines(path) do
  if #line > 0 then bodies[#bodies + 1] = line end
end
local next_body = 0
local non_200 = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end

response = function(status, headers, body)
  if status ~= 200 then non_200 = non_200 + 1 end
end

done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.3f, "qps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, ' ..
    '"mean_ms": %.3f, "non_2xx": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"timeouts": %d}\n',
    summary.requests, seconds, summary.requests / seconds, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, latency.mean / 1e3, e.status, e.connect, e.read, e.write, e.timeout))
end
