-- Argo CD resource actions for blockpull.dev/BlockPull: which actions the UI/CLI offers for `obj`.
-- Layout as in Argo CD's resource_customizations: actions/discovery.lua, actions/<name>/action.lua.
-- Install under resource.customizations.actions.blockpull.dev_BlockPull (deploy/argocd/argocd-cm-patch.yaml).
--   pause:  a pull that has not ended (Pending, Running, or not looked at yet) and is not paused
--   resume: a paused pull that has not ended
-- Neither is offered for a Completed, Failed or Planned BlockPull (terminal) or one being deleted.
local actions = {}
local metadata = obj.metadata or {}
local spec = obj.spec or {}
local status = obj.status or {}
local phase = status.phase

local ended = phase == "Completed" or phase == "Failed" or phase == "Planned"
if metadata.deletionTimestamp == nil and not ended then
  if spec.paused == true then
    actions["resume"] = {["iconClass"] = "fa fa-fw fa-play", ["displayName"] = "Resume pull"}
  else
    actions["pause"] = {["iconClass"] = "fa fa-fw fa-pause", ["displayName"] = "Pause pull"}
  end
end
return actions
