-- Argo CD health check for blockpull.dev/BlockPullPolicy and blockpull.dev/ClusterBlockPullPolicy
-- (one script for both kinds: they share their status). Install it in the argocd-cm ConfigMap
-- under resource.customizations.health.blockpull.dev_BlockPullPolicy and
-- resource.customizations.health.blockpull.dev_ClusterBlockPullPolicy (deploy/argocd/argocd-cm-patch.yaml).
-- It reads the kstatus conditions the operator writes, and agrees with kstatus:
--   being deleted                                  -> Progressing (kstatus: Terminating)
--   not observed yet, or not this generation       -> Progressing, Suspended if spec.paused (InProgress)
--   Stalled True (window invalid or never opens,
--   every unfinished disk failed or in conflict)   -> Degraded    (Failed)
--   Ready True (every selected disk flat, nothing
--   selected, or a dryRun's plan made)             -> Healthy     (Current)
--   spec.paused                                    -> Suspended   (InProgress)
--   anything else (pulling, outside the window)    -> Progressing (InProgress)
local hs = {}
local metadata = obj.metadata or {}
local spec = obj.spec or {}
local status = obj.status or {}

local function condition(type)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c, default)
  if c == nil then
    return default
  end
  local text = c.reason or default
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted (its BlockPulls are deleted with it)"
  return hs
end

local generation = metadata.generation
local observed = status.observedGeneration
local ready = condition("Ready")
local waiting = nil
if ready == nil or observed == nil or observed == 0 then
  waiting = "Waiting for the operator to observe the policy"
elseif generation ~= nil and observed ~= generation then
  waiting = "Waiting for the operator to observe generation " .. string.format("%d", generation) ..
    " (the status is from generation " .. string.format("%d", observed) .. ")"
end
if waiting ~= nil then
  if spec.paused == true then
    hs.status = "Suspended"
  else
    hs.status = "Progressing"
  end
  hs.message = waiting
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
elseif spec.paused == true then
  hs.status = "Suspended"
  hs.message = describe(ready, "Paused")
else
  hs.status = "Progressing"
  hs.message = describe(ready, "Reconciling")
end
return hs
