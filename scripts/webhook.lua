-- webhook.lua: alert a webhook when a process gives up (FATAL) or exits unexpectedly.
--
-- Usage, in taskmaster.lua:
--   require("webhook").setup({ url = "http://127.0.0.1:9000/alert" })
--
-- Options:
--   url      where to POST (required)
--   curl     the curl command to use (default "curl")
--   headers  extra headers, e.g. { ["X-Token"] = "..." }
--
-- Each alert is one POST with a JSON body:
--   {"alert":"FATAL","exitcode":1,"from":"BACKOFF","host":"myhost","instance":0,
--    "name":"web:0","reason":"exited too quickly (exit status 1)","restarts":0,
--    "service":"web","time":1764252000.5,"to":"FATAL"}
-- ("alert" is "FATAL" or "unexpected_exit"; "reason" is the instance's status text;
-- "exitcode" or "signal" is how its last process ended, also for FATAL, which the
-- failed start before it caused; fields that are null are left out). curl runs
-- through tm.exec: it never blocks supervision, and its output lands in the daemon log.
local tm = require("taskmaster")
local json = require("json")

local M = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname")
  if not f then return nil end
  local h = f:read("l")
  f:close()
  return h
end

-- `last` is how the instance's last process ended ({ exitcode, signal }), for
-- events that carry none themselves (BACKOFF -> FATAL).
function M.payload(kind, ev, last)
  local exitcode, signal = ev.exitcode, ev.signal
  if exitcode == nil and signal == nil and last then
    exitcode, signal = last.exitcode, last.signal
  end
  return json.encode({
    alert = kind, name = ev.name, service = ev.service, instance = ev.instance,
    from = ev.from, to = ev.to, pid = ev.pid, exitcode = exitcode, signal = signal,
    expected = ev.expected, time = ev.time, host = hostname(),
    reason = ev.description, restarts = ev.restarts,
  })
end

function M.setup(opts)
  assert(type(opts) == "table" and type(opts.url) == "string", "webhook.setup: opts.url is required")
  local curl = opts.curl or "curl"
  local extra = ""
  for k, v in pairs(opts.headers or {}) do
    extra = extra .. " -H " .. shell_quote(k .. ": " .. v)
  end
  local last_exit = {}  -- name -> { exitcode, signal } since its last start
  tm.on("transition", function(ev)
    if ev.to == "STARTING" then last_exit[ev.name] = nil end
    if ev.exitcode ~= nil or ev.signal ~= nil then
      last_exit[ev.name] = { exitcode = ev.exitcode, signal = ev.signal }
    end
  end)
  local function post(kind, ev)
    local body = M.payload(kind, ev, last_exit[ev.name])
    local cmd = curl .. " -sS -m 10 -X POST -H 'Content-Type: application/json'" .. extra
      .. " --data-binary " .. shell_quote(body) .. " " .. shell_quote(opts.url)
    tm.exec(cmd)
  end
  tm.on("FATAL", function(ev) post("FATAL", ev) end)
  tm.on("EXITED", function(ev)
    if ev.expected == false then post("unexpected_exit", ev) end
  end)
end

return M
