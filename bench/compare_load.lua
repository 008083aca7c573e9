-- wrk script for bench/compare.py, spreading requests over N targets as a
-- fleet does (each wrk thread starts at a different one). Env:
--   COMPARE_TARGET=ping  GET /ping/<COMPARE_PING_KEY>/m<i>, monitors m0000..m(N-1)
--   COMPARE_TARGET=push  PUT 5 samples to the Pushgateway at /metrics/job/j<i>
--   COMPARE_N            N (default 1000)
local target = os.getenv("COMPARE_TARGET") or "ping"
local n = tonumber(os.getenv("COMPARE_N") or "1000")
local key = os.getenv("COMPARE_PING_KEY") or "bench-ping-key"
local body = "m1 1\nm2 2\nm3 3\nm4 4\nm5 5\n"
local counter = 0
local threads = 0

function setup(thread)  -- runs in wrk's main Lua state, once per thread
  thread:set("offset", threads * 7919)
  threads = threads + 1
end

function init(args)  -- runs in the thread's own Lua state
  counter = offset or 0
end

function request()
  counter = counter + 1
  if target == "push" then
    return wrk.format("PUT", string.format("/metrics/job/j%d", counter % n), nil, body)
  end
  return wrk.format("GET", string.format("/ping/%s/m%04d", key, counter % n))
end
