-- jsonlog.lua: append every state transition and reload result as one JSON line.
--
-- Usage, in taskmaster.lua:
--   require("jsonlog").setup({ path = "events.jsonl" })
--
-- A relative path is relative to the config's folder. Each line is the event as
-- hooks receive it, plus "event" ("transition" or "reload"), e.g.
--   {"event":"transition","from":"STARTING","instance":0,"name":"web:0","pid":4242,
--    "service":"web","time":1764252000.5,"to":"RUNNING"}
-- (fields that are null are left out). The file is opened and closed for each line,
-- so log rotation by renaming works.
local tm = require("taskmaster")
local json = require("json")

local M = {}

function M.setup(opts)
  opts = opts or {}
  local path = opts.path or "events.jsonl"
  if path:sub(1, 1) ~= "/" then path = tm.config_dir .. "/" .. path end
  local function write(ev)
    local f, err = io.open(path, "a")
    if not f then
      tm.log("jsonlog: cannot open " .. path .. ": " .. tostring(err))
      return
    end
    f:write(json.encode(ev), "\n")
    f:close()
  end
  tm.on("transition", write)
  tm.on("reload", write)
end

return M
