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
--   {"alert":"FATAL","name":"web:0","service":"web","instance":0,"from":"BACKOFF",
--    "to":"FATAL","pid":null,"exitcode":1,"signal":null,"expected":null,"time":1764252000.5,
--    "host":"myhost"}
-- ("alert" is "FATAL" or "unexpected_exit"). curl runs through tm.exec: it never
-- blocks supervision, and its output lands in the daemon log.
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

function M.payload(kind, ev)
  return json.encode({
    alert = kind, name = ev.name, service = ev.service, instance = ev.instance,
    from = ev.from, to = ev.to, pid = ev.pid, exitcode = ev.exitcode, signal = ev.signal,
    expected = ev.expected, time = ev.time, host = hostname(),
  })
end

function M.setup(opts)
  assert(type(opts) == "table" and type(opts.url) == "string", "webhook.setup: opts.url is required")
  local curl = opts.curl or "curl"
  local extra = ""
  for k, v in pairs(opts.headers or {}) do
    extra = extra .. " -H " .. shell_quote(k .. ": " .. v)
  end
  local function post(kind, ev)
    local cmd = curl .. " -sS -m 10 -X POST -H 'Content-Type: application/json'" .. extra
      .. " --data-binary " .. shell_quote(M.payload(kind, ev)) .. " " .. shell_quote(opts.url)
    tm.exec(cmd)
  end
  tm.on("FATAL", function(ev) post("FATAL", ev) end)
  tm.on("EXITED", function(ev)
    if ev.expected == false then post("unexpected_exit", ev) end
  end)
end

return M
