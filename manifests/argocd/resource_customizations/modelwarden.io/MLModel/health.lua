-- Argo CD health of a modelwarden.io MLModel, read from the conditions the ModelWarden operator writes for
-- kstatus (Ready, Reconciling, Stalled; exactly one is True, all carry observedGeneration). The phase only
-- tells "waiting for a person" (Suspended) apart from "moving by itself" (Progressing).
-- Uses only Lua's base library, so it also runs when pasted into argocd-cm.
local hs = {}
if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the ModelWarden operator to reconcile the MLModel"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the ModelWarden operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local found = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" or condition.type == "Reconciling" or condition.type == "Stalled" then
      found[condition.type] = condition
    end
  end
end

local function describe(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.reason .. ": " .. condition.message
  end
  return condition.reason
end

local phase = obj.status.phase
if found.Stalled ~= nil and found.Stalled.status == "True" then
  -- Halted after a rollback, an artifact whose sha256 does not match, a schedule that cannot be parsed:
  -- nothing moves until a person acts.
  hs.status = "Degraded"
  hs.message = describe(found.Stalled)
  return hs
end
if found.Reconciling ~= nil and found.Reconciling.status == "True" then
  if phase == "Paused" or phase == "AwaitingApproval" then
    -- Waiting for `modelwarden promote` or for sign-offs, like a paused Argo Rollout.
    hs.status = "Suspended"
  else
    hs.status = "Progressing"
  end
  hs.message = describe(found.Reconciling)
  return hs
end
if found.Ready ~= nil and found.Ready.status == "True" then
  if phase == "Disabled" then
    -- The kill switch: every replica answers the neutral prediction, as the spec asks.
    hs.status = "Suspended"
  else
    hs.status = "Healthy"
  end
  hs.message = describe(found.Ready)
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the ModelWarden operator to report Ready, Reconciling or Stalled"
return hs
