-- Argo CD resource action "pause" for blockpull.dev/BlockPull: sets spec.paused; the operator stops
-- the running block job and keeps the data streamed so far (phase Paused).
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.paused = true
return obj
