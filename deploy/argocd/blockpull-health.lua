-- Argo CD health check for blockpull.dev/BlockPull.
-- Install it in the argocd-cm ConfigMap under resource.customizations.health.blockpull.dev_BlockPull
-- (see docs/gitops.md, "Argo CD"; deploy/argocd/argocd-cm-patch.yaml holds it ready to apply). Argo CD sets
-- the global `obj` to the live object. It agrees with kstatus (Flux, kubectl apply-sets, kpt):
--   being deleted                              -> Progressing  (kstatus: Terminating)
--   spec changed, not yet observed by the operator,
--   or not looked at yet                       -> Progressing, Suspended if spec.paused (InProgress)
--   Completed                                  -> Healthy      (Current)
--   Planned (spec.dryRun: the plan is written) -> Healthy      (Current)
--   Failed                                     -> Degraded     (Failed)
--   phase Paused or spec.paused                -> Suspended    (InProgress)
--   anything else                              -> Progressing  (InProgress)
local FINALIZER = "blockpull.dev/abort-on-delete"
local hs = {}

local metadata = obj.metadata or {}
local spec = obj.spec or {}
local status = obj.status or {}
local phase = status.phase

local function progressText()
  local progress = status.progress
  if progress ~= nil and progress.percent ~= nil and phase ~= "Completed" then
    return " (" .. progress.percent .. ")"
  end
  return ""
end

local function describe(default)
  local parts = {}
  if status.reason ~= nil and status.reason ~= "" then
    table.insert(parts, status.reason)
  end
  if status.message ~= nil and status.message ~= "" then
    table.insert(parts, status.message)
  end
  local text = table.concat(parts, ": ")
  if text == "" then
    text = default
  end
  return text .. progressText()
end

-- Being deleted: the finalizer keeps the object until the operator has aborted its running job.
if metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  local finalizers = metadata.finalizers or {}
  local aborting = false
  for _, f in ipairs(finalizers) do
    if f == FINALIZER then
      aborting = true
    end
  end
  if aborting and phase == "Running" then
    hs.message = "Being deleted: the operator aborts the running block pull first (finalizer " .. FINALIZER ..
      "); the data streamed so far stays in the active image" .. progressText()
  elseif #finalizers > 0 then
    hs.message = "Being deleted; waiting for finalizers: " .. table.concat(finalizers, ", ")
  else
    hs.message = "Being deleted"
  end
  return hs
end

-- The operator has not looked yet, or not at this generation of the spec.
local generation = metadata.generation
local observed = status.observedGeneration
local waiting = nil
if phase == nil or observed == 0 then
  waiting = "Waiting for the operator to observe the BlockPull"
elseif generation ~= nil and observed ~= nil and observed ~= generation then
  waiting = "Waiting for the operator to observe generation " .. string.format("%d", generation) ..
    " (the status is from generation " .. string.format("%d", observed) .. ")"
end
if waiting ~= nil then
  if spec.paused == true then
    hs.status = "Suspended"
    hs.message = "Paused by spec.paused; " .. string.lower(string.sub(waiting, 1, 1)) .. string.sub(waiting, 2)
  else
    hs.status = "Progressing"
    hs.message = waiting
  end
  return hs
end

if phase == "Completed" then
  hs.status = "Healthy"
  hs.message = describe("Completed")
elseif phase == "Planned" then
  hs.status = "Healthy"
  hs.message = describe("Planned")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe("Failed")
elseif phase == "Paused" or spec.paused == true then
  hs.status = "Suspended"
  if phase == "Paused" then
    hs.message = describe("Paused")
  else
    hs.message = "Paused by spec.paused; " .. describe("waiting for the operator to stop the pull")
  end
else
  hs.status = "Progressing"
  hs.message = describe(phase)
end
return hs
