-- Runs an Argo CD Lua script the way Argo CD does: the live object in the global `obj`.
-- usage: lua lua-harness.lua <script.lua> [json]   (stdin: a Lua chunk `return { ... }`, the object)
--   health script (no second argument): prints the returned table's status and message, one a line;
--   `json`: prints the returned table as JSON (resource actions: discovery.lua's action list, or
--   action.lua's modified object).
local source = io.read("*a")
local load_object = assert((loadstring or load)(source, "=object"))
obj = load_object()
local script = assert(loadfile(arg[1]))
local result = script()
assert(type(result) == "table", "the script must return a table")

local function encode(v)
  local t = type(v)
  if t == "nil" then
    return "null"
  elseif t == "boolean" then
    return v and "true" or "false"
  elseif t == "number" then
    if v == math.floor(v) then
      return string.format("%d", v)
    end
    return string.format("%.17g", v)
  elseif t == "string" then
    local escaped = v:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
    end)
    return '"' .. escaped .. '"'
  elseif t == "table" then
    local n = #v
    local count = 0
    for _ in pairs(v) do
      count = count + 1
    end
    if n > 0 and n == count then
      local items = {}
      for i = 1, n do
        items[i] = encode(v[i])
      end
      return "[" .. table.concat(items, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do
      assert(type(k) == "string", "only string keys can be encoded")
      table.insert(keys, k)
    end
    table.sort(keys)
    local items = {}
    for _, k in ipairs(keys) do
      table.insert(items, encode(k) .. ":" .. encode(v[k]))
    end
    return "{" .. table.concat(items, ",") .. "}"
  end
  error("cannot encode a " .. t)
end

if arg[2] == "json" then
  io.write(encode(result), "\n")
else
  io.write(tostring(result.status), "\n", tostring(result.message), "\n")
end
