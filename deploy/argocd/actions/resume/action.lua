-- Argo CD resource action "resume" for blockpull.dev/BlockPull: clears spec.paused; the operator
-- starts the job again, continuing from the data already in the active image.
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.paused = false
return obj
