-- wrk script for bench/compare.py: GET /ping/<key>/m<i> spread over all
-- monitors m0000..m(N-1), as a fleet does. Env: COMPARE_MONITORS (N),
-- COMPARE_PING_KEY. Each wrk thread starts at a different monitor.
local monitors = tonumber(os.getenv("COMPARE_MONITORS") or "1000")
local key = os.getenv("COMPARE_PING_KEY") or "bench-ping-key"
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
  return wrk.format("GET", string.format("/ping/%s/m%04d", key, counter % monitors))
end
