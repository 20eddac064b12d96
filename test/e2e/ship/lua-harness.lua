-- Runs an Argo CD health script the way Argo CD does: the live object in the global `obj`,
-- the script's returned table read as { status, message }.
-- usage: lua lua-harness.lua <health.lua>  (stdin: a Lua chunk `return { ... }`, the object)
local source = io.read("*a")
local load_object = assert((loadstring or load)(source, "=object"))
obj = load_object()
local check = assert(loadfile(arg[1]))
local hs = check()
assert(type(hs) == "table", "the health script must return a table")
io.write(tostring(hs.status), "\n", tostring(hs.message), "\n")
