-- wrk script: oneM2M RETRIEVE (GET), e.g. of <container>/la, with a unique X-M2M-RI.
--
-- Usage: wrk -t1 -cN -dDs --latency -s bench/wrk_retrieve.lua <resource-url> \
--            -- <originator> [<request-id-prefix>]
--
-- done() prints one machine-readable line (GRIDM2M_RESULT {...}), as wrk_create_cin.lua does.

local counter = 0
local prefix = "r"

function init(args)
  local origin = args[1] or "Cbench"
  prefix = args[2] or "r"
  wrk.method = "GET"
  wrk.headers["Accept"] = "application/json"
  wrk.headers["X-M2M-Origin"] = origin
  wrk.headers["X-M2M-RVI"] = "3"
end

function request()
  counter = counter + 1
  wrk.headers["X-M2M-RI"] = prefix .. counter
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'GRIDM2M_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"non2xx":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, e.status, e.connect, e.read, e.write, e.timeout))
end
