-- wrk script: oneM2M contentInstance CREATE (POST ...;ty=4) with a unique X-M2M-RI.
--
-- Usage: wrk -t1 -cN -dDs --latency -s bench/wrk_create_cin.lua <container-url> \
--            -- <originator> <content-size> [<request-id-prefix>]
--
-- The body is {"m2m:cin":{"cnf":"text/plain:0","con":"xxxx..."}} with <content-size> chars of
-- content.  done() prints one machine-readable line (GRIDM2M_RESULT {...}) next to wrk's own
-- report; bench/http_load.py prefers it and falls back to parsing the text report.

local counter = 0
local prefix = "c"

function init(args)
  local origin = args[1] or "Cbench"
  local size = tonumber(args[2] or "100")
  prefix = args[3] or "c"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json;ty=4"
  wrk.headers["Accept"] = "application/json"
  wrk.headers["X-M2M-Origin"] = origin
  wrk.headers["X-M2M-RVI"] = "3"
  wrk.body = '{"m2m:cin":{"cnf":"text/plain:0","con":"' .. string.rep("x", size) .. '"}}'
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
