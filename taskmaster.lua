-- taskmaster.lua: the example config `cargo run --release --bin taskmasterd` loads.
-- It only uses commands every Linux box has (sh, sleep, date), so it runs as shipped.
-- Reference: SPEC §3 for every option; README "Hooks" for tm.on(...).

local tm = require("taskmaster")

-- Hooks: log every state change, and shout when something gives up.
tm.on("FATAL", function(ev)
  tm.log("ALERT: " .. ev.name .. " is FATAL")
end)

local workers = tonumber(os.getenv("WORKERS") or "2")

return {
  services = {
    -- A long-running service with several instances, each told its number.
    sleeper = {
      cmd = "sleep 3600",
      numprocs = workers,
      starttime = 1,
      stopsignal = "TERM",
      stoptime = 5,
    },
    -- Writes a heartbeat line every 2 s into logs/ (created on demand),
    -- its own TASKMASTER_INSTANCE in every line.
    ticker = {
      cmd = "while true; do echo \"tick $TASKMASTER_INSTANCE $(date +%T) $GREETING\"; sleep 2; done",
      env = { GREETING = "hello" },
      stdout = "logs/ticker.out",
      stderr = "logs/ticker.err",
      umask = "022",
      autorestart = "always",
    },
    -- A one-shot job: exits 0 after a second; 0 is expected, so it stays EXITED.
    oneshot = {
      cmd = "sh -c 'sleep 1; exit 0'",
      starttime = 0,
      autorestart = "unexpected",
      exitcodes = { 0 },
    },
  },
}
