-- wrk script for bench/crawl.py: one crawl pass over a path list, every
-- request a different file.
--
--   wrk -t1 -cC -dCAPs -s bench/crawl.lua http://127.0.0.1:PORT -- PATHS_FILE
--
-- PATHS_FILE holds one URL path per line (N lines).  All C connections share
-- one counter (wrk -t1: one Lua state serves every connection of the thread),
-- so request k of the run asks for path k: each file exactly once per pass,
-- whatever the connection count.  Requests are pre-formatted in init(), so
-- request() is a table lookup.
--
-- The pass ends at the N-th response: the thread stops its event loop, and
-- SIGINT wakes wrk's main thread (which otherwise sleeps out the whole -d),
-- so wrk prints its summary at once.  With C connections up to C-1 requests
-- are in flight at that moment; they were issued after path N, wrapped round
-- to the start of the list, and are dropped (not counted).  If the pass does
-- not finish, -d bounds the run.
--
-- done() prints one line the harness parses:
--   crawl: paths=N responses=R ok=O other=X elapsed_s=T complete=0|1
-- ok counts status 200, other every other status; elapsed_s is the wall time
-- from the first request to the last counted response (CLOCK_MONOTONIC, via
-- LuaJIT's ffi), independent of wrk's own -d bookkeeping.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } crawl_timespec;
  int clock_gettime(int clk, crawl_timespec *ts);
  int getpid(void);
  int kill(int pid, int sig);
]]
local ts = ffi.new("crawl_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- per-thread state (globals, so done() can read them with thread:get)
reqs = {}
paths = 0
issued = 0
responses = 0
ok = 0
other = 0
t_first = 0
t_last = 0
complete = 0

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = args[1]
  if not file then
    error("usage: wrk ... -s crawl.lua URL -- PATHS_FILE")
  end
  local n = 0
  for line in io.lines(file) do
    if #line > 0 then
      n = n + 1
      reqs[n] = wrk.format("GET", line)
    end
  end
  paths = n
  if n == 0 then
    error("no paths in " .. file)
  end
end

function request()
  if issued == 0 then
    t_first = now()
  end
  issued = issued + 1
  -- wrk calls request() once before the run to check the script; that call
  -- takes path 1, which is then asked for last (on the wrap-around).
  return reqs[(issued - 1) % paths + 1]
end

function response(status, headers, body)
  if complete == 1 then
    return -- responses after the pass ended (same event-loop batch)
  end
  responses = responses + 1
  if status == 200 then
    ok = ok + 1
  else
    other = other + 1
  end
  if responses >= paths then
    complete = 1
    t_last = now()
    wrk.thread:stop()
    ffi.C.kill(ffi.C.getpid(), 2) -- SIGINT: wrk's main thread stops sleeping
  end
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    local tf, tl = t:get("t_first"), t:get("t_last")
    if tl == 0 then
      tl = now() -- pass not complete: elapsed up to now
    end
    io.write(string.format("crawl: paths=%d responses=%d ok=%d other=%d elapsed_s=%.6f complete=%d\n",
      t:get("paths"), t:get("responses"), t:get("ok"), t:get("other"), tl - tf, t:get("complete")))
  end
end
