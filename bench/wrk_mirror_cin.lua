-- wrk script: what DAP gateways' uplinks send a head-end: mirrored contentInstances (POST
-- ...;ty=4) into <cse>/<dap>/<family>, each DAP as its own originator with its bearer token.
--
-- Usage: wrk -t1 -cN -dDs --latency -s bench/wrk_mirror_cin.lua http://host:port \
--            -- <name-prefix> <families> <dap-1>=<token-1> [<dap-2>=<token-2> ...]
--
-- Request n goes to DAP n mod D and family (n / D) mod F, so every container gets its share.
-- The instance name is unique (<prefix><n>), as the gateway's <meter>_<ri> is. done() prints
-- GRIDM2M_RESULT {...} as wrk_create_cin.lua does (bench/http_load.py parses it).

local counter = 0
local prefix = "m"
local families = {"interval", "register", "event", "power-quality"}
local family_count = 1
local daps = {}
local tokens = {}

function init(args)
  prefix = args[1] or "m"
  family_count = math.min(tonumber(args[2] or "1"), #families)
  for i = 3, #args do
    local name, token = string.match(args[i], "([^=]+)=(.+)")
    daps[#daps + 1] = name
    tokens[#tokens + 1] = token
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json;ty=4"
  wrk.headers["Accept"] = "application/json"
  wrk.headers["X-M2M-RVI"] = "3"
end

function request()
  counter = counter + 1
  local d = counter % #daps + 1
  local family = families[math.floor(counter / #daps) % family_count + 1]
  local name = prefix .. counter
  wrk.headers["X-M2M-Origin"] = "/" .. daps[d]
  wrk.headers["Authorization"] = "Bearer " .. tokens[d]
  wrk.headers["X-M2M-RI"] = name
  local reading = string.format(
    '{\\"flow\\":\\"interval-read\\",\\"type\\":\\"interval\\",\\"seq\\":%d,\\"ts\\":1767225600,\\"kwh\\":%d.125}',
    counter, counter)
  local body = '{"m2m:cin":{"rn":"' .. name .. '","lbl":["meter:mtr-' .. (counter % 1000) ..
    '","created:20260101T000000","flow:interval-read"],"cnf":"application/json:0","con":"' ..
    reading .. '"}}'
  return wrk.format(nil, "/cse-in/" .. daps[d] .. "/" .. family, nil, body)
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
