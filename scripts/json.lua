-- json.lua: a small JSON encoder for hook scripts (tables, strings, numbers, booleans).
-- Usage: local json = require("json"); local text = json.encode({ a = 1, b = { "x" } })
-- A table with keys 1..n is an array; any other table is an object with sorted keys.
local M = {}

local escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function escape(s)
  return (s:gsub('[%c"\\]', function(c)
    return escapes[c] or string.format("\\u%04x", c:byte())
  end))
end

local function is_array(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  for i = 1, n do if t[i] == nil then return false end end
  return n > 0
end

function M.encode(v)
  local kind = type(v)
  if v == nil then return "null"
  elseif kind == "boolean" then return tostring(v)
  elseif kind == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.17g", v)
  elseif kind == "string" then return '"' .. escape(v) .. '"'
  elseif kind == "table" then
    local parts = {}
    if is_array(v) then
      for _, item in ipairs(v) do parts[#parts + 1] = M.encode(item) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local item = v[k]
      if item == nil then item = v[tonumber(k)] end
      parts[#parts + 1] = '"' .. escape(k) .. '":' .. M.encode(item)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return "null"
end

return M
