-- Argo CD health check for blockpull.dev/BlockPull.
-- Install it in the argocd-cm ConfigMap under resource.customizations.health.blockpull.dev_BlockPull
-- (see README.md, "GitOps"). Argo CD sets the global `obj` to the live object.
--   Completed                   -> Healthy
--   Failed                      -> Degraded
--   phase Paused or spec.paused -> Suspended
--   anything else               -> Progressing
local hs = {}

local spec = obj.spec or {}
local status = obj.status or {}
local phase = status.phase

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
  local progress = status.progress
  if progress ~= nil and progress.percent ~= nil and phase ~= "Completed" then
    text = text .. " (" .. progress.percent .. ")"
  end
  return text
end

if phase == "Completed" then
  hs.status = "Healthy"
  hs.message = describe("Completed")
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
elseif phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the BlockPull"
else
  hs.status = "Progressing"
  hs.message = describe(phase)
end
return hs
