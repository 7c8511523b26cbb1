-- crashguard.lua: stop an instance that keeps crashing, and say why.
--
-- Usage, in taskmaster.lua:
--   require("crashguard").setup({ max = 5, window = 60 })
--
-- When an instance is restarted automatically (EXITED -> STARTING) more than `max`
-- times within `window` seconds, the guard stops it with tm.stop and logs
--   crashguard: stopping web:0: restarted 6 times in 60 s (last: exit status 1)
-- Options: max (default 5), window in seconds (default 60),
--          services: a list of service names to guard (default: all).
local tm = require("taskmaster")

local M = {}

function M.setup(opts)
  opts = opts or {}
  local max = opts.max or 5
  local window = opts.window or 60
  local only
  if opts.services then
    only = {}
    for _, s in ipairs(opts.services) do only[s] = true end
  end
  local restarts = {}   -- name -> list of restart times
  local last_exit = {}  -- name -> description of the last exit

  tm.on("EXITED", function(ev)
    if ev.signal then
      last_exit[ev.name] = "killed by " .. ev.signal
    else
      last_exit[ev.name] = "exit status " .. tostring(ev.exitcode)
    end
  end)

  tm.on("transition", function(ev)
    if ev.from ~= "EXITED" or ev.to ~= "STARTING" then return end
    if only and not only[ev.service] then return end
    local list = restarts[ev.name] or {}
    restarts[ev.name] = list
    list[#list + 1] = ev.time
    while #list > 0 and list[1] < ev.time - window do table.remove(list, 1) end
    if #list > max then
      tm.log(string.format("crashguard: stopping %s: restarted %d times in %g s (last: %s)",
        ev.name, #list, window, last_exit[ev.name] or "unknown"))
      restarts[ev.name] = {}
      tm.stop(ev.name)
    end
  end)
end

return M
