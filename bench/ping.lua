-- wrk script: spread pings over all monitors m0000..m(N-1), as a fleet does.
local monitors = tonumber(os.getenv("BENCH_MONITORS") or "1000")
local key = os.getenv("BENCH_PING_KEY") or "bench-ping-key"
local counter = 0
request = function()
  counter = counter + 1
  local path = string.format("/ping/%s/m%04d", key, counter % monitors)
  return wrk.format("GET", path)
end
